"""Study-grouped cross-validation: fold assignment, out-of-fold predictions and the metric per fold and part.

All rows of a study (every condition and level) share one fold, so no study is ever on both sides of a split,
and the folds are stratified by a per-study severity summary so that each holds a similar mix of studies
with severe spinal findings (what the ``any_severe_spinal`` part scores).
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Callable

import numpy as np
import pandas as pd
from sklearn.model_selection import StratifiedGroupKFold

from radiospine import metrics, vocab
from radiospine.labels import LONG_LABEL_COLUMNS

logger = logging.getLogger(__name__)


def study_strata(labels: pd.DataFrame) -> pd.Series:
    """A severity summary per study: ``3 * max spinal severity + max severity over all 25 targets``.

    ``labels``: long labels (:mod:`radiospine.labels`); missing labels are ignored (a study with none gets 0).
    Returns an int Series indexed by study_id, values 0..8.
    """
    missing = [column for column in LONG_LABEL_COLUMNS if column not in labels.columns]
    if missing:
        raise ValueError(f"long labels lack column(s) {missing}")
    severity = labels["severity"].astype("Float64").fillna(0).astype(np.int64)
    spinal = labels["condition"].eq(vocab.SPINAL).to_numpy()
    study_ids = labels["study_id"].astype(np.int64)
    max_all = severity.groupby(study_ids).max()
    max_spinal = severity[spinal].groupby(study_ids[spinal]).max().reindex(max_all.index, fill_value=0)
    return (3 * max_spinal + max_all).rename("stratum")


def _merge_rare_strata(strata: pd.Series, n_splits: int) -> pd.Series:
    """Strata with fewer than ``n_splits`` studies fall back to the all-target maximum, then to the most
    common stratum, so that every stratum can be spread over the folds."""
    merged = strata.copy()
    for fallback in (strata % 3, None):
        counts = merged.value_counts()
        rare = merged.isin(counts[counts < n_splits].index)
        if not rare.any():
            break
        merged[rare] = fallback[rare] if fallback is not None else counts.idxmax()
    return merged


def assign_study_folds(labels: pd.DataFrame, n_splits: int, seed: int) -> pd.Series:
    """Fold index (0..n_splits-1) per study, indexed by study_id.

    ``StratifiedGroupKFold`` with one group per study, stratified by :func:`study_strata` (rare strata merged).
    """
    strata = _merge_rare_strata(study_strata(labels), n_splits)
    if len(strata) < n_splits:
        raise ValueError(f"{len(strata)} labelled studies cannot be split into {n_splits} folds; "
                         f"lower models.n_folds or add studies")
    splitter = StratifiedGroupKFold(n_splits=n_splits, shuffle=True, random_state=seed)
    folds = pd.Series(-1, index=strata.index, name="fold", dtype=np.int64)
    for fold, (_, held_out) in enumerate(splitter.split(strata.index, strata.to_numpy(), groups=strata.index)):
        folds.iloc[held_out] = fold
    return folds


#: How many study-grouped early-stopping splits to try before fitting without early stopping.
_SPLIT_ATTEMPTS = 10


def early_stopping_split(groups: np.ndarray, y: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """A boolean mask (n_rows,) of rows held out for early stopping, whole groups (studies) at a time.

    About ``fraction`` of the groups are held out, stratified by class where ``StratifiedGroupKFold`` can.
    """
    n_splits = max(2, round(1.0 / fraction))
    n_groups = len(np.unique(groups))
    if n_groups < n_splits:
        raise ValueError(f"{n_groups} studies are too few to hold out {fraction:.0%} of them for early stopping")
    splitter = StratifiedGroupKFold(n_splits=n_splits, shuffle=True, random_state=seed)
    with warnings.catch_warnings():
        # Stratification is best effort here: a class rarer than n_splits is simply spread as far as it goes.
        warnings.filterwarnings("ignore", message="The least populated class", category=UserWarning)
        _, held_out = next(splitter.split(np.zeros(len(y)), y, groups=groups))
    mask = np.zeros(len(y), dtype=bool)
    mask[held_out] = True
    return mask


def take_rows(X: pd.DataFrame | np.ndarray, rows: np.ndarray) -> pd.DataFrame | np.ndarray:
    """``X``'s rows at the positions ``rows`` (a copy), or ``X`` itself when ``rows`` are all of them in order."""
    if len(rows) == len(X) and np.array_equal(rows, np.arange(len(X))):
        return X
    return X.iloc[rows] if isinstance(X, pd.DataFrame) else X[rows]


def fit_grouped(make_estimator: Callable[[], object], X: pd.DataFrame | np.ndarray, y: np.ndarray,
                sample_weight: np.ndarray, groups: np.ndarray, seed: int, *, rows: np.ndarray | None = None,
                prior: np.ndarray | None = None):
    """Fit ``make_estimator()`` on the rows of ``X`` at the positions ``rows`` (None: all); when it early-stops,
    its ``eval_set`` is a study-grouped split of them.

    ``y``, ``sample_weight``, ``groups`` (study ids) have one entry per row of ``X``. The estimator's
    ``early_stopping_rounds`` and ``validation_fraction`` parameters decide: with early stopping,
    :func:`early_stopping_split` holds out whole studies, and the estimator trains on the rest. ``X`` is copied
    once: into the rows trained on and the rows stopped on. ``prior``: optional ``(n_rows, n_classes)``
    probabilities of every class index per row of ``X`` for the estimator to boost from (its ``init_proba``:
    the columns of the classes its rows hold, :func:`prior_of_classes`); predict with :func:`class_proba`'s
    ``prior`` then.
    """
    rows = np.arange(len(y)) if rows is None else np.asarray(rows)
    y, sample_weight, groups = y[rows], sample_weight[rows], groups[rows]
    init = None if prior is None else prior_of_classes(np.asarray(prior)[rows], np.unique(y))
    estimator = make_estimator()

    def fit_all(model):
        return model.fit(take_rows(X, rows), y, sample_weight=sample_weight,
                         **({} if init is None else {"init_proba": init}))

    if getattr(estimator, "early_stopping_rounds", None) is None:
        return fit_all(estimator)
    classes = set(np.unique(y).tolist())
    n_groups = len(np.unique(groups))
    if n_groups < max(2, round(1.0 / estimator.validation_fraction)):
        logger.warning("%d studies are too few for a study-grouped early-stopping split; fitting without early "
                       "stopping", n_groups)
        return fit_all(estimator.set_params(early_stopping_rounds=None))
    for attempt in range(_SPLIT_ATTEMPTS):
        held_out = early_stopping_split(groups, y, estimator.validation_fraction, seed + 7919 * attempt)
        if set(np.unique(y[~held_out]).tolist()) == classes:
            inits = {} if init is None else {"init_proba": init[~held_out], "eval_init_proba": init[held_out]}
            return estimator.fit(
                take_rows(X, rows[~held_out]), y[~held_out], sample_weight=sample_weight[~held_out],
                eval_set=(take_rows(X, rows[held_out]), y[held_out], sample_weight[held_out]), **inits,
            )
    # A class so rare that every study-grouped hold-out takes all of it: train on everything, stop at n_estimators.
    logger.warning("no early-stopping split keeps every class %s in training (%d studies); fitting without "
                   "early stopping", sorted(classes), len(np.unique(groups)))
    return fit_all(estimator.set_params(early_stopping_rounds=None))


def prior_of_classes(prior: np.ndarray, classes: np.ndarray) -> np.ndarray:
    """``(n_rows, n_classes)`` probabilities of every class index -> ``(n_rows, len(classes))``: the columns of
    the class indices ``classes`` (what an estimator fitted on them knows), renormalised per row."""
    kept = np.asarray(prior, dtype=np.float64)[:, np.asarray(classes, dtype=np.int64)]
    return kept / kept.sum(axis=1, keepdims=True)


def class_proba(estimator, X: pd.DataFrame, n_classes: int, prior: np.ndarray | None = None) -> np.ndarray:
    """``estimator.predict_proba(X)`` spread over all classes ``0..n_classes-1``: (n_rows, n_classes).

    For an estimator fitted on class indices; a class it never saw gets probability 0. ``prior``: the
    ``(n_rows, n_classes)`` probabilities it boosts from, for an estimator fitted with :func:`fit_grouped`'s
    ``prior``.
    """
    columns = np.asarray(estimator.classes_, dtype=np.int64)
    proba = np.zeros((len(X), n_classes))
    proba[:, columns] = (estimator.predict_proba(X) if prior is None
                         else estimator.predict_proba(X, init_proba=prior_of_classes(prior, columns)))
    return proba


def fold_scores(labels: pd.DataFrame, predictions: pd.DataFrame, folds: pd.Series) -> pd.DataFrame:
    """The metric of out-of-fold ``predictions`` on each fold's studies and on all studies.

    ``labels``: long labels; ``predictions``: long predictions covering every labelled row; ``folds``: fold per
    study_id (:func:`assign_study_folds`). Returns one row per fold plus a row ``"all"``, indexed by ``fold``,
    with the columns of :class:`radiospine.metrics.MetricResult` (``spinal, foraminal, subarticular,
    any_severe_spinal, score``).
    """
    rows = {}
    study_fold = labels["study_id"].map(folds)
    if study_fold.isna().any():
        raise ValueError(f"{study_fold.isna().sum()} label row(s) belong to studies without a fold")
    for k in sorted(folds.unique()):
        in_fold = (study_fold == k).to_numpy()
        rows[str(k)] = metrics.score(labels[in_fold], predictions).as_dict()
    rows["all"] = metrics.score(labels, predictions).as_dict()
    return pd.DataFrame.from_dict(rows, orient="index").rename_axis("fold")
