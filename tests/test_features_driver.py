"""The feature run: complete unique keys, recorded failures, resume after SIGKILL, same table in every mode."""

from __future__ import annotations

import dataclasses
import functools
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import features_synthetic as synth
import numpy as np
import pandas as pd
import pytest

from radiospine import vocab
from radiospine.config import CnnConfig, FeaturesConfig, RadiomicsConfig
from radiospine.features.base import STATUS_NO_CROP, STATUS_OK
from radiospine.features.cnn import CnnTrainer
from radiospine.features.columns import parse_column, status_column
from radiospine.features.driver import StudyCrops, compute_features
from radiospine.features.radiomics import RadiomicsExtractor
from radiospine.features.store import FeatureStore
from radiospine.roi.cut import RoiFailure
from radiospine.workspace import Workspace

TESTS_DIR = Path(__file__).resolve().parent
TINY_CNN = CnnConfig(epochs=1, folds=2, input_size=16, widths=(8, 16), embedding_size=4, batch_size=32, device="cpu")
LEVELS = ("l5_s1",)


def setup(tmp_path: Path, study_ids, cnn: bool = True):
    params = synth.write_light_params(tmp_path, synth.RUN_PARAMS)
    config = FeaturesConfig(radiomics=RadiomicsConfig(params=str(params)), cnn=TINY_CNN)
    extractors = [RadiomicsExtractor(params)]
    if cnn:
        extractors.append(CnnTrainer(TINY_CNN, synth.labels_of(study_ids, LEVELS)))
    return config, extractors


def run(tmp_path: Path, name: str, study_ids, crops, **options) -> pd.DataFrame:
    config, extractors = setup(tmp_path, study_ids)
    store = FeatureStore(Workspace(tmp_path / name).features_dir("train"))
    compute_features(study_ids, crops, extractors, store, config=config, catalog_hash="cat", progress=False,
                     **options)
    return store.read()


def test_keys_are_unique_and_complete_and_failures_are_recorded(tmp_path: Path) -> None:
    study_ids = [11, 12, 13, 14, 15]
    calls: list[int] = []

    def crops_for_study(study_id: int):
        calls.append(study_id)
        crops = synth.crops_for_study(study_id, failing=(13,), levels=LEVELS)
        if study_id == 12:  # the canal's axial crop is blank; its sagittal crop is fine
            crops = [dataclasses.replace(c, image=np.full_like(c.image, 0.3))
                     if c.roi.condition == vocab.SPINAL and c.roi.view == "axial_t2" else c for c in crops]
        if study_id == 14:  # the cutter could not cut the canal on the axial slices, and had no L1/L2 point
            canal_axial = [c for c in crops if c.roi.condition == vocab.SPINAL and c.roi.view == "axial_t2"]
            failures = [RoiFailure(14, vocab.SPINAL, "l5_s1", "axial_t2", "no axial slice within 6 mm"),
                        RoiFailure(14, vocab.SPINAL, "l1_l2", "sagittal_t2", "no coordinate")]
            return StudyCrops([c for c in crops if c not in canal_axial], failures)
        return crops

    config, extractors = setup(tmp_path, study_ids)
    store = FeatureStore(tmp_path / "features" / "train")
    summary = compute_features(study_ids, crops_for_study, extractors, store, config=config, progress=False)
    assert summary.written == 5 and summary.skipped == 0 and list(summary.failed) == [13]
    assert summary.rois == 6 + 6 + 5 + 6  # study 13 has none, study 14 lost its axial canal crop
    assert set(summary.seconds_per_roi) == {"radiomics", "cnn"} and summary.seconds_per_roi["radiomics"] > 0
    assert list(summary.fit_seconds) == ["cnn"] and 0 < summary.fit_seconds["cnn"] < summary.seconds
    table = store.read()
    # The finished run compacted the table; the compacted file reads as the shards do.
    compact = store.root / "_compact.arrow"
    assert compact.is_file()
    os.replace(compact, store.root / "_aside")
    pd.testing.assert_frame_equal(table, store.read(), check_exact=True)
    os.replace(store.root / "_aside", compact)

    # Unique and complete: every (study, condition, level), labelled or not, exactly once.
    assert not table.duplicated(["study_id", "condition", "level"]).any()
    assert len(table) == 25 * len(study_ids)
    labelled = set(synth.labels_of(study_ids, LEVELS))
    assert labelled <= set(zip(table["study_id"], table["condition"], table["level"]))
    assert list(table.columns[:3]) == ["study_id", "condition", "level"]
    assert "radiomics__sagittal_t2__original_glcm_Contrast" in table.columns
    assert "radiomics__axial_t2__mean25d_log-sigma-1-0-mm-3D_firstorder_Variance" in table.columns
    assert "cnn__sagittal_t1__prob_severe" in table.columns

    by_key = table.set_index(["study_id", "condition", "level"])
    ok = by_key.loc[(11, vocab.SPINAL, "l5_s1")]
    assert ok["radiomics__status"] == STATUS_OK and ok["cnn__status"] == STATUS_OK
    assert np.isfinite(ok["radiomics__sagittal_t2__original_firstorder_Mean"])
    assert np.isfinite(ok["radiomics__axial_t2__original_firstorder_Mean"])
    assert np.isnan(ok["radiomics__sagittal_t1__original_firstorder_Mean"])  # the canal has no T1 crop
    assert np.isfinite(by_key.loc[(11, "left_neural_foraminal_narrowing", "l5_s1"), "cnn__sagittal_t1__prob_severe"])

    mixed = by_key.loc[(12, vocab.SPINAL, "l5_s1")]
    assert mixed["radiomics__status"] == ("axial_t2: ValueError: constant intensity inside the mask (no texture to "
                                          "describe); sagittal_t2: ok")
    assert mixed["cnn__status"] == "axial_t2: constant image (nothing to describe); sagittal_t2: ok"
    assert np.isnan(mixed["radiomics__axial_t2__original_firstorder_Mean"])
    assert np.isfinite(mixed["radiomics__sagittal_t2__original_firstorder_Mean"])

    assert (by_key.loc[(11, vocab.SPINAL, "l1_l2"), ["radiomics__status", "cnn__status"]] == STATUS_NO_CROP).all()
    assert by_key.loc[(14, vocab.SPINAL, "l5_s1"), "radiomics__status"] == (
        "axial_t2: no ROI crop: no axial slice within 6 mm; sagittal_t2: ok")
    assert by_key.loc[(14, vocab.SPINAL, "l1_l2"), "cnn__status"] == "sagittal_t2: no ROI crop: no coordinate"
    failed = table[table["study_id"] == 13]
    assert (failed["radiomics__status"] == "ROI crops failed: FileNotFoundError: study 13: no Sagittal T2/STIR "
            "series").all()
    assert failed.filter(like="__prob_").isna().all().all()

    # Nothing is silently NaN: a feature is NaN only where its extractor's status says why.
    for extractor in ("radiomics", "cnn"):
        for view in config.views:
            block = table[[c for c in table.columns if c not in vocab.KEY_COLUMNS
                           and (parse_column(c).extractor, parse_column(c).view) == (extractor, view)]]
            has_crop = np.array([view in status or status == STATUS_OK for status in table[status_column(extractor)]])
            described = block.notna().all(axis=1).to_numpy()
            partially = block.notna().any(axis=1).to_numpy()
            assert (described == partially).all()
            assert not (described & ~has_crop).any()

    # A re-run does nothing and leaves the same table.
    calls.clear()
    summary = compute_features(study_ids, crops_for_study, extractors, store, config=config, progress=False)
    assert summary.skipped == 5 and summary.written == 0 and calls == [] and summary.fit_seconds == {}
    pd.testing.assert_frame_equal(store.read(), table)
    pd.testing.assert_frame_equal(pd.read_parquet(store.root).pipe(lambda f: f.sort_values(
        ["study_id", "condition", "level"]).reset_index(drop=True)),
        table.sort_values(["study_id", "condition", "level"]).reset_index(drop=True))


def test_only_the_configured_views_are_described(tmp_path: Path) -> None:
    _, extractors = setup(tmp_path, [1], cnn=False)
    config = FeaturesConfig(views=("axial_t2",), radiomics=RadiomicsConfig(params=str(extractors[0].params_path)),
                            cnn=TINY_CNN)

    def crops_for_study(study_id: int) -> StudyCrops:
        failures = [RoiFailure(study_id, vocab.SPINAL, "l1_l2", "sagittal_t2", "no coordinate")]
        return StudyCrops(synth.crops_for_study(study_id, levels=LEVELS, slices=1), failures)

    store = FeatureStore(tmp_path / "f")
    compute_features([1], crops_for_study, extractors, store, config=config, progress=False)
    table = store.read().set_index(["condition", "level"])
    assert not table.filter(like="sagittal").columns.size
    assert table.loc[(vocab.SPINAL, "l5_s1"), "radiomics__status"] == STATUS_OK  # its sagittal crop is ignored
    assert table.loc[(vocab.SPINAL, "l1_l2"), "radiomics__status"] == STATUS_NO_CROP
    assert table.loc[("left_neural_foraminal_narrowing", "l5_s1"), "radiomics__status"] == STATUS_NO_CROP
    assert table.loc[("left_subarticular_stenosis", "l5_s1"), "radiomics__status"] == STATUS_OK


def test_bad_arguments_are_refused(tmp_path: Path) -> None:
    config, extractors = setup(tmp_path, [1], cnn=False)
    store = FeatureStore(tmp_path / "f")
    with pytest.raises(ValueError, match="repeated"):
        compute_features([1, 1], synth.crops_for_study, extractors, store, config=config, progress=False)
    with pytest.raises(ValueError, match="distinct"):
        compute_features([1], synth.crops_for_study, extractors * 2, store, config=config, progress=False)
    with pytest.raises(ValueError, match="jobs"):
        compute_features([1], synth.crops_for_study, extractors, store, config=config, jobs=0, progress=False)


@pytest.mark.slow
def test_dask_gives_the_same_table_as_one_process(tmp_path: Path, monkeypatch) -> None:
    from distributed import LocalCluster

    study_ids = list(range(1, 7))
    crops = functools.partial(synth.crops_for_study, failing=(4,), levels=LEVELS, slices=1)
    single = run(tmp_path, "single", study_ids, crops)
    assert len(single) == 25 * len(study_ids)
    # (jobs=2 against jobs=1: see the kill-and-resume test)
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(TESTS_DIR), os.environ.get("PYTHONPATH", "")]))
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster:
        on_dask = run(tmp_path, "dask", study_ids, crops, scheduler=cluster.scheduler_address)
    pd.testing.assert_frame_equal(on_dask, single, check_exact=True)


KILLABLE_RUN = """
import functools, sys
sys.path.insert(0, {tests!r})
import features_synthetic as synth
from test_features_driver import setup, LEVELS
from radiospine.features.driver import compute_features
from radiospine.features.store import FeatureStore
from pathlib import Path

tmp, study_ids = Path({tmp!r}), list(range(1, 9))
config, extractors = setup(tmp, study_ids)
crops = functools.partial(synth.crops_for_study, delay=0.2, failing=(4,), levels=LEVELS, slices=1)
compute_features(study_ids, crops, extractors, FeatureStore(Path(sys.argv[1])), config=config,
                 catalog_hash="cat", jobs=int(sys.argv[2]), progress=False)
"""


def _start(script: Path, root: Path, jobs: int) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, str(script), str(root), str(jobs)], start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def _kill_when(process: subprocess.Popen, ready, timeout: float = 600.0) -> None:
    """Kill ``process`` (and its workers) once ``ready()``; a run still short of it after ``timeout`` s fails the test
    (generous: on a shared, loaded machine the killable run needs minutes to start, 90 s was not enough at load 20)."""
    deadline = time.monotonic() + timeout
    while not ready():
        assert process.poll() is None, f"the run ended before it could be killed: {process.stderr.read()[-2000:]}"
        assert time.monotonic() < deadline, "the run made no progress"
        time.sleep(0.05)
    os.killpg(process.pid, signal.SIGKILL)  # the run and its worker processes, at once
    process.wait(timeout=30)
    process.stderr.close()


@pytest.mark.slow
def test_a_run_killed_at_any_phase_resumes_to_the_same_table(tmp_path: Path) -> None:
    study_ids = list(range(1, 9))
    script = tmp_path / "run.py"
    script.write_text(textwrap.dedent(KILLABLE_RUN.format(tests=str(TESTS_DIR), tmp=str(tmp_path))))
    root = Workspace(tmp_path / "killed").features_dir("train")
    inputs = root / "_cnn" / "inputs"

    # Killed while preparing the CNN's inputs (in one process), then while writing shards (with 2 worker
    # processes), then run to the end.
    _kill_when(_start(script, root, 1), lambda: inputs.is_dir() and len(list(inputs.glob("study_*.npz"))) >= 3)
    assert not FeatureStore(root).done_studies()
    _kill_when(_start(script, root, 2), lambda: len(FeatureStore(root).done_studies()) >= 3)
    partial = FeatureStore(root).done_studies()
    assert 3 <= len(partial) < len(study_ids), "killed too late to test resuming"
    # Resumed (in this process) to the end. The second killed run used 2 worker processes, the uninterrupted one
    # runs in this process: same table.
    crops = functools.partial(synth.crops_for_study, failing=(4,), levels=LEVELS, slices=1)
    config, extractors = setup(tmp_path, study_ids)
    summary = compute_features(study_ids, crops, extractors, FeatureStore(root), config=config, catalog_hash="cat",
                               progress=False)
    assert summary.skipped == len(partial) and summary.written == len(study_ids) - len(partial)
    resumed = FeatureStore(root).read()
    uninterrupted = run(tmp_path, "uninterrupted", study_ids, crops)
    assert not resumed.duplicated(["study_id", "condition", "level"]).any() and len(resumed) == 25 * len(study_ids)
    pd.testing.assert_frame_equal(resumed, uninterrupted, check_exact=True)
    assert not list(root.rglob(".*.tmp"))
