"""benchmarks.bench: stage running and recording, the extrapolation, bench.json and bench.md from stage figures."""

import argparse
import json
import sys
from pathlib import Path

import pytest

from benchmarks import bench

REPO = Path(__file__).resolve().parents[1]


def test_extrapolation_is_linear_in_studies_and_divides_parallel_work_among_cores():
    # 10 s on 100 studies with 2 workers -> 197.5 s for 1,975 studies on 2 cores
    assert bench.extrapolate(10, 100, "parallel", 2, jobs=2, cnn_models=6) == pytest.approx(197.5)
    assert bench.extrapolate(10, 100, "parallel", 16, jobs=2, cnn_models=6) == pytest.approx(197.5 / 8)
    assert bench.extrapolate(10, 100, "serial", 16, jobs=2, cnn_models=6) == pytest.approx(197.5)
    assert bench.extrapolate(10, 100, "fixed", 2, jobs=2, cnn_models=6) == 10
    # 6 CNN models: 2 workers -> 3 rounds; 16 cores -> 1 round
    assert bench.extrapolate(10, 100, "cnn", 16, jobs=2, cnn_models=6) == pytest.approx(197.5 / 3)
    with pytest.raises(ValueError, match="unknown scaling"):
        bench.extrapolate(10, 100, "magic", 2, jobs=2, cnn_models=6)


def test_run_stage_keeps_the_last_json_line_and_names_a_failing_command(tmp_path):
    figures = bench.run_stage("ok", [sys.executable, "-c", "print('working'); print('{\"score\": 0.5}')"], tmp_path)
    assert figures["output"] == {"score": 0.5} and figures["seconds"] >= 0 and figures["peak_rss_mb"] > 0
    assert (tmp_path / "ok.out").read_text().startswith("working")
    with pytest.raises(SystemExit, match=r"bench stage bad failed \(exit 3\).*went wrong"):
        bench.run_stage("bad", [sys.executable, "-c", "import sys; print('went wrong', file=sys.stderr); "
                                                      "sys.exit(3)"], tmp_path)


def test_run_stage_records_the_peak_of_the_main_process_and_of_its_largest_worker(tmp_path):
    # the main process holds ~20 MB; its one worker allocates ~200 MB and holds it for a second
    worker = "import time; block = bytearray(200 * 2**20); time.sleep(1.0)"
    main = (f"import subprocess, sys, time; keep = bytearray(20 * 2**20); "
            f"subprocess.check_call([sys.executable, '-c', {worker!r}])")
    figures = bench.run_stage("tree", [sys.executable, "-c", main], tmp_path)
    assert figures["worker_processes"] == 1
    assert 200 <= figures["largest_worker_peak_rss_mb"] < 400
    assert 20 <= figures["main_peak_rss_mb"] < 150
    assert figures["peak_rss_mb"] >= figures["largest_worker_peak_rss_mb"] + figures["main_peak_rss_mb"] - 1
    alone = bench.run_stage("alone", [sys.executable, "-c", "pass"], tmp_path)
    assert alone["worker_processes"] == 0 and alone["largest_worker_peak_rss_mb"] is None


def test_recorded_stages_are_not_run_again_unless_the_key_changes(tmp_path):
    path = tmp_path / "bench_stages.json"
    counter = tmp_path / "runs.txt"
    command = [sys.executable, "-c", f"open({str(counter)!r}, 'a').write('x')"]
    bench.StageRecord(path, "key-1").run("stage", command, tmp_path)
    bench.StageRecord(path, "key-1").run("stage", command, tmp_path)
    assert counter.read_text() == "x"
    bench.StageRecord(path, "key-2").run("stage", command, tmp_path)
    assert counter.read_text() == "xx"
    assert json.loads(path.read_text())["key"] == "key-2"


def _stage(seconds, output=None):
    return {"seconds": seconds, "cpu_seconds": seconds, "peak_rss_mb": 500.0, "output": output,
            "finished": "2026-01-01T00:00:00", "load_average_at_end": [1.0, 1.0, 1.0]}


def test_summary_and_markdown_carry_the_measured_figures(tmp_path):
    parts = {"spinal": 0.5, "foraminal": 0.6, "subarticular": 0.7, "any_severe_spinal": 0.4}
    row = {"points": 10, "found_share": 1.0, "error_mm_median": 1.5, "error_mm_p95": 4.0,
           "in_plane_error_mm_median": 1.2, "in_plane_error_mm_p95": 3.0, "same_instance_share": 0.9,
           "wrong_level_share": 0.0}
    naive = {"studies": 8, "rois": 200, "features_per_roi": 1491, "speed_ratio": 2.0, "cpu_ratio": 1.1,
             "largest_relative_feature_difference": 0.0,
             "radiospine": {"seconds_per_study": 4.0, "rois_per_second": 6.0, "peak_rss_mb": 900.0},
             "naive": {"seconds_per_study": 8.0}}
    stages = {
        "train-localizer": _stage(200.0, {"preparation_seconds": 40.0}),
        "localize": _stage(50.0, {"evaluation": {"all": row, "spinal_canal_stenosis": row}}),
        "features": {**_stage(1000.0, {"fit_seconds": {"cnn": 400.0}}), "main_peak_rss_mb": 400.0,
                     "largest_worker_peak_rss_mb": 2100.0, "worker_processes": 2},
        "train-gbm": _stage(100.0, {"oof": {"score": 0.55, **parts}, "extractor_ablation": {
            "extractors": ["cnn", "radiomics"], "all": "cnn+radiomics",
            "runs": {"cnn": {"score": 0.7, **parts, "n_feature_columns": 9},
                     "radiomics": {"score": 0.58, **parts, "n_feature_columns": 4000},
                     "cnn+radiomics": {"score": 0.55, **parts, "n_feature_columns": 4009}},
            "gain": {"cnn": 0.03, "radiomics": 0.15}, "helped": {"cnn": True, "radiomics": True}}}),
        "predict": _stage(300.0, {"seconds": {"load": 1.0, "localize": 50.0, "features": 240.0, "predict": 2.0}}),
        "score": _stage(1.0, {"score": 0.6, **parts}),
        "report": _stage(20.0),
        "features-vs-naive": _stage(100.0, naive),
        "memory-scale": _stage(900.0, {"columns": 4574, "estimators": 20, "limit_mb": 2000, "sizes": {"1975": {
            "write_seconds": 0.0,
            "train": {"seconds": 800.0, "cpu_seconds": 790.0, "peak_rss_mb": 1234.5, "under_limit": True},
            "predict": {"seconds": 90.0, "cpu_seconds": 85.0, "peak_rss_mb": 2100.0, "under_limit": False}}}}),
    }
    manifest = {"studies": {"train": 200, "test": 100}, "seed": 1, "parameters": {"small": False},
                "bytes": 9.5e9, "scores_on_test": {"oracle": {"score": 0.3}, "weighted_prior_train": {"score": 0.8}}}
    args = argparse.Namespace(config=REPO / "configs" / "default.yaml", jobs=2)
    result = bench.summarise(stages, manifest, args)

    assert result["scores"]["test_over_oracle"] == pytest.approx(2.0)
    assert result["features"]["speed_ratio_vs_naive"] == 2.0
    timing = {row["stage"]: row for row in result["timing"]}
    assert timing["features (train): describe"]["seconds"] == 600.0
    # describe: 600 s on 200 studies, split between 2 workers -> 1,975 studies on 16 cores: 600 * 9.875 / 8 s
    assert timing["features (train): describe"]["real_train_16_cores_hours"] == pytest.approx(
        600 * 9.875 / 8 / 3600, abs=0.01)
    # the localiser's slices are decoded per study by the worker processes; its training costs the same at any size
    assert timing["train-localizer: slices"]["real_train_16_cores_hours"] == pytest.approx(
        40 * 9.875 / 8 / 3600, abs=0.01)
    assert timing["train-localizer: training"]["real_train_16_cores_hours"] == pytest.approx(160 / 3600, abs=0.01)
    assert result["real_train_set_hours"]["2_cores"] == pytest.approx(
        sum(timing[name]["real_train_2_cores_hours"] for name in
            ("train-localizer: slices", "train-localizer: training", "features (train): CNN fit",
             "features (train): describe", "train-gbm")))
    memory = result["memory"]
    assert memory["features"] == {"main_peak_rss_mb": 400.0, "largest_worker_peak_rss_mb": 2100.0,
                                  "worker_processes": 2, "tree_peak_rss_mb": 500.0, "main_under_limit": True,
                                  "workers_under_limit": False}
    # a stage recorded before the per-process figures existed
    assert memory["report"]["main_peak_rss_mb"] is None and memory["report"]["main_under_limit"] is None
    markdown = bench.render_markdown(result)
    assert "| features | 400 | 2,100 (2) | 500 | yes | **no** |" in markdown
    assert "| report |  |  | 500 |  |  |" in markdown
    assert "| radiospine | 0.6000 | 0.5000 | 0.6000 | 0.7000 | 0.4000 |" in markdown
    assert "Test score / oracle score: 2.000." in markdown
    assert "| radiomics alone | 4000 | 0.5800 | 0.5000 | 0.6000 | 0.7000 | 0.4000 |" in markdown
    assert "| cnn + radiomics (all) | 4009 | 0.5500 |" in markdown
    assert "- cnn helped: without it the out-of-fold score is +0.0300 higher." in markdown
    assert "| features (train): describe | 200 | 600.0 |" in markdown
    assert result["memory_scale"]["sizes"]["1975"]["train"]["peak_rss_mb"] == 1234.5
    assert "| 1,975 | 800.0 | 1,234 | yes | 90.0 | 2,100 | **no** |" in markdown
    json.dumps(result)  # bench.json must be plain JSON


def test_memory_scale_writes_a_store_with_the_feature_stage_columns_and_trains_and_predicts_on_it(tmp_path):
    # a regression test: the stage imported a CNN helper that no longer existed and failed only at the end of a bench
    from benchmarks import memory_scale
    from radiospine.config import load_config
    from radiospine.features.columns import CNN_PROBABILITY_FEATURES

    config = REPO / "configs" / "demo.yaml"
    columns, _ = memory_scale.real_columns(config)
    views = load_config(config).features.views
    assert {f"cnn__{view}__{name}" for view in views for name in CNN_PROBABILITY_FEATURES} <= set(columns)
    out = tmp_path / "memory.json"
    assert memory_scale.main(["--studies", "6", "--work", str(tmp_path / "memory"), "--config", str(config),
                              "--estimators", "2", "--jobs", "1", "--out", str(out)]) == 0
    size = json.loads(out.read_text())["sizes"]["6"]
    assert 0 < size["train"]["output"]["oof"] < 5
    assert size["predict"]["output"]["rows"] == 6 * 25
    assert 0 < size["train"]["peak_rss_mb"] < memory_scale.MEMORY_LIMIT_MB
