"""What a report is made of: :class:`ReportInputs`, the contract between the run's artifacts and the HTML.

The pipeline fills these from real artifacts (feature table, trained models, predictions, DICOM catalog); the
report library (:func:`radiospine.report.render.render_report`) turns them into pages and never reads a work
folder itself. Every frame and array is validated when the dataclass is built, with messages naming the field.

Frames
------
``series``           study_id, series_id, series_description (strings straight from CSVs / DICOM headers:
                     they may hold anything, the templates escape them)
``labels``           long labels of the labelled studies (:mod:`radiospine.labels`): study_id, condition, level,
                     severity (0/1/2 or ``<NA>``)
``oof_predictions``  out-of-fold long predictions of the labelled studies: study_id, condition, level,
                     normal_mild, moderate, severe (rows renormalised before use)
``cv_scores``        :func:`radiospine.models.cv.fold_scores`: one row per fold plus ``"all"``, indexed by fold,
                     columns :data:`radiospine.metrics.PART_NAMES` and ``score``
``predictions``      the shown split's final long predictions; every study in it gets a page

SHAP values
-----------
One :class:`ConditionExplanation` per model group (``"spinal_canal_stenosis"``, ``"neural_foraminal_narrowing"``,
...): the design matrix the group's model saw, the keys of its rows, and one or more :class:`ShapOutput` (a raw
model output, in margin units, with its exact TreeSHAP values). :meth:`ConditionExplanation.from_contributions`
builds one from the ``(n_rows, n_features + 1, n_outputs)`` array of
:meth:`radiospine.models.ordinal.OrdinalGBMClassifier.shap_values` (LightGBM ``pred_contrib`` / XGBoost
``pred_contribs``), whose last feature slot is the bias.

Thumbnails
----------
``thumbnails(study_id, condition, level)`` returns the ROI views of a row as :class:`Thumbnail` s (2D image in
[0, 1] and its mask); :meth:`Thumbnail.from_crop` takes the centre slice of a
:class:`radiospine.roi.types.RoiCrop`.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from radiospine import metrics, vocab
from radiospine.csvio import summarize_items
from radiospine.roi.types import RoiCrop
from radiospine.submission import (
    LONG_PREDICTION_COLUMNS,
    normalise_probabilities,
    probability_problems,
)

#: Model group names become file names (``conditions/<group>.html``); they must match this.
GROUP_NAME_PATTERN = re.compile(r"^[A-Za-z0-9_.-]+$")
SERIES_COLUMNS: tuple[str, ...] = ("study_id", "series_id", "series_description")
LABEL_COLUMNS: tuple[str, ...] = (*vocab.KEY_COLUMNS, "severity")


@dataclass(frozen=True, eq=False)
class Thumbnail:
    """One ROI view of a (study, condition, level) row.

    Attributes:
        view: the view's name (``"sagittal_t2"``; any text, shown escaped).
        image: ``(row, col)`` float, intensities in [0, 1] (values outside are clipped when drawn).
        mask: ``(row, col)`` uint8, non-zero inside the ROI's mask, or None; its outline is drawn.
        caption: a short text under the image (series, slice, where the centre came from).
    """

    view: str
    image: np.ndarray
    mask: np.ndarray | None = None
    caption: str = ""

    def __post_init__(self) -> None:
        if self.image.ndim != 2:
            raise ValueError(f"Thumbnail {self.view!r}: image must be 2D (row, col), got shape {self.image.shape}")
        if self.mask is not None and self.mask.shape != self.image.shape:
            raise ValueError(f"Thumbnail {self.view!r}: mask shape {self.mask.shape} differs from the image's "
                             f"{self.image.shape}")

    @classmethod
    def from_crop(cls, crop: RoiCrop) -> Thumbnail:
        """The centre slice of ``crop`` (its middle slice) with its mask; the caption names series, slice and
        where the ROI centre came from."""
        middle = crop.image.shape[0] // 2
        roi = crop.roi
        centre_slice = roi.slice_indices[len(roi.slice_indices) // 2] if roi.slice_indices else middle
        return cls(view=roi.view, image=crop.image[middle], mask=crop.mask[middle],
                   caption=f"series {roi.series_id}, slice {centre_slice}, centre from {roi.source}")


#: ``thumbnails(study_id, condition, level) -> thumbnails`` (an empty sequence when the row has no crop).
ThumbnailSource = Callable[[int, str, str], Sequence[Thumbnail]]


@dataclass(frozen=True, eq=False)
class ShapOutput:
    """One raw output of a model with its exact TreeSHAP values.

    Attributes:
        name: what the output is, with its units (``"lightgbm ordinal: log-odds of P(severity > moderate)"``).
        towards: what a positive contribution pushes the prediction towards (``"Severe"``).
        values: ``(n_rows, n_features)`` SHAP values in margin units, rows and features as in the explanation.
        base: ``(n_rows,)`` the bias (the model's expected margin); ``base + values.sum(1)`` is the raw margin.
    """

    name: str
    towards: str
    values: np.ndarray
    base: np.ndarray

    @property
    def margin(self) -> np.ndarray:
        """``(n_rows,)`` the raw margin the SHAP values add up to."""
        return self.base + self.values.sum(axis=1)


@dataclass(frozen=True, eq=False)
class ConditionExplanation:
    """The SHAP values of one model group on its rows.

    Attributes:
        group: model group name (:attr:`radiospine.models.condition_models.ModelGroup.name`); a file name.
        model: a description of the explained model (``"lightgbm ordinal member, blend weight 0.55"``).
        feature_names: ``(n_features,)`` the design matrix's columns (``radiomics__sagittal_t2__...``).
        feature_values: ``(n_rows, n_features)`` float, NaN where missing.
        row_keys: ``(n_rows,)`` frame of study_id (int), condition, level aligned with the rows.
        outputs: the explained outputs, at least one; all share rows and features.
        default_output: the name of the output shown by default (per-study waterfalls, beeswarm).
    """

    group: str
    model: str
    feature_names: tuple[str, ...]
    feature_values: np.ndarray
    row_keys: pd.DataFrame
    outputs: tuple[ShapOutput, ...]
    default_output: str

    def __post_init__(self) -> None:
        where = f"ConditionExplanation {self.group!r}"
        if not GROUP_NAME_PATTERN.match(self.group):
            raise ValueError(f"{where}: the group name must match {GROUP_NAME_PATTERN.pattern} (it names a file)")
        object.__setattr__(self, "feature_names", tuple(str(name) for name in self.feature_names))
        values = np.asarray(self.feature_values, dtype=np.float64)
        object.__setattr__(self, "feature_values", values)
        n_features = len(self.feature_names)
        if len(set(self.feature_names)) != n_features:
            raise ValueError(f"{where}: feature names repeat")
        if values.ndim != 2 or values.shape[1] != n_features:
            raise ValueError(f"{where}: feature_values must be (n_rows, {n_features}), got {values.shape}")
        n_rows = values.shape[0]
        keys = _key_frame(self.row_keys, f"{where}.row_keys")
        if len(keys) != n_rows:
            raise ValueError(f"{where}: row_keys has {len(keys)} rows, feature_values {n_rows}")
        repeated = keys.duplicated()
        if repeated.any():
            raise ValueError(f"{where}: row_keys repeat (study_id, condition, level): "
                             f"{summarize_items(keys[repeated].itertuples(index=False, name=None))}")
        object.__setattr__(self, "row_keys", keys)
        if not self.outputs:
            raise ValueError(f"{where}: needs at least one output")
        names = [output.name for output in self.outputs]
        if len(set(names)) != len(names):
            raise ValueError(f"{where}: output names repeat: {names}")
        if self.default_output not in names:
            raise ValueError(f"{where}: default_output {self.default_output!r} is not one of {names}")
        for output in self.outputs:
            shap = np.asarray(output.values, dtype=np.float64)
            base = np.asarray(output.base, dtype=np.float64)
            if shap.shape != (n_rows, n_features) or base.shape != (n_rows,):
                raise ValueError(f"{where}: output {output.name!r} has SHAP values {shap.shape} and base "
                                 f"{base.shape}; expected ({n_rows}, {n_features}) and ({n_rows},)")
            if not (np.isfinite(shap).all() and np.isfinite(base).all()):
                raise ValueError(f"{where}: output {output.name!r} holds NaN or infinite SHAP values")
            object.__setattr__(output, "values", shap)
            object.__setattr__(output, "base", base)

    @classmethod
    def from_contributions(cls, group: str, model: str, feature_names: Sequence[str], feature_values: Any,
                           row_keys: pd.DataFrame, contributions: np.ndarray,
                           outputs: Sequence[tuple[str, str]], default_output: str | None = None,
                           ) -> ConditionExplanation:
        """Build from a booster's contribution array.

        Args:
            contributions: ``(n_rows, n_features + 1, n_outputs)`` as returned by
                :meth:`radiospine.models.ordinal.OrdinalGBMClassifier.shap_values`; slot ``n_features`` of axis
                1 is the bias.
            outputs: ``(name, towards)`` per output, in the order of axis 2 (see :class:`ShapOutput`).
            default_output: the name of the output shown by default; None: the last one (the ordinal model's
                ``P(y > moderate)``, "towards Severe").
        """
        contributions = np.asarray(contributions, dtype=np.float64)
        n_features = len(feature_names)
        if contributions.ndim != 3 or contributions.shape[1] != n_features + 1:
            raise ValueError(f"contributions must be (n_rows, {n_features + 1}, n_outputs) with the bias last, "
                             f"got {contributions.shape}")
        if contributions.shape[2] != len(outputs):
            raise ValueError(f"contributions hold {contributions.shape[2]} outputs, {len(outputs)} were named")
        shap_outputs = tuple(
            ShapOutput(name=name, towards=towards, values=contributions[:, :n_features, m],
                       base=contributions[:, n_features, m])
            for m, (name, towards) in enumerate(outputs)
        )
        return cls(group=group, model=model, feature_names=tuple(feature_names),
                   feature_values=np.asarray(feature_values, dtype=np.float64), row_keys=row_keys,
                   outputs=shap_outputs, default_output=default_output or outputs[-1][0])

    def output(self, name: str | None = None) -> ShapOutput:
        """The output called ``name`` (None: the default one)."""
        name = self.default_output if name is None else name
        for output in self.outputs:
            if output.name == name:
                return output
        raise KeyError(f"{self.group}: no output {name!r}; outputs are {[o.name for o in self.outputs]}")


@dataclass(frozen=True, eq=False)
class ReportInputs:
    """Everything one report shows (see the module docstring for the frames' columns).

    Attributes:
        title: the report's title.
        series: the shown studies' series (descriptions shown escaped).
        labels: long labels of the labelled (training) studies.
        oof_predictions: out-of-fold long predictions of the labelled studies.
        cv_scores: the metric per fold and ``"all"`` (index: fold).
        predictions: final long predictions of the shown split; one page per study in it.
        explanations: model group name -> its SHAP values.
        thumbnails: ROI views per (study_id, condition, level), or None when no crops are at hand.
        model_card: the trained models' card (JSON object).
        provenance: versions, config hashes, dates, inputs of the run (JSON object).
        dataset_facts: extra facts about the data set shown on the overview (data folder, split, ...).
    """

    title: str
    series: pd.DataFrame
    labels: pd.DataFrame
    oof_predictions: pd.DataFrame
    cv_scores: pd.DataFrame
    predictions: pd.DataFrame
    explanations: Mapping[str, ConditionExplanation]
    thumbnails: ThumbnailSource | None
    model_card: Mapping[str, Any]
    provenance: Mapping[str, Any]
    dataset_facts: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        series = _require(self.series, SERIES_COLUMNS, "ReportInputs.series")
        series = series.assign(study_id=_integer_ids(series["study_id"], "ReportInputs.series.study_id"),
                               series_id=_integer_ids(series["series_id"], "ReportInputs.series.series_id"),
                               series_description=series["series_description"].fillna("").astype(str))
        object.__setattr__(self, "series", series)
        labels = _key_frame(_require(self.labels, LABEL_COLUMNS, "ReportInputs.labels"), "ReportInputs.labels")
        given = labels["severity"]
        severity = pd.to_numeric(given, errors="coerce")
        bad = (given.notna() & ~severity.isin([0, 1, 2])).to_numpy()
        if bad.any():
            raise ValueError(f"ReportInputs.labels: severity must be 0, 1, 2 or <NA> (radiospine.labels long form), "
                             f"got {summarize_items(given[bad].unique())}")
        labels["severity"] = severity.astype("Int8")
        repeated = labels.duplicated(list(vocab.KEY_COLUMNS))
        if repeated.any():
            keys = labels.loc[repeated, list(vocab.KEY_COLUMNS)].itertuples(index=False, name=None)
            raise ValueError(f"ReportInputs.labels repeats (study_id, condition, level): {summarize_items(keys)}")
        object.__setattr__(self, "labels", labels)
        object.__setattr__(self, "oof_predictions", _prediction_frame(self.oof_predictions,
                                                                      "ReportInputs.oof_predictions"))
        object.__setattr__(self, "predictions", _prediction_frame(self.predictions, "ReportInputs.predictions"))
        missing_parts = [name for name in (*metrics.PART_NAMES, "score") if name not in self.cv_scores.columns]
        if missing_parts:
            raise ValueError(f"ReportInputs.cv_scores lacks column(s) {missing_parts}; pass "
                             f"radiospine.models.cv.fold_scores(...) (one row per fold and 'all')")
        for name, explanation in self.explanations.items():
            if name != explanation.group:
                raise ValueError(f"ReportInputs.explanations: key {name!r} holds the explanation of group "
                                 f"{explanation.group!r}; key each explanation by its group")
        if self.thumbnails is not None and not callable(self.thumbnails):
            raise TypeError("ReportInputs.thumbnails must be a callable (study_id, condition, level) -> thumbnails "
                             "or None")

    @property
    def study_ids(self) -> list[int]:
        """The shown studies (those with predictions), in increasing order."""
        return sorted(int(s) for s in self.predictions["study_id"].unique())


def _require(frame: pd.DataFrame, columns: Sequence[str], what: str) -> pd.DataFrame:
    if not isinstance(frame, pd.DataFrame):
        raise TypeError(f"{what} must be a pandas DataFrame, got {type(frame).__name__}")
    missing = [column for column in columns if column not in frame.columns]
    if missing:
        raise ValueError(f"{what} lacks column(s) {missing}; expected {', '.join(columns)}")
    return frame.reset_index(drop=True)


def _integer_ids(values: pd.Series, what: str) -> np.ndarray:
    numbers = pd.to_numeric(values, errors="coerce")
    bad = numbers.isna() | (numbers != numbers.round())
    if bad.any():
        raise ValueError(f"{what} holds values that are not integer ids: {summarize_items(values[bad].unique())}")
    return numbers.astype(np.int64).to_numpy()


def _key_frame(frame: pd.DataFrame, what: str) -> pd.DataFrame:
    """``frame`` with validated key columns (study_id int64, known condition and level), index reset."""
    frame = _require(frame, vocab.KEY_COLUMNS, what)
    unknown_conditions = sorted(set(frame["condition"]) - set(vocab.CONDITIONS))
    unknown_levels = sorted(set(frame["level"]) - set(vocab.LEVELS))
    if unknown_conditions or unknown_levels:
        raise ValueError(f"{what} holds unknown condition(s) {unknown_conditions} / level(s) {unknown_levels}; "
                         f"expected snake_case names such as {vocab.CONDITIONS[1]!r}, 'l4_l5'")
    keys = pd.DataFrame({"study_id": _integer_ids(frame["study_id"], f"{what}.study_id"),
                         "condition": frame["condition"].astype(str).to_numpy(),
                         "level": frame["level"].astype(str).to_numpy()})
    return keys if list(frame.columns) == list(vocab.KEY_COLUMNS) else pd.concat(
        [keys, frame.drop(columns=list(vocab.KEY_COLUMNS))], axis=1)


def _prediction_frame(frame: pd.DataFrame, what: str) -> pd.DataFrame:
    frame = _key_frame(_require(frame, LONG_PREDICTION_COLUMNS, what), what)[list(LONG_PREDICTION_COLUMNS)]
    repeated = frame.duplicated(list(vocab.KEY_COLUMNS))
    if repeated.any():
        keys = frame.loc[repeated, list(vocab.KEY_COLUMNS)].itertuples(index=False, name=None)
        raise ValueError(f"{what} repeats (study_id, condition, level): {summarize_items(keys)}")
    values = frame[list(vocab.SEVERITIES)].to_numpy(dtype=np.float64)
    row_names = [vocab.make_row_id(s, c, lv) for s, c, lv in zip(frame["study_id"], frame["condition"],
                                                                  frame["level"])]
    problems = probability_problems(values, row_names)
    if problems:
        raise ValueError(f"{what}: " + "; ".join(problems))
    frame[list(vocab.SEVERITIES)] = normalise_probabilities(values)
    return frame
