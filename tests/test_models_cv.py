"""Tests of radiospine.models.cv: study-grouped folds, grouped early stopping, out-of-fold predictions."""

from __future__ import annotations

from typing import ClassVar

import numpy as np
import pandas as pd
import pytest
from models_synthetic import make_feature_table
from sklearn.base import BaseEstimator, ClassifierMixin

from radiospine import metrics, vocab
from radiospine.models import cv
from radiospine.models.fits import FitData, SerialFits, fold_fits


@pytest.fixture(scope="module")
def labels():
    return make_feature_table(n_studies=50, n_features=8, seed=5).labels


def test_every_study_in_exactly_one_fold_and_strata_spread(labels):
    folds = cv.assign_study_folds(labels, n_splits=5, seed=0)
    assert sorted(folds.index) == sorted(labels["study_id"].unique())
    assert set(folds) == set(range(5))
    assert folds.value_counts().max() - folds.value_counts().min() <= 2
    strata = cv.study_strata(labels)
    severe_spinal = strata.index[strata >= 6]  # a severe spinal level
    assert len(severe_spinal) >= 5
    assert folds[severe_spinal].nunique() == 5
    assert cv.assign_study_folds(labels, 5, seed=0).equals(folds)


def test_study_strata_summary():
    frame = pd.DataFrame({
        "study_id": [1, 1, 2, 2, 3],
        "condition": [vocab.SPINAL, vocab.CONDITIONS[1], vocab.SPINAL, vocab.CONDITIONS[3], vocab.SPINAL],
        "level": ["l1_l2", "l1_l2", "l4_l5", "l4_l5", "l5_s1"],
        "severity": pd.array([2, 1, 0, 2, pd.NA], dtype="Int8"),
    })
    assert cv.study_strata(frame).to_dict() == {1: 8, 2: 2, 3: 0}


def test_too_few_studies_for_the_folds(labels):
    few = labels[labels["study_id"].isin(labels["study_id"].unique()[:3])]
    with pytest.raises(ValueError, match="cannot be split into 5 folds"):
        cv.assign_study_folds(few, 5, seed=0)


def test_early_stopping_split_holds_out_whole_studies():
    rng = np.random.default_rng(0)
    groups = np.repeat(np.arange(40), 25)
    y = rng.integers(0, 3, size=len(groups))
    held_out = cv.early_stopping_split(groups, y, fraction=0.15, seed=0)
    assert not set(groups[held_out]) & set(groups[~held_out])
    assert 0.1 < held_out.mean() < 0.2


class _SpyClassifier(ClassifierMixin, BaseEstimator):
    """Predicts the weighted class frequencies; records the studies (column ``study``) it was fitted and
    early-stopped on."""

    fits: ClassVar[list[tuple[set, set]]] = []

    def __init__(self, early_stopping_rounds=5, validation_fraction=0.2):
        self.early_stopping_rounds = early_stopping_rounds
        self.validation_fraction = validation_fraction

    def fit(self, X, y, sample_weight=None, eval_set=None):
        self.classes_ = np.unique(y)
        self.prior_ = np.bincount(np.searchsorted(self.classes_, y), weights=sample_weight) / np.sum(sample_weight)
        eval_studies = set() if eval_set is None else set(eval_set[0]["study"])
        _SpyClassifier.fits.append((set(X["study"]), eval_studies))
        return self

    def predict_proba(self, X):
        return np.tile(self.prior_, (len(X), 1))


def test_out_of_fold_never_trains_on_the_study_it_predicts(labels):
    folds = cv.assign_study_folds(labels, n_splits=4, seed=1)
    study = labels["study_id"].to_numpy()
    fold = labels["study_id"].map(folds).to_numpy()
    y = labels["severity"].astype("Float64").fillna(-1).to_numpy(dtype=np.int64)
    X = pd.DataFrame({"study": study})
    _SpyClassifier.fits = []
    fits = fold_fits(("spy",), _SpyClassifier, y, fold, seed=0, n_classes=3)
    proba = np.full((len(y), 3), np.nan)
    for fit, result, _ in SerialFits().run([(FitData(X, y, np.ones(len(y)), study), fits)]):
        proba[fit.predict_rows] = result
    assert len(_SpyClassifier.fits) == 4 and [fit.key for fit in fits] == [("spy", k) for k in range(4)]
    for k, (trained, stopped) in enumerate(_SpyClassifier.fits):
        predicted = set(study[fold == k])
        assert not trained & predicted and not stopped & predicted and not trained & stopped
        assert trained | stopped == set(study) - predicted
    assert np.all(np.isfinite(proba)) and proba.shape == (len(y), 3)
    np.testing.assert_allclose(proba.sum(axis=1), 1.0)


def test_fold_scores_per_fold_and_part(labels):
    folds = cv.assign_study_folds(labels, n_splits=3, seed=2)
    predictions = metrics.weighted_prior_predictions(labels, folds.index)
    scores = cv.fold_scores(labels, predictions, folds)
    assert list(scores.index) == ["0", "1", "2", "all"]
    assert list(scores.columns) == ["spinal", "foraminal", "subarticular", "any_severe_spinal", "score"]
    assert scores.loc["all"].to_dict() == metrics.score(labels, predictions).as_dict()
    in_fold_1 = labels["study_id"].map(folds).eq(1).to_numpy()
    assert scores.loc["1", "score"] == metrics.score(labels[in_fold_1], predictions).score


def test_rare_class_is_never_held_out_of_training_by_early_stopping():
    """Regression: with 12 studies, the severe class of one study ended up only in the early-stopping hold-out,
    and the booster refused an eval_set with a class it never trained on."""
    from radiospine.models.ordinal import OrdinalGBMClassifier

    rng = np.random.default_rng(0)
    groups = np.repeat(np.arange(12), 5)
    y = np.zeros(len(groups), dtype=np.int64)
    y[groups % 3 == 0] = 1
    y[groups == 4] = 2  # the only severe study
    X = pd.DataFrame({"f": rng.normal(size=len(y)) + y})
    make = lambda: OrdinalGBMClassifier(n_estimators=10, early_stopping_rounds=3, validation_fraction=0.3,  # noqa: E731
                                        min_child_samples=2)
    for seed in range(6):
        fitted = cv.fit_grouped(make, X, y, np.ones(len(y)), groups, seed)
        assert list(fitted.classes_) == [0, 1, 2]


def test_too_few_studies_for_early_stopping_fit_without_it():
    """Regression: 4 studies in a training fold made early stopping raise instead of fitting."""
    from radiospine.models.ordinal import OrdinalGBMClassifier

    groups = np.repeat(np.arange(4), 6)
    y = np.tile([0, 1, 2], 8)
    X = pd.DataFrame({"f": y + np.linspace(0, 1, len(y))})
    make = lambda: OrdinalGBMClassifier(n_estimators=7, early_stopping_rounds=3, min_child_samples=2)  # noqa: E731
    fitted = cv.fit_grouped(make, X, y, np.ones(len(y)), groups, 0)
    assert fitted.early_stopping_rounds is None and list(fitted.n_rounds_) == [7, 7]
