"""GBM fits side by side (radiospine.models.fits): the same models, bit for bit, from this process and from two
worker processes or a Dask cluster, for the per-condition driver and the per-target (spider) driver, and with any
number of threads per booster."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from joblib import Parallel, delayed
from models_synthetic import make_feature_table
from test_models_target import spider_table

from radiospine.config import ModelsConfig
from radiospine.errors import DataError
from radiospine.models.condition_models import train_condition_models
from radiospine.models.fits import DaskFits, Fit, FitData, FitFailed, ProcessFits, SerialFits
from radiospine.models.ordinal import ESTIMATOR_FILE, MulticlassGBMClassifier, OrdinalGBMClassifier
from radiospine.models.target_models import train_target_models
from radiospine.task import SPIDER

CONFIG = ModelsConfig.model_validate({
    "n_folds": 3,
    "gbm": {"n_estimators": 30, "learning_rate": 0.15, "min_child_samples": 10, "early_stopping_rounds": 6}})


def folder_bytes(folder: Path, skip: tuple[str, ...] = ()) -> dict[str, bytes]:
    """Every file under ``folder`` (relative name -> bytes), except those named in ``skip``."""
    return {str(path.relative_to(folder)): path.read_bytes() for path in sorted(folder.rglob("*"))
            if path.is_file() and path.name not in skip}


def without_seconds(report: dict) -> dict:
    return {key: value for key, value in report.items() if key != "fit_seconds"}


@pytest.fixture(scope="module")
def synthetic():
    return make_feature_table(n_studies=30, n_features=12, seed=5)


def test_two_worker_processes_give_the_serial_models_bit_for_bit(synthetic, tmp_path: Path) -> None:
    serial = train_condition_models(synthetic.features, synthetic.labels, CONFIG)
    with ProcessFits(jobs=2) as runner:
        parallel = train_condition_models(synthetic.features, synthetic.labels, CONFIG, runner)
    serial.save(tmp_path / "serial")
    parallel.save(tmp_path / "parallel")
    files = folder_bytes(tmp_path / "serial", skip=("model_card.json",))
    assert sum(name.endswith((".txt", ".json")) for name in files) >= 3 * 2 * 2  # groups x members x boosters
    assert files == folder_bytes(tmp_path / "parallel", skip=("model_card.json",))  # boosters, oof predictions
    assert serial.oof_predictions.equals(parallel.oof_predictions)
    assert without_seconds(serial.report) == without_seconds(parallel.report)  # cv scores, calibration, ...
    assert serial.report["fit_seconds"].keys() == parallel.report["fit_seconds"].keys()
    assert all(seconds > 0 for member in parallel.report["fit_seconds"].values() for seconds in member.values())
    assert serial.blend_weights == parallel.blend_weights


def test_the_spider_task_trains_the_same_models_in_two_worker_processes(tmp_path: Path) -> None:
    features, labels = spider_table(n_studies=24)
    config = CONFIG.model_copy(update={"members": CONFIG.members[:1],
                                       "gbm": CONFIG.gbm.model_copy(update={"min_child_samples": 5})})
    serial = train_target_models(features, labels, SPIDER, config)
    with ProcessFits(jobs=2) as runner:
        parallel = train_target_models(features, labels, SPIDER, config, runner)
    serial.save(tmp_path / "serial")
    parallel.save(tmp_path / "parallel")
    assert folder_bytes(tmp_path / "serial") == folder_bytes(tmp_path / "parallel")
    assert serial.oof_predictions.equals(parallel.oof_predictions)


@pytest.mark.parametrize("backend", ["lightgbm", "xgboost"])
@pytest.mark.parametrize("estimator", [OrdinalGBMClassifier, MulticlassGBMClassifier])
def test_the_number_of_booster_threads_changes_nothing(backend: str, estimator, tmp_path: Path) -> None:
    """LightGBM (deterministic, force_col_wise, num_threads from OpenMP) and XGBoost (hist) fit the same trees, to
    the byte of the saved files, with 1 and 3 threads, with bagging, column sampling and early stopping."""
    rng = np.random.default_rng(3)
    X = rng.normal(size=(3000, 12)).astype(np.float32)
    y = np.digitize(X[:, 0] + X[:, 1] ** 2 + rng.normal(size=3000), [0.5, 2.0])
    files = []
    for threads in (1, 3):
        model = estimator(backend=backend, n_estimators=40, subsample=0.7, colsample=0.6, min_child_samples=20,
                          early_stopping_rounds=5, n_jobs=threads, random_state=4).fit(X, y)
        model.to_native(tmp_path / str(threads))
        files.append(folder_bytes(tmp_path / str(threads)))
        assert "n_jobs" not in json.loads(files[-1][ESTIMATOR_FILE])["params"]
    assert files[0] == files[1]


def _raise_on_fit():
    raise ValueError("no fit today")


def test_a_failing_fit_is_reported_with_its_key_and_the_batch_files_are_removed(synthetic, tmp_path) -> None:
    y = np.zeros(10, dtype=np.int64)
    data = FitData(np.zeros((10, 2), np.float32), y, np.ones(10), np.arange(10))
    with ProcessFits(jobs=2) as runner:
        with pytest.raises(FitFailed) as failure:
            list(runner.run([(data, [Fit(("group", "member", None), _raise_on_fit, 0, np.arange(10))])]))
        assert list(runner._folder.iterdir()) == []
    assert failure.value.key == ("group", "member", None) and isinstance(failure.value.error, ValueError)
    assert not runner._folder.exists()
    # joblib's own process pool (the feature stage's) still works in this process afterwards
    assert Parallel(n_jobs=2)(delayed(abs)(-number) for number in range(3)) == [0, 1, 2]
    # the driver names the model group and member in a DataError
    one_class = synthetic.labels.assign(severity=synthetic.labels["severity"].where(
        synthetic.labels["condition"] != "spinal_canal_stenosis", 0))
    with pytest.raises(DataError, match="model spinal_canal_stenosis, member lightgbm_ordinal"):
        train_condition_models(synthetic.features, one_class, CONFIG, SerialFits())


def test_batches_are_taken_only_when_workers_would_idle() -> None:
    """With two workers and batches of three fits, the second batch is made only after the first's fits were
    submitted and one of them came back: at most two batches (design matrices) exist at once."""
    made = []

    def batches():
        for number in range(4):
            made.append(number)
            y = np.array([0, 1] * 10)
            data = FitData(np.arange(20, dtype=np.float32)[:, None], y, np.ones(20), np.arange(20))
            yield data, [Fit((number, k), _raise_on_fit, 0, np.arange(20)) for k in range(3)]

    runner = SerialFits()
    runner.workers = 2
    with pytest.raises(FitFailed):
        next(iter(runner.run(batches())))
    assert made == [0]


def test_fits_on_a_dask_cluster_give_the_local_models(synthetic, tmp_path: Path) -> None:
    """Two worker processes of one thread each, as `dask worker ADDR --nthreads 1 --nworkers 2` would start."""
    from distributed import LocalCluster

    config = CONFIG.model_copy(update={"members": CONFIG.members[1:], "n_folds": 2})  # XGBoost, 2 folds: brief
    local = train_condition_models(synthetic.features, synthetic.labels, config)
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster, \
            DaskFits(cluster.scheduler_address) as runner:
        assert runner.workers == 2
        on_dask = train_condition_models(synthetic.features, synthetic.labels, config, runner)
    local.save(tmp_path / "local")
    on_dask.save(tmp_path / "dask")
    assert folder_bytes(tmp_path / "local", skip=("model_card.json",)) == \
        folder_bytes(tmp_path / "dask", skip=("model_card.json",))
    assert without_seconds(local.report) == without_seconds(on_dask.report)

