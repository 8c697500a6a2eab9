"""The competition metric (RSNA 2024 Lumbar Spine Degenerative Classification), with its four parts.

:func:`score` computes what Kaggle's scoring code (``rsna_lumbar_metric.py``) computes, on every input the
leaderboard accepts, with ``sklearn.metrics.log_loss`` as it behaved in the competition's environment
(scikit-learn 1.2.2, Kaggle's image in 2024):

* each scored row has weight 1, 2 or 4 by its TRUE severity (normal_mild, moderate, severe);
* ``spinal`` (spinal canal rows), ``foraminal`` (left and right foraminal rows pooled), ``subarticular`` (left
  and right subarticular rows pooled): ``log_loss(one_hot, p, sample_weight=w)``: every one of the row's three
  submitted values is clipped to ``[eps, 1 - eps]`` (``eps = np.finfo(np.float64).eps``, 2.2e-16), the row is
  divided by the sum of its clipped values, and the part is ``sum(w * -ln p_true) / sum(w)``. A row that does
  not sum to 1 is thus renormalised inside the part, after clipping (``(2, 1, 1)`` becomes ``(1/3, 1/3, 1/3)``,
  not ``(1/2, 1/4, 1/4)``; ``(0, 0, 0)`` becomes ``(1/3, 1/3, 1/3)``);
* ``any_severe_spinal``: one binary row per study: label 1 if any of its scored spinal rows is Severe; the
  prediction is the largest RAW submitted ``severe`` over those rows (not renormalised: a row
  ``(0.1, 0.1, 2.0)`` gives 2.0), clipped to ``[eps, 1 - eps]`` by ``log_loss``; weight the largest row weight
  among them (1, 2 or 4); the binary weighted log loss;
* the score is the plain mean of the four parts. Lower is better.

Predictions holding NaN, infinite or negative values are refused (:class:`SubmissionError`, naming the rows), as
the competition's code refuses them. ``renormalise=True`` is the tolerant variant: every row is divided by its
sum first (rows summing to 0 are then refused), which changes the score of a file whose rows do not sum to 1
and so is not the leaderboard's number for it.

Rows whose label is missing are not scored; for ``any_severe_spinal`` a study's labelled spinal rows are used,
and a study with none is not scored there. One deliberate difference: on labels without any Severe spinal
study (a small fold), sklearn's binary ``log_loss`` raises; here the part is computed all the same (what
``log_loss(..., labels=[0, 1])`` gives).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass

import numpy as np
import pandas as pd

from radiospine import vocab
from radiospine.csvio import summarize_items
from radiospine.errors import DataError, SubmissionError
from radiospine.labels import LONG_LABEL_COLUMNS, labels_to_long, long_to_wide, target_grid
from radiospine.submission import (
    ROW_SUM_TOLERANCE,
    normalise_probabilities,
    probability_problems,
)
from radiospine.task import Target, Task

#: sklearn's ``log_loss`` clips float64 probabilities to ``[CLIP_EPSILON, 1 - CLIP_EPSILON]``: the machine
#: epsilon of float64 (its ``eps="auto"``, the default from scikit-learn 1.2; 1e-15 before).
CLIP_EPSILON = float(np.finfo(np.float64).eps)
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
    """``sum(w * -log p) / sum(w)`` with ``p`` clipped to ``[CLIP_EPSILON, 1 - CLIP_EPSILON]``: a part of the
    metric for rows that sum to 1 (the models' probabilities), to within the renormalisation of clipped rows.

    Args:
        true_class_probability: ``(n_rows,)`` the probability given to each row's true class.
        weights: ``(n_rows,)`` positive row weights.
    """
    p = np.clip(np.asarray(true_class_probability, dtype=np.float64), CLIP_EPSILON, 1.0 - CLIP_EPSILON)
    w = np.asarray(weights, dtype=np.float64)
    return float(np.sum(w * -np.log(p)) / np.sum(w))


def sklearn_log_loss(probabilities: np.ndarray, true_class: np.ndarray, weights: np.ndarray) -> float:
    """``sklearn.metrics.log_loss(one_hot(true_class), probabilities, sample_weight=weights)`` as scikit-learn
    1.2.2 computes it: every value clipped to ``[CLIP_EPSILON, 1 - CLIP_EPSILON]``, each row divided by its
    clipped sum, then ``sum(w * -ln p_true) / sum(w)``.

    Args:
        probabilities: ``(n_rows, n_classes)`` finite, non-negative values (rows need not sum to 1).
        true_class: ``(n_rows,)`` each row's class index.
        weights: ``(n_rows,)`` positive row weights.
    """
    clipped = np.clip(np.asarray(probabilities, dtype=np.float64), CLIP_EPSILON, 1.0 - CLIP_EPSILON)
    rows = np.arange(len(clipped))
    true_probability = clipped[rows, np.asarray(true_class, dtype=np.int64)] / clipped.sum(axis=1)
    w = np.asarray(weights, dtype=np.float64)
    return float(np.sum(w * -np.log(true_probability)) / np.sum(w))


def sklearn_binary_log_loss(positive_probability: np.ndarray, label: np.ndarray, weights: np.ndarray) -> float:
    """``sklearn.metrics.log_loss(label, positive_probability, sample_weight=weights)`` for a 1-D prediction, as
    scikit-learn 1.2.2 computes it: ``p`` clipped to ``[CLIP_EPSILON, 1 - CLIP_EPSILON]``, the rows ``(1 - p, p)``,
    then :func:`sklearn_log_loss`."""
    p = np.clip(np.asarray(positive_probability, dtype=np.float64), CLIP_EPSILON, 1.0 - CLIP_EPSILON)
    return sklearn_log_loss(np.column_stack([1.0 - p, p]), np.asarray(label, dtype=np.int64), weights)


def as_long_labels(labels: pd.DataFrame) -> pd.DataFrame:
    """Long or wide labels (:mod:`radiospine.labels`) -> validated long labels, 25 rows per study."""
    if set(LONG_LABEL_COLUMNS) <= set(labels.columns):
        return labels_to_long(long_to_wide(labels))
    if set(vocab.TARGET_COLUMNS) | {"study_id"} <= set(labels.columns):
        return labels_to_long(labels)
    raise ValueError("labels must be long (study_id, condition, level, severity) or wide (study_id and the "
                     "25 target columns of train.csv)")


def _row_names(predictions: pd.DataFrame) -> np.ndarray:
    """Each prediction row's ``row_id`` (given, or made from ``study_id, condition, level``)."""
    if "row_id" in predictions.columns:
        return predictions["row_id"].astype(str).to_numpy(dtype=object)
    if set(vocab.KEY_COLUMNS) <= set(predictions.columns):
        return np.array([vocab.make_row_id(s, c, lv) for s, c, lv in zip(
            predictions["study_id"], predictions["condition"], predictions["level"])], dtype=object)
    raise SubmissionError(["has neither a row_id column nor study_id, condition, level"], "predictions")


def _probability_values(predictions: pd.DataFrame) -> np.ndarray:
    missing_columns = [name for name in vocab.SEVERITIES if name not in predictions.columns]
    if missing_columns:
        raise SubmissionError([f"lacks column(s) {missing_columns}"], "predictions")
    return predictions[list(vocab.SEVERITIES)].to_numpy(dtype=np.float64)


def unnormalised_rows(predictions: pd.DataFrame) -> list[str]:
    """The row ids of ``predictions`` (a submission or long predictions) whose values do not sum to 1 within
    :data:`radiospine.submission.ROW_SUM_TOLERANCE`, in file order (rows with NaN or infinite values included)."""
    sums = _probability_values(predictions).sum(axis=1)
    off = ~(np.abs(sums - 1.0) <= ROW_SUM_TOLERANCE)
    return list(_row_names(predictions)[off])


def _prediction_rows(predictions: pd.DataFrame, row_ids: list[str], renormalise: bool) -> np.ndarray:
    """The ``(len(row_ids), 3)`` values of ``row_ids`` as submitted (``renormalise``: divided by their row sums),
    checking the whole frame."""
    available = _row_names(predictions)
    values = _probability_values(predictions)
    problems = []
    counts = pd.Series(available).value_counts()
    repeated = counts[counts > 1]
    if len(repeated):
        problems.append(f"{len(repeated)} row id(s) appear more than once: {summarize_items(repeated.index)}")
    problems += probability_problems(values, available, row_sums="positive" if renormalise else "any")
    if problems:
        raise SubmissionError(problems, "predictions")
    positions = pd.Index(available).get_indexer(row_ids)
    absent = positions < 0
    if absent.any():
        described = summarize_items(np.asarray(row_ids, dtype=object)[absent])
        raise SubmissionError([f"{absent.sum()} labelled row(s) have no prediction: {described}"], "predictions")
    chosen = values[positions]
    return normalise_probabilities(chosen) if renormalise else chosen


def score(labels: pd.DataFrame, predictions: pd.DataFrame, *, renormalise: bool = False) -> MetricResult:
    """The competition metric of ``predictions`` against ``labels`` (see the module docstring).

    Args:
        labels: long or wide labels (see :mod:`radiospine.labels`); missing labels are not scored.
        predictions: ``row_id, normal_mild, moderate, severe`` (a submission) or long predictions
            (``study_id, condition, level`` instead of ``row_id``). Rows need not sum to 1: they are scored
            as the competition scores them. Rows for studies or targets without a label are ignored.
        renormalise: divide every row by its sum before scoring (the tolerant variant; not the leaderboard's
            number for rows that do not sum to 1).

    Raises:
        SubmissionError: a labelled row without a prediction, a row id twice, or values NaN, infinite or
            negative (with ``renormalise``, also rows summing to zero); the message names the rows (first few
            and count).
        ValueError: labels that are malformed or hold no labelled row of one of the parts.
    """
    long = as_long_labels(labels)
    scored = long[long["severity"].notna()].reset_index(drop=True)
    row_ids = [vocab.make_row_id(s, c, lv) for s, c, lv in zip(scored["study_id"], scored["condition"],
                                                                scored["level"])]
    values = _prediction_rows(predictions, row_ids, renormalise)
    true_class = scored["severity"].to_numpy(dtype=np.int64)
    weights = _ROW_WEIGHTS[true_class]
    base_condition = scored["condition"].map(lambda condition: vocab.split_condition(condition).base).to_numpy()

    parts: dict[str, float] = {}
    for base, name in _PART_OF_BASE_CONDITION.items():
        rows = base_condition == base
        if not rows.any():
            raise DataError(f"the labels hold no labelled {name} row; the metric needs all four parts")
        parts[name] = sklearn_log_loss(values[rows], true_class[rows], weights[rows])

    spinal = base_condition == vocab.SPINAL
    per_study = pd.DataFrame({
        "study_id": scored["study_id"].to_numpy()[spinal],
        "any_severe": true_class[spinal] == _SEVERE,
        "severe": values[spinal, _SEVERE],
        "weight": weights[spinal],
    }).groupby("study_id", sort=False).max()
    parts["any_severe_spinal"] = sklearn_binary_log_loss(per_study["severe"].to_numpy(),
                                                         per_study["any_severe"].to_numpy(),
                                                         per_study["weight"].to_numpy())
    return MetricResult(**parts, score=float(np.mean([parts[name] for name in PART_NAMES])))


def weighted_prior(train_labels: pd.DataFrame, pseudo_count: float = 0.0) -> pd.DataFrame:
    """The reference baseline's probabilities per target: class frequency reweighted by 1/2/4, renormalised.

    For each target column, ``p_k = w_k * (n_k + pseudo_count) / sum_j w_j * (n_j + pseudo_count)`` with
    ``n_k`` the number of labelled rows of class ``k``; this constant minimises the weighted log loss of
    the column on the labels it is fitted on (pseudo_count 0 gives the reference 0.7897 on the real
    training labels, docs/design.md section 8).

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
    prior = pd.DataFrame(_prior_from_counts(counts, _ROW_WEIGHTS, pseudo_count, vocab.TARGET_COLUMNS),
                         columns=list(vocab.SEVERITIES))
    prior.insert(0, "level", [vocab.split_target_column(column)[1] for column in vocab.TARGET_COLUMNS])
    prior.insert(0, "condition", [vocab.split_target_column(column)[0] for column in vocab.TARGET_COLUMNS])
    return prior


def _prior_from_counts(counts: np.ndarray, weights: np.ndarray, pseudo_count: float, names: Iterable[str]
                       ) -> np.ndarray:
    """``(n, K)`` class counts -> ``(n, K)`` priors ``w_k (n_k + pseudo_count) / sum_j w_j (n_j + pseudo_count)``.

    The constant that minimises the weighted log loss of each row's labels; ``names`` (n,) name the rows in the
    error raised when one has no count and ``pseudo_count`` is 0.
    """
    weighted = (counts + pseudo_count) * weights
    totals = weighted.sum(axis=1)
    if (totals <= 0).any():
        empty = [name for name, total in zip(names, totals) if total <= 0]
        raise DataError(f"no labelled row for target column(s) {summarize_items(empty)}; "
                        f"pass pseudo_count > 0 to give them a prior")
    return weighted / totals[:, None]


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


# --- per-target metrics (tasks other than rsna2024, radiospine.task) ------------------------------------------

#: The figures :func:`target_metrics` reports, in order (``qwk`` for ordinal targets, ``auc`` for binary ones).
TARGET_METRIC_NAMES: tuple[str, ...] = ("weighted_log_loss", "qwk", "auc", "accuracy")


def level_prior(levels: np.ndarray, grades: np.ndarray, target: Target, level_names: Sequence[str],
                pseudo_count: float = 1.0) -> np.ndarray:
    """The level-only prior of one target: per level, the grade frequencies reweighted by the target's weights.

    ``p_k = w_k (n_k + pseudo_count) / sum_j w_j (n_j + pseudo_count)`` (the RSNA task's :func:`weighted_prior`,
    per level), the constant per level that minimises the weighted log loss on the rows it is fitted on.

    Args:
        levels: ``(n,)`` level name of each labelled row; grades: ``(n,)`` grade index ``0 .. K-1``.
        target: its ``weights`` and ``n_grades`` K.
        level_names: the levels to return, in order.

    Returns:
        ``(len(level_names), K)`` probabilities, rows summing to 1.
    """
    if not pseudo_count >= 0:
        raise ValueError(f"pseudo_count must be >= 0, got {pseudo_count}")
    row = pd.Index(list(level_names)).get_indexer(np.asarray(levels))
    if (row < 0).any():
        raise ValueError(f"unknown level(s) {sorted(set(np.asarray(levels)[row < 0].tolist()))}")
    counts = np.zeros((len(level_names), target.n_grades))
    np.add.at(counts, (row, np.asarray(grades, dtype=np.int64)), 1.0)
    return _prior_from_counts(counts, np.asarray(target.weights, dtype=np.float64), pseudo_count,
                              [f"{target.name}_{level}" for level in level_names])


def quadratic_weighted_kappa(true_grade: np.ndarray, predicted_grade: np.ndarray, n_grades: int) -> float:
    """Cohen's kappa with quadratic weights over grades ``0 .. n_grades-1`` (``sklearn.metrics.cohen_kappa_score``);
    0 when it is undefined (every row and prediction the same grade)."""
    from sklearn.metrics import cohen_kappa_score

    true_grade, predicted_grade = np.asarray(true_grade, np.int64), np.asarray(predicted_grade, np.int64)
    if len(np.unique(np.concatenate([true_grade, predicted_grade]))) < 2:
        return 0.0
    return float(cohen_kappa_score(true_grade, predicted_grade, weights="quadratic", labels=list(range(n_grades))))


def target_metrics(grades: np.ndarray, probabilities: np.ndarray, target: Target) -> dict[str, float]:
    """One target's figures on labelled rows: weighted log loss, QWK (ordinal) or ROC AUC (binary), accuracy.

    Args:
        grades: ``(n,)`` true grade indices ``0 .. K-1``.
        probabilities: ``(n, K)`` predicted probabilities (rows summing to 1; clipped and renormalised as
            :func:`sklearn_log_loss` does).
        target: its scale, ``n_grades`` and the row weight per true grade.

    Returns:
        ``weighted_log_loss`` (``sum(w * -ln p_true) / sum(w)``, ``w`` = ``target.weights[true grade]``),
        ``qwk`` (:func:`quadratic_weighted_kappa` of the most probable grade; NaN for a binary target), ``auc``
        (``sklearn.metrics.roc_auc_score`` of ``p[:, 1]``; NaN for an ordinal target or when only one grade
        occurs), ``accuracy`` (share of rows whose most probable grade is the true one).
    """
    from sklearn.metrics import roc_auc_score

    grades = np.asarray(grades, dtype=np.int64)
    probabilities = np.asarray(probabilities, dtype=np.float64)
    if probabilities.shape != (len(grades), target.n_grades):
        raise ValueError(f"{target.name}: probabilities of shape {probabilities.shape}, expected "
                         f"({len(grades)}, {target.n_grades})")
    if len(grades) == 0 or grades.min() < 0 or grades.max() >= target.n_grades:
        raise ValueError(f"{target.name}: grades must be 0..{target.n_grades - 1}, got {sorted(set(grades))}")
    weights = np.asarray(target.weights, dtype=np.float64)[grades]
    predicted = np.argmax(probabilities, axis=1)
    binary = target.scale == "binary"
    return {
        "weighted_log_loss": sklearn_log_loss(probabilities, grades, weights),
        "qwk": float("nan") if binary else quadratic_weighted_kappa(grades, predicted, target.n_grades),
        "auc": (float(roc_auc_score(grades, probabilities[:, 1])) if binary and len(np.unique(grades)) == 2
                else float("nan")),
        "accuracy": float(np.mean(predicted == grades)),
    }


def score_targets(labels: pd.DataFrame, predictions: pd.DataFrame, task: Task,
                  baseline: pd.DataFrame | None = None) -> pd.DataFrame:
    """Every target's :func:`target_metrics` on its labelled rows, beside a baseline's (the level-only prior).

    Args:
        labels: long task labels (:func:`radiospine.labels.load_task_labels`); rows with ``<NA>`` grade are not
            scored.
        predictions: long predictions: ``study_id, target, level`` and ``task.probability_columns``, covering
            every labelled row.
        task: the task (its targets' scales, grades and weights).
        baseline: predictions of the same layout to report beside (e.g. the out-of-fold level-only prior);
            ``None``: the level-only prior fitted on ``labels`` themselves (:func:`level_prior`, pseudo count
            1), a baseline that has seen the answers.

    Returns:
        One row per target with labelled rows, in task order: ``target, scale, n``, each figure of
        :data:`TARGET_METRIC_NAMES` and its ``prior_`` twin, and ``log_loss_reduction``
        (``1 - weighted_log_loss / prior_weighted_log_loss``).

    Raises:
        SubmissionError: a labelled row without a prediction, or a prediction with NaN, negative or infinite
            values in its target's columns (naming the rows).
    """
    key = ["study_id", "target", "level"]
    scored = labels[labels["grade"].notna()]
    rows = []
    for target in task.targets:
        mine = scored[scored["target"] == target.name]
        if mine.empty:
            continue
        columns = list(task.probability_columns[:target.n_grades])
        probabilities = {}
        for name, frame in (("model", predictions), ("prior", baseline)):
            if frame is None:
                prior = level_prior(mine["level"].to_numpy(), mine["grade"].to_numpy(np.int64), target, task.levels)
                probabilities[name] = prior[pd.Index(task.levels).get_indexer(mine["level"])]
                continue
            merged = mine[key].merge(frame[frame["target"] == target.name][[*key, *columns]], on=key, how="left",
                                     validate="one_to_one")
            values = merged[columns].to_numpy(dtype=np.float64)
            names = [f"{r.study_id}_{r.target}_{r.level}" for r in merged[key].itertuples(index=False)]
            problems = [n for n, row in zip(names, values) if not np.all(np.isfinite(row)) or (row < 0).any()]
            if problems:
                raise SubmissionError([f"{len(problems)} labelled row(s) without finite, non-negative "
                                       f"{target.name} probabilities: {summarize_items(problems)}"],
                                      source=f"{name} predictions")
            probabilities[name] = values
        grades = mine["grade"].to_numpy(np.int64)
        model, prior = (target_metrics(grades, probabilities[name], target) for name in ("model", "prior"))
        rows.append({"target": target.name, "scale": target.scale, "n": len(mine), **model,
                     **{f"prior_{metric}": value for metric, value in prior.items()},
                     "log_loss_reduction": 1.0 - model["weighted_log_loss"] / prior["weighted_log_loss"]})
    return pd.DataFrame(rows)
