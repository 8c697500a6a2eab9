"""The competition metric (RSNA 2024 Lumbar Spine Degenerative Classification), with its four parts.

Exactly DESIGN.md section 2 (the Kaggle metric):

* each scored row has weight 1, 2 or 4 by its TRUE severity (normal_mild, moderate, severe);
* predicted probabilities are renormalised per row, and the probability given to the true class is
  clipped to ``[1e-15, 1 - 1e-15]``;
* a part's loss is the weighted log loss ``sum(w * -log p_true) / sum(w)`` (what ``sklearn.metrics.log_loss``
  with ``sample_weight`` computes) over
  1. ``spinal``: the spinal canal rows,
  2. ``foraminal``: left and right foraminal rows pooled,
  3. ``subarticular``: left and right subarticular rows pooled,
  4. ``any_severe_spinal``: one binary row per study: label 1 if any spinal level is Severe, prediction the
     largest renormalised ``severe`` probability over the study's spinal rows, weight the largest row weight
     among them (1, 2 or 4);
* the score is the plain mean of the four parts.

Rows whose label is missing are not scored; for ``any_severe_spinal`` a study's labelled spinal rows are
used, and a study with none is not scored there. Lower is better.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict, dataclass

import numpy as np
import pandas as pd

from radiospine import vocab
from radiospine.csvio import summarize_items
from radiospine.labels import LONG_LABEL_COLUMNS, labels_to_long, long_to_wide, target_grid
from radiospine.submission import (
    PREDICTION_KEY_COLUMNS,
    SubmissionError,
    normalise_probabilities,
    probability_problems,
)

#: Probabilities of the true class are clipped to ``[CLIP_EPSILON, 1 - CLIP_EPSILON]``.
CLIP_EPSILON = 1e-15
#: The four parts, in the order they are reported.
PART_NAMES: tuple[str, ...] = ("spinal", "foraminal", "subarticular", "any_severe_spinal")
_PART_OF_BASE_CONDITION: dict[str, str] = {
    vocab.SPINAL: "spinal",
    vocab.FORAMINAL: "foraminal",
    vocab.SUBARTICULAR: "subarticular",
}
_ROW_WEIGHTS = np.asarray(vocab.SEVERITY_WEIGHTS, dtype=np.float64)
_SEVERE = vocab.SEVERITIES.index("severe")


@dataclass(frozen=True)
class MetricResult:
    """The four part losses and their mean (``score``); lower is better."""

    spinal: float
    foraminal: float
    subarticular: float
    any_severe_spinal: float
    score: float

    def as_dict(self) -> dict[str, float]:
        """``{"spinal": ..., "foraminal": ..., "subarticular": ..., "any_severe_spinal": ..., "score": ...}``."""
        return asdict(self)


def weighted_log_loss(true_class_probability: np.ndarray, weights: np.ndarray) -> float:
    """``sum(w * -log p) / sum(w)`` with ``p`` clipped to ``[1e-15, 1 - 1e-15]``.

    Args:
        true_class_probability: ``(n_rows,)`` the (renormalised) probability given to each row's true class.
        weights: ``(n_rows,)`` positive row weights.
    """
    p = np.clip(np.asarray(true_class_probability, dtype=np.float64), CLIP_EPSILON, 1.0 - CLIP_EPSILON)
    w = np.asarray(weights, dtype=np.float64)
    return float(np.sum(w * -np.log(p)) / np.sum(w))


def as_long_labels(labels: pd.DataFrame) -> pd.DataFrame:
    """Long or wide labels (:mod:`radiospine.labels`) -> validated long labels, 25 rows per study."""
    if set(LONG_LABEL_COLUMNS) <= set(labels.columns):
        return labels_to_long(long_to_wide(labels))
    if set(vocab.TARGET_COLUMNS) | {"study_id"} <= set(labels.columns):
        return labels_to_long(labels)
    raise ValueError("labels must be long (study_id, condition, level, severity) or wide (study_id and the "
                     "25 target columns of train.csv)")


def _prediction_rows(predictions: pd.DataFrame, row_ids: list[str]) -> np.ndarray:
    """The renormalised ``(len(row_ids), 3)`` probabilities of ``row_ids``, checking the whole frame."""
    if "row_id" in predictions.columns:
        available = predictions["row_id"].astype(str).to_numpy(dtype=object)
    elif set(PREDICTION_KEY_COLUMNS) <= set(predictions.columns):
        available = np.array([vocab.make_row_id(s, c, lv) for s, c, lv in zip(
            predictions["study_id"], predictions["condition"], predictions["level"])], dtype=object)
    else:
        raise SubmissionError(["has neither a row_id column nor study_id, condition, level"], "predictions")
    missing_columns = [name for name in vocab.SEVERITIES if name not in predictions.columns]
    if missing_columns:
        raise SubmissionError([f"lacks column(s) {missing_columns}"], "predictions")
    values = predictions[list(vocab.SEVERITIES)].to_numpy(dtype=np.float64)
    problems = []
    counts = pd.Series(available).value_counts()
    repeated = counts[counts > 1]
    if len(repeated):
        problems.append(f"{len(repeated)} row id(s) appear more than once: {summarize_items(repeated.index)}")
    problems += probability_problems(values, available)
    if problems:
        raise SubmissionError(problems, "predictions")
    positions = pd.Index(available).get_indexer(row_ids)
    absent = positions < 0
    if absent.any():
        described = summarize_items(np.asarray(row_ids, dtype=object)[absent])
        raise SubmissionError([f"{absent.sum()} labelled row(s) have no prediction: {described}"], "predictions")
    return normalise_probabilities(values[positions])


def score(labels: pd.DataFrame, predictions: pd.DataFrame) -> MetricResult:
    """The competition metric of ``predictions`` against ``labels``.

    Args:
        labels: long or wide labels (see :mod:`radiospine.labels`); missing labels are not scored.
        predictions: ``row_id, normal_mild, moderate, severe`` (a submission) or long predictions
            (``study_id, condition, level`` instead of ``row_id``); rows need not sum to 1. Rows for
            studies or targets without a label are ignored.

    Raises:
        SubmissionError: a labelled row without a prediction, a row id twice, or probabilities NaN,
            infinite, negative or summing to zero; the message names the rows (first few and count).
        ValueError: labels that are malformed or hold no labelled row of one of the parts.
    """
    long = as_long_labels(labels)
    scored = long[long["severity"].notna()].reset_index(drop=True)
    row_ids = [vocab.make_row_id(s, c, lv) for s, c, lv in zip(scored["study_id"], scored["condition"],
                                                                scored["level"])]
    probabilities = _prediction_rows(predictions, row_ids)
    true_class = scored["severity"].to_numpy(dtype=np.int64)
    weights = _ROW_WEIGHTS[true_class]
    true_probability = probabilities[np.arange(len(scored)), true_class]
    base_condition = scored["condition"].map(lambda condition: vocab.split_condition(condition).base).to_numpy()

    parts: dict[str, float] = {}
    for base, name in _PART_OF_BASE_CONDITION.items():
        rows = base_condition == base
        if not rows.any():
            raise ValueError(f"the labels hold no labelled {name} row; the metric needs all four parts")
        parts[name] = weighted_log_loss(true_probability[rows], weights[rows])

    spinal = base_condition == vocab.SPINAL
    per_study = pd.DataFrame({
        "study_id": scored["study_id"].to_numpy()[spinal],
        "any_severe": true_class[spinal] == _SEVERE,
        "severe_probability": probabilities[spinal, _SEVERE],
        "weight": weights[spinal],
    }).groupby("study_id", sort=False).max()
    any_severe_probability = np.where(per_study["any_severe"], per_study["severe_probability"],
                                      1.0 - per_study["severe_probability"])
    parts["any_severe_spinal"] = weighted_log_loss(any_severe_probability, per_study["weight"].to_numpy())
    return MetricResult(**parts, score=float(np.mean([parts[name] for name in PART_NAMES])))


def weighted_prior(train_labels: pd.DataFrame, pseudo_count: float = 0.0) -> pd.DataFrame:
    """The reference baseline's probabilities per target: class frequency reweighted by 1/2/4, renormalised.

    For each target column, ``p_k = w_k * (n_k + pseudo_count) / sum_j w_j * (n_j + pseudo_count)`` with
    ``n_k`` the number of labelled rows of class ``k``; this constant minimises the weighted log loss of
    the column on the labels it is fitted on (pseudo_count 0 gives DESIGN.md's reference 0.7897 on the real
    training labels).

    Args:
        train_labels: long or wide labels; missing labels are not counted.
        pseudo_count: added to every class count (0 for the reference baseline; > 0 keeps unseen classes
            above zero probability).

    Returns:
        25 rows in :data:`vocab.TARGET_COLUMNS` order: ``condition, level, normal_mild, moderate, severe``.

    Raises:
        ValueError: a target column without any labelled row while ``pseudo_count`` is 0, or a negative
            ``pseudo_count``.
    """
    if not pseudo_count >= 0:
        raise ValueError(f"pseudo_count must be >= 0, got {pseudo_count}")
    long = as_long_labels(train_labels)
    labelled = long[long["severity"].notna()]
    column_index = pd.Index(vocab.TARGET_COLUMNS).get_indexer(
        [vocab.target_column(c, lv) for c, lv in zip(labelled["condition"], labelled["level"])])
    counts = np.zeros((len(vocab.TARGET_COLUMNS), len(vocab.SEVERITIES)), dtype=np.float64)
    np.add.at(counts, (column_index, labelled["severity"].to_numpy(dtype=np.int64)), 1.0)
    weighted = (counts + pseudo_count) * _ROW_WEIGHTS
    totals = weighted.sum(axis=1)
    if (totals <= 0).any():
        empty = [column for column, total in zip(vocab.TARGET_COLUMNS, totals) if total <= 0]
        raise ValueError(f"no labelled row for target column(s) {summarize_items(empty)}; "
                         f"pass pseudo_count > 0 to give them a prior")
    prior = pd.DataFrame(weighted / totals[:, None], columns=list(vocab.SEVERITIES))
    prior.insert(0, "level", [vocab.split_target_column(column)[1] for column in vocab.TARGET_COLUMNS])
    prior.insert(0, "condition", [vocab.split_target_column(column)[0] for column in vocab.TARGET_COLUMNS])
    return prior


def weighted_prior_predictions(train_labels: pd.DataFrame, study_ids: Iterable[object],
                               pseudo_count: float = 0.0) -> pd.DataFrame:
    """The reference baseline as long predictions for ``study_ids``: :func:`weighted_prior` repeated per study.

    Returns:
        ``study_id, condition, level, normal_mild, moderate, severe``, 25 rows per study in
        :func:`radiospine.labels.target_grid` order (ready for :func:`radiospine.submission.build_submission`).
    """
    prior = weighted_prior(train_labels, pseudo_count)
    grid = target_grid(study_ids)
    values = np.tile(prior[list(vocab.SEVERITIES)].to_numpy(), (len(grid) // len(prior), 1))
    return pd.concat([grid, pd.DataFrame(values, columns=list(vocab.SEVERITIES))], axis=1)
