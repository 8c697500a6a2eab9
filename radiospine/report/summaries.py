"""The numbers a report shows, computed from :class:`~radiospine.report.inputs.ReportInputs` (no plotting here).

* data set: series per description, label distribution per condition and level;
* cross-validation: weighted log loss per condition and level of the out-of-fold predictions;
* SHAP: global importance (mean |SHAP| per feature), family importance, one row's waterfall and its
  plain-language line.

Family importance is the mean over rows of ``|sum of the family's SHAP values|``: SHAP values add up, so a
family's summed values are its exact joint contribution to the margin (summing the members' mean |SHAP|
instead would count features that cancel each other twice).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from radiospine import metrics, vocab
from radiospine.report.feature_names import parse_feature_name
from radiospine.report.inputs import ConditionExplanation, ShapOutput

_KEYS = list(vocab.KEY_COLUMNS)
_WEIGHTS = np.asarray(vocab.SEVERITY_WEIGHTS, dtype=np.float64)


# --- data set and cross-validation ------------------------------------------------------------------------------


def label_distribution(labels: pd.DataFrame) -> pd.DataFrame:
    """Counts per condition and level: ``condition, level, normal_mild, moderate, severe, missing``, rows in
    vocabulary order (every condition and level, zero where absent)."""
    counts = {name: [] for name in (*vocab.SEVERITIES, "missing")}
    index = pd.MultiIndex.from_product([vocab.CONDITIONS, vocab.LEVELS], names=["condition", "level"])
    grouped = labels.assign(
        severity=labels["severity"].astype("Int64").astype("string").fillna("missing")
    ).groupby(["condition", "level", "severity"]).size()
    for k, name in enumerate(vocab.SEVERITIES):
        counts[name] = [int(grouped.get((c, lv, str(k)), 0)) for c, lv in index]
    counts["missing"] = [int(grouped.get((c, lv, "missing"), 0)) for c, lv in index]
    return pd.concat([index.to_frame(index=False), pd.DataFrame(counts)], axis=1)


def scored_rows(labels: pd.DataFrame, predictions: pd.DataFrame) -> tuple[pd.DataFrame, int]:
    """Labelled rows joined with their predictions.

    Returns ``(frame, n_without_prediction)``: ``frame`` has study_id, condition, level, severity (int 0/1/2),
    normal_mild, moderate, severe (renormalised) for every labelled row that has a prediction;
    ``n_without_prediction`` counts the labelled rows that have none.
    """
    labelled = labels[labels["severity"].notna()]
    joined = labelled.merge(predictions, on=_KEYS, how="left", validate="one_to_one")
    has_prediction = joined[list(vocab.SEVERITIES)].notna().all(axis=1)
    frame = joined[has_prediction].reset_index(drop=True)
    return frame.assign(severity=frame["severity"].astype(np.int64)), int((~has_prediction).sum())


def loss_by_condition_level(scored: pd.DataFrame) -> pd.DataFrame:
    """The metric's weighted log loss per condition and level of :func:`scored_rows` ``frame``.

    Returns ``condition, level, n, weighted_log_loss`` (NaN where no row is scored), vocabulary order.
    """
    rows = []
    for condition in vocab.CONDITIONS:
        for level in vocab.LEVELS:
            part = scored[(scored["condition"] == condition) & (scored["level"] == level)]
            loss = np.nan
            if len(part):
                proba = part[list(vocab.SEVERITIES)].to_numpy(dtype=np.float64)
                true = part["severity"].to_numpy()
                loss = metrics.weighted_log_loss(proba[np.arange(len(part)), true], _WEIGHTS[true])
            rows.append({"condition": condition, "level": level, "n": len(part), "weighted_log_loss": loss})
    return pd.DataFrame(rows)


# --- SHAP ---------------------------------------------------------------------------------------------------------


def global_importance(explanation: ConditionExplanation) -> pd.DataFrame:
    """Mean |SHAP| per feature and output.

    Returns one row per feature: ``feature`` (raw name), ``label``, ``family``, ``filter``, ``view`` and one column
    per output name holding its mean |SHAP| (margin units), sorted by the default output, largest first.
    """
    parsed = [parse_feature_name(name) for name in explanation.feature_names]
    table = pd.DataFrame({
        "feature": explanation.feature_names,
        "label": [p.label for p in parsed],
        "family": [p.family for p in parsed],
        "filter": [p.filter for p in parsed],
        "view": [p.view or "" for p in parsed],
    })
    for output in explanation.outputs:
        table[output.name] = np.abs(output.values).mean(axis=0) if len(output.values) else 0.0
    return table.sort_values(explanation.default_output, ascending=False, kind="stable").reset_index(drop=True)


def family_importance(explanation: ConditionExplanation, output: ShapOutput, by: str) -> pd.Series:
    """Mean over rows of ``|summed SHAP|`` per feature group, largest first.

    ``by``: ``"family"``, ``"filter"`` or ``"view"`` (see :mod:`radiospine.report.feature_names`); features
    without a view are grouped under ``"none"``.
    """
    if by not in ("family", "filter", "view"):
        raise ValueError(f"by must be 'family', 'filter' or 'view', got {by!r}")
    groups = np.array([getattr(parse_feature_name(name), by) or "none" for name in explanation.feature_names])
    result = {}
    for group in np.unique(groups):
        summed = output.values[:, groups == group].sum(axis=1)
        result[str(group)] = float(np.abs(summed).mean()) if len(summed) else 0.0
    return pd.Series(result, name=output.name).sort_values(ascending=False, kind="stable")


@dataclass(frozen=True)
class WaterfallStep:
    """One bar of a waterfall: the margin moves from ``start`` to ``start + shap``.

    ``left`` and ``width`` place the bar in percent of the chart's width (for the HTML chart)."""

    label: str
    value: str
    shap: float
    start: float
    left: float
    width: float


@dataclass(frozen=True)
class Waterfall:
    """One prediction's top contributions: the base value, the steps (largest |SHAP| first, then the rest
    summed), and the final margin (``base + sum of steps``), with the axis range ``low .. high``."""

    output: str
    towards: str
    base: float
    margin: float
    steps: tuple[WaterfallStep, ...]
    low: float
    high: float

    def position(self, value: float) -> float:
        """``value`` (margin units) as a percentage of the chart's width."""
        return 100.0 * (value - self.low) / (self.high - self.low)


def waterfall(explanation: ConditionExplanation, row: int, output: ShapOutput, top: int = 8) -> Waterfall:
    """The waterfall of row ``row`` (index into the explanation's rows) for ``output``: the ``top`` features by
    |SHAP|, then the others summed in one step."""
    shap = output.values[row]
    order = np.argsort(-np.abs(shap), kind="stable")
    shown, rest = order[:top], order[top:]
    entries = [(parse_feature_name(explanation.feature_names[j]).label,
                _format_value(explanation.feature_values[row, j]), float(shap[j])) for j in shown]
    if len(rest):
        entries.append((f"{len(rest)} other features", "", float(shap[rest].sum())))
    base = float(output.base[row])
    starts = base + np.concatenate([[0.0], np.cumsum([entry[2] for entry in entries])])
    margin = float(starts[-1])
    low, high = float(starts.min()), float(starts.max())
    pad = max(0.05 * (high - low), 1e-6)
    low, high = low - pad, high + pad
    steps = []
    for (label, value, contribution), start in zip(entries, starts[:-1]):
        left = 100.0 * (min(start, start + contribution) - low) / (high - low)
        width = 100.0 * abs(contribution) / (high - low)
        steps.append(WaterfallStep(label, value, contribution, float(start), left, width))
    return Waterfall(output.name, output.towards, base, margin, tuple(steps), low, high)


def finding_line(condition: str, level: str, probabilities: np.ndarray) -> str:
    """The most probable grade of one prediction in words, e.g. ``"L4/L5: moderate spinal canal stenosis (p = 0.62)"``.

    ``probabilities``: ``(3,)`` in :data:`radiospine.vocab.SEVERITIES` order.
    """
    best = int(np.argmax(probabilities))
    return (f"{vocab.level_to_human(level)}: {vocab.SEVERITY_LABELS[best].lower()} "
            f"{vocab.condition_to_human(condition).lower()} (p = {float(probabilities[best]):.2f})")


def plain_language(condition: str, level: str, probabilities: np.ndarray,
                   contribution: tuple[ConditionExplanation, int, ShapOutput] | None) -> str:
    """One line about one prediction, for instance ``"L4/L5 spinal canal stenosis: Moderate 0.62, Severe 0.21;
    the largest push towards Severe: radiomics, Sagittal T2/STIR: original glcm Contrast (+0.41)"``.

    ``probabilities``: ``(3,)`` in :data:`radiospine.vocab.SEVERITIES` order. ``contribution``: the row's
    explanation, its row index there and the explained output, or None when the row has no SHAP values.
    """
    where = f"{vocab.level_to_human(level)} {vocab.condition_to_human(condition).lower()}"
    shares = ", ".join(f"{name} {p:.2f}" for name, p in zip(vocab.SEVERITY_LABELS[1:], probabilities[1:]))
    line = f"{where}: {shares}"
    if contribution is None:
        return f"{line}; no SHAP values for this row"
    explanation, row, output = contribution
    shap = output.values[row]
    if not len(shap) or not np.any(shap):
        return f"{line}; no feature moves the prediction"
    strongest = int(np.argmax(shap))
    if shap[strongest] > 0:
        label = parse_feature_name(explanation.feature_names[strongest]).label
        return f"{line}; the largest push towards {output.towards}: {label} ({shap[strongest]:+.2f})"
    strongest = int(np.argmin(shap))
    label = parse_feature_name(explanation.feature_names[strongest]).label
    return (f"{line}; no feature pushes towards {output.towards}, "
            f"the largest push away: {label} ({shap[strongest]:+.2f})")


def _format_value(value: float) -> str:
    return "missing" if np.isnan(value) else f"{value:.4g}"
