"""benchmarks.bench_real on a tiny input: the committed SPIDER fixture (2 patients), 2 folds, 2 synthetic studies and a
localiser trained for one epoch, so the script cannot rot (its figures are not the question here)."""

import json
from pathlib import Path

import pytest

from benchmarks import bench_real

FIXTURE = Path(__file__).parent / "data" / "spider"
TINY = ["localizer.epochs=1", "localizer.base_channels=4", "localizer.depth=2", "localizer.sagittal_grid_px=32",
        "localizer.sagittal_grid_mm=10", "localizer.sagittal_samples_per_epoch=8", "localizer.batch_size=4",
        "localizer.validation_samples=8", "localizer.device=cpu", "synth.small=true"]


def test_patient_folds_hold_out_every_patient_once():
    folds = bench_real.patient_folds([5, 3, 9, 1, 7], 2, seed=0)
    assert sorted(s for fold in folds for s in fold) == [1, 3, 5, 7, 9] and len(folds) == 2
    assert folds == bench_real.patient_folds([1, 3, 5, 7, 9], 2, seed=0)


def test_aims_compare_each_figure_with_its_limit():
    met = bench_real.aims_met({"error_mm_median": 1.5, "error_mm_p95": 7.0, "wrong_level_share": None},
                              bench_real.AIMS["spider_folds"])
    assert met == {"error_mm_median": True, "error_mm_p95": False, "wrong_level_share": None}


@pytest.mark.slow
def test_bench_real_runs_on_two_patients(tmp_path):
    real = tmp_path / "real"
    (real / "volumes").mkdir(parents=True)
    for path in FIXTURE.glob("*.mha"):
        (real / "volumes" / path.name).symlink_to(path)
    (real / "radiological_gradings.csv").symlink_to(FIXTURE / "radiological_gradings.csv")
    out = tmp_path / "reports"
    options = [token for option in TINY for token in ("--set", option)]
    assert bench_real.main(["--real", str(real), "--work", str(tmp_path / "work"), "--out", str(out), "--folds", "2",
                            "--synth-studies", "2", "--jobs", "2", *options]) == 0
    result = json.loads((out / "bench_real.json").read_text())
    assert result["patients"] == 2 and result["folds"] == 2
    assert sorted(s for fold in result["held_out"] for s in fold) == [7, 107]
    for key in ("spider_folds", "synthetic"):
        figures = result["tables"][key]
        assert figures["points"] == 10 and set(figures) == set(bench_real.FIGURES)
        assert set(result["aims"][key]) == set(bench_real.AIMS[key])
    assert result["synthetic_studies"] == 2 and result["times"]["import"] > 0
    assert set(result["task_timings"]) == {"fold 1", "fold 2", "synthetic"}
    markdown = (out / "bench_real.md").read_text()
    assert "SPIDER folds" in markdown and "synthetic studies only (2)" in markdown
    assert (out / bench_real.PICTURE).stat().st_size > 10_000
