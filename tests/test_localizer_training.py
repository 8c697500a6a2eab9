"""The localiser's training at a fixed cost: the per-epoch sample budget, the held-out split and early stopping,
the slice cache (hit, miss on changed inputs, a killed write) and training from a cold and a warm cache."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from dicom_factory import SAGITTAL, write_synthetic_series

from radiospine.config import LocalizerConfig
from radiospine.io.headers import read_series_headers
from radiospine.roi.localizer import data as localizer_data
from radiospine.roi.localizer import training
from radiospine.roi.localizer.data import SliceCache, TrainingStack, load_normalised
from radiospine.roi.localizer.grids import SAGITTAL_CHANNELS, resample_to_grid, sagittal_grid

#: A localiser small enough to train in a second.
TINY = LocalizerConfig(base_channels=4, depth=2, sagittal_grid_px=32, sagittal_grid_mm=4.0, axial_grid_px=32,
                       axial_grid_mm=4.0, batch_size=4, sagittal_samples_per_epoch=8, axial_samples_per_epoch=8,
                       validation_samples=6, device="cpu")


def sagittal_stacks(folder: Path, studies: int, per_study: int = 2, slices: int = 5, seed: int = 0
                    ) -> list[TrainingStack]:
    """Sagittal training stacks of random images in ``folder`` (cache-file layout), a canal point per level on
    the middle slice of a grid of 4 mm pixels, 3 mm apart."""
    rng = np.random.default_rng(seed)
    grid = np.diag([4.0, 4.0, 3.0, 1.0])
    stacks = []
    for study in range(studies):
        for index in range(per_study):
            path = folder / f"{study}_{index}.npy"
            np.save(path, rng.random((slices, 32, 32)).astype(np.float16))
            points = np.full((len(SAGITTAL_CHANNELS), 2, 3), np.nan)
            for level in range(5):
                points[level, 0] = [rng.uniform(30, 90), rng.uniform(20, 100), 3.0 * (slices // 2)]
            weights = np.full(slices, 0.25)
            weights[slices // 2] = 1.25
            stacks.append(TrainingStack(100 + study, "sagittal", path, grid, points, weights))
    return stacks


def test_each_epoch_draws_the_budget_whatever_the_number_of_stacks(tmp_path: Path) -> None:
    stacks = sagittal_stacks(tmp_path, studies=5)  # 10 stacks
    stacks[3] = TrainingStack(stacks[3].study_id, "sagittal", stacks[3].path, stacks[3].grid, stacks[3].points_lps,
                              np.array([0.0, 0.0, 1.0, 0.0, 0.0]))  # only its middle slice may be a centre
    for budget in (7, 10, 25):
        draws = training.draw_samples(stacks, budget, np.random.default_rng(3))
        assert len(draws) == budget
        per_stack = np.bincount([i for i, _ in draws], minlength=len(stacks))
        assert per_stack.max() - per_stack.min() <= 1  # every stack as often as the others, to within one
        assert all(k == 2 for i, k in draws if i == 3)
        assert draws == training.draw_samples(stacks, budget, np.random.default_rng(3))  # seeded
    assert training.draw_samples(stacks, 25, np.random.default_rng(3)) != training.draw_samples(
        stacks, 25, np.random.default_rng(4))


def test_held_out_studies_are_a_seeded_grouped_share() -> None:
    ids = [7, 7, 7, 3, 3, 9, 11, 12, 13, 14, 15, 16, 17, 18, 19]  # one entry per stack; 12 studies
    held = training.held_out_studies(ids, 0.25, seed=0)
    assert len(held) == 3 and held <= set(ids)
    assert held == training.held_out_studies(list(reversed(ids)), 0.25, seed=0)
    assert training.held_out_studies(ids, 0.01, seed=0).__len__() == 1  # at least one
    assert len(training.held_out_studies([1, 2], 0.9, seed=0)) == 1  # never all
    assert training.held_out_studies([1, 1, 1], 0.5, seed=0) == set()  # one study: nothing to hold out
    assert training.held_out_studies(ids, 0.0, seed=0) == set()


def test_early_stopping_keeps_the_best_epoch(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Scripted held-out losses 5, 3, 4, 4, 4, 1 with patience 3: training stops after epoch 5 and the network
    holds its weights of epoch 2; the log names epoch 2 and its held-out loss."""
    stacks = sagittal_stacks(tmp_path, studies=4)
    scripted = iter([5.0, 3.0, 4.0, 4.0, 4.0, 1.0])
    states = []

    def scores(net, *args, **kwargs):
        states.append({name: value.clone() for name, value in net.state_dict().items()})
        return next(scripted), 1.5

    monkeypatch.setattr(training, "held_out_scores", scores)
    config = TINY.model_copy(update={"epochs": 6, "patience": 3})
    net, report = training.fit_network(stacks[:6], stacks[6:], "sagittal", config, torch.device("cpu"), 8)
    assert len(report["losses"]) == 5 and report["held_out_losses"] == [5.0, 3.0, 4.0, 4.0, 4.0]
    assert report["epoch"] == 2 and report["held_out_loss"] == 3.0 and report["held_out_error_mm_median"] == 1.5
    assert report["stacks"] == 6 and report["held_out_stacks"] == 2
    final = net.state_dict()
    assert all(torch.equal(final[name], states[1][name]) for name in final)
    assert not all(torch.equal(final[name], states[4][name]) for name in final)


def test_without_held_out_studies_every_epoch_runs(tmp_path: Path) -> None:
    stacks = sagittal_stacks(tmp_path, studies=1)
    config = TINY.model_copy(update={"epochs": 2})
    _, report = training.fit_network(stacks, [], "sagittal", config, torch.device("cpu"), 8)
    assert report["epoch"] == 2 and len(report["losses"]) == 2 and report["held_out_loss"] is None


def test_held_out_scores_measure_the_peak_distance(tmp_path: Path) -> None:
    """A network that outputs the target itself scores zero error; one shifted by 3 px scores 3 px in mm."""
    stacks = sagittal_stacks(tmp_path, studies=1, per_study=1)
    draws = [(0, 2)]
    _, target = training.batch_tensors(stacks, draws, TINY, 32, torch.device("cpu"))
    logits = torch.logit(target.clamp(1e-4, 1 - 1e-4))

    class Fixed(torch.nn.Module):
        def __init__(self, output: torch.Tensor) -> None:
            super().__init__()
            self.output = output

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.output

    loss, error = training.held_out_scores(Fixed(logits), stacks, draws, TINY, 32, 4.0, torch.device("cpu"))
    assert error == 0.0 and loss == pytest.approx(float(training.heatmap_loss(logits, target)))
    _, error = training.held_out_scores(Fixed(logits.roll(3, dims=3)), stacks, draws, TINY, 32, 4.0,
                                        torch.device("cpu"))
    assert error == pytest.approx(12.0)


@pytest.fixture
def series(tmp_path: Path):
    write_synthetic_series(tmp_path / "images", n_slices=6, rows=40, cols=48, orientation=SAGITTAL,
                           pixel_spacing=(1.0, 1.0), description="Sagittal T2/STIR")
    (stack,) = read_series_headers(tmp_path / "images" / "101" / "202", study_id=101, series_id=202)
    return stack


def test_the_cache_holds_the_resampled_slices_and_serves_them_again(series, tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    cache = SliceCache(tmp_path / "cache")
    grid = sagittal_grid(series, TINY)
    path = cache.resampled(series, 0, 6, grid, 32, 4.0)
    expected = resample_to_grid(load_normalised(series, 0, 6), series.affine, grid, 32, 4.0).astype(np.float16)
    assert np.array_equal(np.load(path), expected) and (cache.hits, cache.misses) == (0, 1)

    def no_decoding(*args, **kwargs):
        raise AssertionError("a cache hit must not decode")

    monkeypatch.setattr(localizer_data, "load_normalised", no_decoding)
    again = SliceCache(tmp_path / "cache")
    assert again.resampled(series, 0, 6, grid, 32, 4.0) == path and (again.hits, again.misses) == (1, 0)
    monkeypatch.undo()

    # another grid size, slice range or grid is another entry; so is a changed file
    assert cache.resampled(series, 0, 6, sagittal_grid(series, TINY), 16, 8.0) != path
    assert cache.resampled(series, 1, 6, grid, 32, 4.0) != path
    assert cache.resampled(series, 0, 6, grid + np.eye(4) * 0.1, 32, 4.0) != path
    first_file = Path(series.slices[0].path)
    status = first_file.stat()
    os.utime(first_file, ns=(status.st_atime_ns, status.st_mtime_ns + 1_000_000_000))
    assert cache.resampled(series, 0, 6, grid, 32, 4.0) != path
    assert cache.misses == 5 and len(list((tmp_path / "cache").glob("*.npy"))) == 5


def test_a_killed_or_damaged_write_is_made_again(series, tmp_path: Path) -> None:
    """A write killed before its rename leaves only a hidden temporary file, which is no entry; a damaged entry
    (cut short, or the wrong shape) is decoded and written again."""
    cache = SliceCache(tmp_path / "cache")
    grid = sagittal_grid(series, TINY)
    path = cache.resampled(series, 0, 6, grid, 32, 4.0)
    good = path.read_bytes()
    path.unlink()
    (tmp_path / "cache" / f".{path.name}.x1y2.tmp").write_bytes(good[:1000])  # what a killed write leaves
    assert cache.resampled(series, 0, 6, grid, 32, 4.0) == path and path.read_bytes() == good
    path.write_bytes(good[:1000])
    assert cache.resampled(series, 0, 6, grid, 32, 4.0) == path and path.read_bytes() == good
    np.save(path, np.zeros((2, 32, 32), np.float16))
    assert cache.resampled(series, 0, 6, grid, 32, 4.0) == path and path.read_bytes() == good
    assert cache.misses == 4 and cache.hits == 0


@pytest.mark.slow
def test_training_from_a_cold_and_a_warm_cache_gives_the_same_weights(tmp_path: Path) -> None:
    """The first run decodes every training slice into the cache (two worker processes), a forced second run
    reads them all from it (one process): bit-identical weights, and the held-out record in localizer.json."""
    from radiospine.cli import main
    from radiospine.config import SynthConfig
    from radiospine.synth.generate import generate_dataset

    data = tmp_path / "data"
    generate_dataset(data, SynthConfig(train_studies=3, test_studies=0, seed=2, small=True))
    work = tmp_path / "work"
    settings = [token for option in ("localizer.epochs=2", "localizer.base_channels=4", "localizer.depth=2",
                                     "localizer.sagittal_grid_px=32", "localizer.sagittal_grid_mm=10",
                                     "localizer.axial_grid_px=32", "localizer.axial_grid_mm=4",
                                     "localizer.batch_size=4", "localizer.sagittal_samples_per_epoch=8",
                                     "localizer.axial_samples_per_epoch=8", "localizer.validation_samples=8",
                                     "localizer.validation_fraction=0.34",
                                     "localizer.device=cpu") for token in ("--set", option)]
    records, weights = [], []
    for jobs in ("2", "1"):
        assert main(["train-localizer", "--data", str(data), "--work", str(work), "--force", "--jobs", jobs,
                     *settings]) == 0
        records.append(json.loads((work / "localizer" / "localizer.json").read_text())["training"])
        weights.append({kind: torch.load(work / "localizer" / f"{kind}.pt", weights_only=True)
                        for kind in ("sagittal", "axial")})
    cold, warm = records
    assert cold["slice_cache"]["hits"] == 0 and cold["slice_cache"]["misses"] > 0
    assert warm["slice_cache"] == {"hits": cold["slice_cache"]["misses"], "misses": 0}
    assert cold["held_out_studies"] == 1
    for kind in ("sagittal", "axial"):
        assert cold[kind]["epoch"] in (1, 2) and np.isfinite(cold[kind]["held_out_loss"])
        assert len(cold[kind]["held_out_losses"]) == len(cold[kind]["losses"])
        assert weights[0][kind].keys() == weights[1][kind].keys()
        assert all(torch.equal(weights[0][kind][name], weights[1][kind][name]) for name in weights[0][kind])
