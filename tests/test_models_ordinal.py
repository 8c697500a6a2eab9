"""Tests of radiospine.models.ordinal: the sklearn contract, monotone probabilities, native I/O, TreeSHAP."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from models_synthetic import make_feature_table
from sklearn.metrics import log_loss
from sklearn.utils.estimator_checks import parametrize_with_checks

from radiospine.models.ordinal import (
    ESTIMATOR_FILE,
    MulticlassGBMClassifier,
    OrdinalGBMClassifier,
    cumulative_to_proba,
)

SMALL = dict(n_estimators=15, learning_rate=0.3, min_child_samples=2)
CLASSES = (OrdinalGBMClassifier, MulticlassGBMClassifier)
BACKENDS = ("lightgbm", "xgboost")


def _expected_failed_checks(estimator) -> dict[str, str]:
    return {
        # Weighting a row by 2 is not repeating it in gradient boosting as configured here: row subsampling
        # draws rows, not weight; LightGBM's min_data_in_leaf / min_data_in_bin count rows and its histogram
        # bins are built from row counts; XGBoost sums gradients in float32, so even with subsample=1 the two
        # fits differ at ~1e-8 relative, beyond the check's rtol=1e-7.
        "check_sample_weight_equivalence_on_dense_data": "boosting counts rows in bins/leaves and subsamples rows",
    }


@parametrize_with_checks(
    [
        OrdinalGBMClassifier(backend="lightgbm", **SMALL),
        OrdinalGBMClassifier(backend="xgboost", early_stopping_rounds=5, **SMALL),
        MulticlassGBMClassifier(backend="lightgbm", early_stopping_rounds=5, **SMALL),
        MulticlassGBMClassifier(backend="xgboost", **SMALL),
    ],
    expected_failed_checks=_expected_failed_checks,
)
def test_sklearn_contract(estimator, check):
    check(estimator)


@pytest.fixture(scope="module")
def table():
    """A small synthetic table: X (n, 12) float with NaN and a constant column, y in {0, 1, 2}."""
    synthetic = make_feature_table(n_studies=16, n_features=12, seed=1)
    X = synthetic.features.filter(regex="__(?!status$)")
    y = synthetic.labels["severity"]
    labelled = y.notna().to_numpy()
    return X[labelled].reset_index(drop=True), y[labelled].to_numpy(dtype=np.int64)


def _small(cls, backend, **params):
    return cls(backend=backend, n_estimators=30, learning_rate=0.3, min_child_samples=3, subsample=0.5,
               colsample=0.5, **params)


def _assert_valid_proba(proba: np.ndarray, n_rows: int, n_classes: int = 3) -> None:
    assert proba.shape == (n_rows, n_classes)
    assert np.all(np.isfinite(proba))
    assert proba.min() >= 0.0
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, atol=1e-12)


def test_cumulative_to_proba_monotone_on_adversarial_input():
    rng = np.random.default_rng(0)
    cumulative = np.vstack([rng.random((500, 3)), [[0.1, 0.9, 0.5], [0.0, 1.0, 1.0], [1.0, 1.0, 0.0]]])
    proba = cumulative_to_proba(cumulative)
    _assert_valid_proba(proba, len(cumulative), n_classes=4)
    # Rearrangement: the row's cumulative values are kept, only reordered.
    recovered = 1.0 - np.cumsum(proba, axis=1)[:, :-1]
    np.testing.assert_allclose(np.sort(recovered, axis=1), np.sort(cumulative, axis=1), atol=1e-12)
    # Already monotone rows are plain differences.
    np.testing.assert_allclose(cumulative_to_proba([[0.7, 0.2]]), [[0.3, 0.5, 0.2]])
    with pytest.raises(ValueError, match="NaN"):
        cumulative_to_proba([[np.nan, 0.1]])


@pytest.mark.parametrize("backend", BACKENDS)
def test_ordinal_probabilities_valid_where_boosters_disagree(table, backend):
    X, y = table
    model = _small(OrdinalGBMClassifier, backend).fit(X, y)
    rng = np.random.default_rng(0)
    adversarial = pd.DataFrame(rng.normal(scale=5.0, size=(2000, X.shape[1])), columns=X.columns)
    margin = model.raw_margin(adversarial)
    assert (margin[:, 1] > margin[:, 0]).any(), "the test needs rows where the raw cumulative order is violated"
    _assert_valid_proba(model.predict_proba(adversarial), len(adversarial))


@pytest.mark.parametrize("cls", CLASSES)
@pytest.mark.parametrize("backend", BACKENDS)
def test_probabilities_valid_for_nan_constant_and_extreme_input(table, cls, backend):
    X, y = table
    X = X.assign(extra__all_nan=np.nan, extra__constant=1.0)
    model = _small(cls, backend).fit(X, y)
    n_features = X.shape[1]
    rows = np.vstack([
        np.full((2, n_features), np.nan),
        np.full((2, n_features), 3.0),
        np.full((2, n_features), 1e30),
        np.full((2, n_features), -1e30),
        np.where(np.random.default_rng(1).random((50, n_features)) < 0.5, np.nan, 0.0),
    ])
    rows = pd.DataFrame(rows, columns=X.columns)
    _assert_valid_proba(model.predict_proba(rows), len(rows))
    assert set(model.predict(rows)) <= {0, 1, 2}


@pytest.mark.parametrize("cls", CLASSES)
@pytest.mark.parametrize("backend", BACKENDS)
def test_learns_better_than_the_class_prior(table, cls, backend):
    X, y = table
    train = np.arange(len(y)) % 4 != 0
    model = _small(cls, backend).fit(X[train], y[train])
    prior = np.bincount(y[train], minlength=3) / train.sum()
    model_loss = log_loss(y[~train], model.predict_proba(X[~train]), labels=[0, 1, 2])
    prior_loss = log_loss(y[~train], np.tile(prior, ((~train).sum(), 1)), labels=[0, 1, 2])
    assert model_loss < prior_loss


def test_string_labels_sorted_order_is_the_ordinal_order(table):
    X, y = table
    names = np.array(["a_normal", "b_moderate", "c_severe"])[y]
    model = _small(OrdinalGBMClassifier, "lightgbm").fit(X, names)
    assert model.classes_.tolist() == ["a_normal", "b_moderate", "c_severe"]
    numeric = _small(OrdinalGBMClassifier, "lightgbm").fit(X, y)
    np.testing.assert_allclose(model.predict_proba(X), numeric.predict_proba(X))


@pytest.mark.parametrize("backend", BACKENDS)
def test_two_classes_and_one_class(table, backend):
    X, y = table
    binary = np.minimum(y, 1)
    model = _small(OrdinalGBMClassifier, backend).fit(X, binary)
    assert len(model.boosters_) == 1
    _assert_valid_proba(model.predict_proba(X), len(X), n_classes=2)
    with pytest.raises(ValueError, match="one class"):
        _small(OrdinalGBMClassifier, backend).fit(X, np.zeros(len(y)))


@pytest.mark.parametrize("backend", BACKENDS)
def test_sample_weights_are_passed_to_every_booster(table, backend):
    X, y = table
    plain = _small(OrdinalGBMClassifier, backend).fit(X, y)
    weighted = _small(OrdinalGBMClassifier, backend).fit(X, y, sample_weight=np.array([1.0, 2.0, 4.0])[y])
    # The metric's 1/2/4 weights raise the mean predicted probability of the upper classes.
    assert weighted.predict_proba(X)[:, 2].mean() > plain.predict_proba(X)[:, 2].mean()
    assert weighted.predict_proba(X)[:, 0].mean() < plain.predict_proba(X)[:, 0].mean()


@pytest.mark.parametrize("cls", CLASSES)
@pytest.mark.parametrize("backend", BACKENDS)
def test_early_stopping_on_eval_set_and_internal_split(table, cls, backend):
    X, y = table
    rng = np.random.default_rng(3)
    noise = pd.DataFrame(rng.normal(size=X.shape), columns=X.columns)
    long = dict(n_estimators=400, learning_rate=0.3, min_child_samples=3, early_stopping_rounds=5)
    internal = cls(backend=backend, **long).fit(noise, y)
    external = cls(backend=backend, **long).fit(noise[:300], y[:300], eval_set=(noise[300:], y[300:]))
    for model in (internal, external):
        assert all(1 <= n < 400 for n in model.n_rounds_), model.n_rounds_
        _assert_valid_proba(model.predict_proba(noise), len(noise))
    with pytest.raises(ValueError, match="not among the training classes"):
        cls(backend=backend, **long).fit(noise, y, eval_set=(noise[:5], np.full(5, 7)))
    with pytest.raises(ValueError, match="early_stopping_rounds is None"):
        cls(backend=backend).fit(noise, y, eval_set=(noise[:5], y[:5]))


@pytest.mark.parametrize("cls", CLASSES)
@pytest.mark.parametrize("backend", BACKENDS)
def test_native_round_trip_is_identical(table, tmp_path, cls, backend):
    X, y = table
    model = _small(cls, backend, early_stopping_rounds=5).fit(X, y)
    directory = model.to_native(tmp_path / "model")
    suffix = ".txt" if backend == "lightgbm" else ".json"
    assert sorted(p.name for p in directory.iterdir()) == sorted(
        [ESTIMATOR_FILE] + [f"model_{k}{suffix}" for k in range(len(model.boosters_))]
    )
    assert not any(p.suffix in (".pkl", ".pickle", ".joblib") for p in directory.iterdir())
    loaded = cls.from_native(directory)
    np.testing.assert_array_equal(loaded.predict_proba(X), model.predict_proba(X))
    np.testing.assert_array_equal(loaded.classes_, model.classes_)
    assert loaded.get_params() == model.get_params()
    assert loaded.feature_names_in_.tolist() == X.columns.tolist()
    with pytest.raises(ValueError, match=f"missing:\n- {X.columns[-1]}"):
        loaded.predict_proba(X.iloc[:, :-1])


def test_from_native_errors_name_the_file(table, tmp_path):
    X, y = table
    with pytest.raises(FileNotFoundError, match=ESTIMATOR_FILE):
        OrdinalGBMClassifier.from_native(tmp_path / "nowhere")
    directory = _small(OrdinalGBMClassifier, "lightgbm").fit(X, y).to_native(tmp_path / "ordinal")
    with pytest.raises(ValueError, match="OrdinalGBMClassifier"):
        MulticlassGBMClassifier.from_native(directory)
    (directory / "model_1.txt").unlink()
    with pytest.raises(FileNotFoundError, match=r"model_1.txt"):
        OrdinalGBMClassifier.from_native(directory)
    (directory / ESTIMATOR_FILE).write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        OrdinalGBMClassifier.from_native(directory)
    card = json.loads(
        _small(OrdinalGBMClassifier, "xgboost").fit(X, y).to_native(tmp_path / "x").joinpath(ESTIMATOR_FILE)
        .read_text()
    )
    assert card["classes"] == [0, 1, 2] and card["booster_files"] == ["model_0.json", "model_1.json"]


@pytest.mark.parametrize("cls", CLASSES)
@pytest.mark.parametrize("backend", BACKENDS)
def test_shap_values_sum_to_the_raw_margin(table, cls, backend):
    X, y = table
    X = X.assign(extra__constant=5.0)
    model = _small(cls, backend).fit(X, y)
    shap = model.shap_values(X)
    n_outputs = 2 if cls is OrdinalGBMClassifier else 3
    assert shap.shape == (len(X), X.shape[1] + 1, n_outputs)
    np.testing.assert_allclose(shap.sum(axis=1), model.raw_margin(X), rtol=1e-5, atol=1e-5)
    # A constant column never contributes.
    assert np.all(shap[:, X.columns.get_loc("extra__constant"), :] == 0.0)


def test_invalid_parameters_are_named(table):
    X, y = table
    with pytest.raises(ValueError, match=r"backend='catboost'.*learning_rate=0"):
        OrdinalGBMClassifier(backend="catboost", learning_rate=0).fit(X, y)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("cls", CLASSES)
@pytest.mark.parametrize("n_classes", [2, 3])
def test_boosters_that_learn_nothing_predict_the_init_proba(cls, backend, n_classes):
    rng = np.random.default_rng(3)
    X = rng.normal(size=(120, 4))
    y = rng.integers(0, n_classes, size=120)
    init = rng.dirichlet(np.ones(n_classes), size=120)  # per-row, far from the classes' frequencies
    # no leaf may be split off (LightGBM) nor given a weight (XGBoost): the boosters add nothing
    model = cls(backend=backend, n_estimators=10, min_child_samples=1000, min_child_weight=1e6).fit(
        X, y, init_proba=init)
    np.testing.assert_allclose(model.predict_proba(X, init_proba=init), init, atol=1e-7)
    # the same init proba in any scale: rows are renormalised
    np.testing.assert_allclose(model.predict_proba(X[:5], init_proba=3 * init[:5]), init[:5], atol=1e-7)
    np.testing.assert_allclose(cls.margin_of_proba(init), model.raw_margin(X, init_proba=init), atol=1e-6)
    with pytest.raises(ValueError, match="fitted with init_proba and predicts only with it"):
        model.predict_proba(X)
    with pytest.raises(ValueError, match=rf"init_proba must have shape \(120, {n_classes}\)"):
        model.predict_proba(X, init_proba=init[:, :1])


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("cls", CLASSES)
def test_boosting_from_init_proba_learns_the_rest_and_round_trips(table, tmp_path, cls, backend):
    X, y = table
    rng = np.random.default_rng(4)
    init = rng.dirichlet(np.full(3, 5.0), size=len(y))
    fit_rows, eval_rows = np.arange(len(y)) % 4 != 0, np.arange(len(y)) % 4 == 0
    model = _small(cls, backend, early_stopping_rounds=5).fit(
        X[fit_rows], y[fit_rows], init_proba=init[fit_rows],
        eval_set=(X[eval_rows], y[eval_rows]), eval_init_proba=init[eval_rows])
    proba = model.predict_proba(X, init_proba=init)
    _assert_valid_proba(proba, len(y))
    assert log_loss(y[fit_rows], proba[fit_rows]) < log_loss(y[fit_rows], init[fit_rows])
    loaded = cls.from_native(model.to_native(tmp_path / "model"))
    np.testing.assert_array_equal(loaded.predict_proba(X, init_proba=init), proba)
    with pytest.raises(ValueError, match="eval_init_proba is needed exactly when"):
        _small(cls, backend, early_stopping_rounds=5).fit(X, y, init_proba=init, eval_set=(X, y))
    plain = _small(cls, backend).fit(X, y)
    with pytest.raises(ValueError, match="fitted without init_proba"):
        plain.predict_proba(X, init_proba=init)
    assert cls.from_native(plain.to_native(tmp_path / "plain")).boosted_from_proba_ is False


@pytest.mark.parametrize("backend", BACKENDS)
def test_boosters_sharing_one_binned_dataset_equal_boosters_fitted_alone(table, backend):
    """The K-1 boosters of a fit share one binned Dataset (one for early stopping too), relabelled per booster:
    booster k must be the booster a fit of the binary target y > k alone makes (same seed, weights, init
    margins, early-stopping rows), bit for bit. Regression test: a label or init margin not replaced between
    boosters would train booster 1 on booster 0's target."""
    X, y = table
    # dyadic probabilities: their sums and margins come out the same in the 3-class and the binary fits
    shapes = np.array([[0.5, 0.25, 0.25], [0.25, 0.5, 0.25], [0.125, 0.375, 0.5], [0.75, 0.125, 0.125]])
    init = shapes[np.arange(len(y)) % len(shapes)]
    weight = np.array([1.0, 2.0, 4.0])[y]
    fit_rows, eval_rows = np.arange(len(y)) % 4 != 0, np.arange(len(y)) % 4 == 0

    def fit(target, proba):
        return _small(OrdinalGBMClassifier, backend, early_stopping_rounds=5).fit(
            X[fit_rows], target[fit_rows], sample_weight=weight[fit_rows], init_proba=proba[fit_rows],
            eval_set=(X[eval_rows], target[eval_rows], weight[eval_rows]), eval_init_proba=proba[eval_rows])

    def text(booster) -> bytes:
        return booster.model_to_string().encode() if backend == "lightgbm" else bytes(booster.save_raw("json"))

    three = fit(y, init)
    assert len(three.boosters_) == 2
    for k in range(2):
        binary_init = np.column_stack([init[:, : k + 1].sum(axis=1), init[:, k + 1:].sum(axis=1)])
        alone = fit((y > k).astype(np.int64), binary_init)
        assert text(three.boosters_[k]) == text(alone.boosters_[0]), f"booster {k}"
    assert text(three.boosters_[0]) != text(three.boosters_[1])
