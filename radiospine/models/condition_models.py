"""The per-condition training driver: feature table + long labels -> calibrated, blended GBMs with CV scores.

Input frames
------------
features
    One row per (study_id, condition, level) (snake_case condition with its side, e.g.
    ``left_subarticular_stenosis``), feature columns ``<extractor>__<view>__<name>`` (numeric) and one status
    column ``<extractor>__status`` per extractor (``"ok"`` or the failure reasons), as
    :mod:`radiospine.features.base` and :mod:`radiospine.features.columns` define them. Features of a failed
    crop are NaN there (its reason is in the status), and the boosters route NaN as missing; the driver requires
    the status columns and counts the rows whose status is not ``"ok"`` in its report. (A key's status names every
    view, so a row whose axial crop failed still has valid sagittal features: statuses are not used to blank whole
    rows.)
labels
    Long labels (:mod:`radiospine.labels`): ``study_id, condition, level, severity`` (0/1/2 or ``<NA>``).
    Missing labels are neither trained on nor scored.

What :func:`train_condition_models` does
----------------------------------------
1. Splits the rows into model groups (:func:`model_groups`): one per base condition, further per side when
   ``share_sides`` is false and per level when ``share_levels`` is false. A group spanning several levels gets
   the level index as a feature (``key__level``, 0 = L1/L2 .. 4 = L5/S1); one spanning both sides gets
   ``key__side_left`` (1 left, 0 right).
2. Assigns every labelled study to one of ``n_folds`` folds (:func:`radiospine.models.cv.assign_study_folds`)
   and, for each group and member (backend x formulation), predicts every row out of fold, then fits the
   member on all labelled rows of the group. Training rows are weighted 1/2/4 by true severity when
   ``sample_weighting`` is ``metric``. Early stopping holds out whole studies.
3. Per base condition (the metric's spinal / foraminal / subarticular parts): blend weights for the members
   on the simplex (:mod:`radiospine.models.ensemble`), chosen on the out-of-fold rows, then a calibrator fitted
   on the blended out-of-fold probabilities; it is kept only if its cross-fitted (fit on the other folds)
   weighted log loss beats the uncalibrated one. With ``cnn_head_blend`` and the CNN's columns in the table, the
   CNN head's own probabilities are one more blend member, :data:`CNN_HEAD_MEMBER` (:func:`cnn_head_proba`):
   they are out of fold for the training rows already (the feature stage's fold networks), and a weight of 0
   is on the grid, so the blend takes them only where they lower the out-of-fold loss.
4. An :class:`~radiospine.models.calibration.AnySevereAdjuster` tuned on the out-of-fold predictions against the
   full metric (kept only if it helps), when ``any_severe_adjustment`` is set.
5. Scores every stage out of fold with :func:`radiospine.metrics.score`, per fold and per part.

:meth:`TrainedModels.save` writes native boosters (LightGBM text / XGBoost JSON) and ``model_card.json``;
:meth:`TrainedModels.load` reads them back. No pickle is involved.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
from pandas.api.types import is_bool_dtype, is_numeric_dtype

from radiospine import metrics, vocab
from radiospine.artifacts import atomic_path, atomic_write_text, library_versions
from radiospine.config import ModelMember, ModelsConfig, config_hash
from radiospine.csvio import summarize_items
from radiospine.errors import ConfigError, DataError, MissingInputError
from radiospine.features.base import STATUS_OK
from radiospine.features.columns import (
    CNN_PROBABILITY_FEATURES,
    KEY_PREFIX,
    LEVEL_FEATURE,
    SEPARATOR,
    SIDE_FEATURE,
    feature_column,
    is_status_column,
    parse_column,
    status_column,
)
from radiospine.features.store import FeatureStore, open_features, read_features
from radiospine.models import cv
from radiospine.models.calibration import (
    AnySevereAdjuster,
    Calibrator,
    IdentityCalibrator,
    calibrator_from_dict,
    make_calibrator,
)
from radiospine.models.ensemble import blend, fit_blend_weights
from radiospine.models.fits import Fit, FitData, FitFailed, FitRunner, SerialFits, fold_fits
from radiospine.models.ordinal import MulticlassGBMClassifier, OrdinalGBMClassifier, _GBMClassifierBase
from radiospine.submission import fill_missing_with_prior
from radiospine.threads import single_threaded_blas

logger = logging.getLogger(__name__)

MODEL_CARD = "model_card.json"
OOF_PREDICTIONS = "oof_predictions.csv"
CARD_FORMAT = "radiospine.condition_models/1"
N_CLASSES = len(vocab.SEVERITIES)
_METRIC_WEIGHTS = np.asarray(vocab.SEVERITY_WEIGHTS, dtype=np.float64)
#: The blend member that is not a booster: the CNN head's own probabilities (:func:`cnn_head_proba`).
CNN_HEAD_MEMBER = "cnn_head"
#: The CNN extractor's name, the first part of its columns (:mod:`radiospine.features.cnn`).
CNN_EXTRACTOR = "cnn"
_FORMULATIONS: dict[str, type[_GBMClassifierBase]] = {
    "ordinal": OrdinalGBMClassifier,
    "multiclass": MulticlassGBMClassifier,
}


# --- model groups -------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ModelGroup:
    """The rows one model is trained on: a base condition, optionally one side and/or one level.

    ``side`` None means both sides (or the canal, which has none); ``level`` None means all five levels.
    """

    base: str
    side: str | None = None
    level: str | None = None

    @property
    def name(self) -> str:
        """``"subarticular_stenosis"``, ``"left_subarticular_stenosis"``, ``"spinal_canal_stenosis.l4_l5"``."""
        condition = self.base if self.side is None else vocab.join_condition(self.base, self.side)
        return condition if self.level is None else f"{condition}.{self.level}"

    @property
    def key_features(self) -> tuple[str, ...]:
        """The features the driver adds for this group: the level when it spans levels, the side when it
        spans both sides."""
        spans_sides = self.base != vocab.SPINAL and self.side is None
        return (LEVEL_FEATURE,) * (self.level is None) + (SIDE_FEATURE,) * spans_sides

    def rows(self, table: pd.DataFrame) -> np.ndarray:
        """Boolean mask (n_rows,) of ``table``'s rows (with ``condition`` and ``level`` columns) in this group."""
        mask = _base_conditions(table["condition"]) == self.base
        if self.side is not None:
            sides = table["condition"].map(lambda condition: vocab.split_condition(condition).side)
            mask = mask & (sides == self.side).to_numpy()
        if self.level is not None:
            mask = mask & (table["level"] == self.level).to_numpy()
        return mask

    def to_dict(self) -> dict[str, str | None]:
        return {"base": self.base, "side": self.side, "level": self.level}


def model_groups(conditions: list[str] | tuple[str, ...], share_sides: bool, share_levels: bool) -> list[ModelGroup]:
    """The model groups covering ``conditions`` (snake_case, with sides), in vocabulary order."""
    groups: list[ModelGroup] = []
    for condition in vocab.CONDITIONS:
        if condition not in conditions:
            continue
        parts = vocab.split_condition(condition)
        side = None if share_sides else parts.side
        for level in (None,) if share_levels else vocab.LEVELS:
            group = ModelGroup(parts.base, side, level)
            if group not in groups:
                groups.append(group)
    return groups


# --- feature table --------------------------------------------------------------------------------------------


def _base_conditions(conditions: pd.Series) -> np.ndarray:
    """(n_rows,) base condition of each (snake_case, sided) condition."""
    return conditions.map(lambda condition: vocab.split_condition(condition).base).to_numpy()


def cnn_head_proba(prepared: PreparedFeatures, rows: np.ndarray, gbm_proba: np.ndarray) -> np.ndarray | None:
    """The CNN head's probabilities of the three severities for the ``rows`` (``(n_rows,)`` bool over
    ``prepared.keys``): per row, the CNN's ``prob_<severity>`` columns of its base condition's own view
    (``vocab.VIEW_OF_BASE_CONDITION``: sagittal T2/STIR for the canal, sagittal T1 for the foramina, axial T2 for
    the recesses), as float64 rows summing to 1, ``(rows.sum(), 3)``. Where the CNN has no probabilities for a row
    (its crop of that view could not be cut), the row is ``gbm_proba``'s (``(rows.sum(), 3)``, the boosters'
    mean), so the blend there is the boosters' alone. None when the table lacks those columns (the CNN is off).
    They are read from the table whatever ``models.extractors`` selects for the boosters, so
    ``extractors: [radiomics]`` with ``cnn_head_blend`` blends the head without stacking its columns."""
    own = {base: [feature_column(CNN_EXTRACTOR, vocab.VIEW_OF_BASE_CONDITION[base], name)
                  for name in CNN_PROBABILITY_FEATURES] for base in vocab.BASE_CONDITIONS}
    columns = sorted({column for names in own.values() for column in names})
    if not set(columns) <= set(prepared.table_columns):
        return None
    values = prepared.block(rows, columns).astype(np.float64)
    position = {column: i for i, column in enumerate(columns)}
    base = _base_conditions(prepared.keys.loc[rows, "condition"])
    proba = np.full((len(values), N_CLASSES), np.nan)
    for base_condition, names in own.items():
        selected = base == base_condition
        proba[selected] = values[selected][:, [position[name] for name in names]]
    total = proba.sum(axis=1, keepdims=True)
    usable = np.isfinite(proba).all(axis=1) & (proba >= 0).all(axis=1) & (total[:, 0] > 0)
    return np.where(usable[:, None], proba / np.where(usable[:, None], total, 1.0), gbm_proba)


#: Rows of the feature table converted to float32 at a time when a design matrix is filled from a DataFrame.
_FRAME_CHUNK_ROWS = 800


class _FrameValues:
    """Feature values held in a DataFrame (rows in the prepared keys' order), read a chunk of rows at a time."""

    def __init__(self, frame: pd.DataFrame) -> None:
        self.frame = frame

    def chunks(self, columns: Sequence[str]) -> Iterator[np.ndarray]:
        positions = self.frame.columns.get_indexer(list(columns))
        for start in range(0, len(self.frame), _FRAME_CHUNK_ROWS):
            yield self.frame.iloc[start:start + _FRAME_CHUNK_ROWS, positions].to_numpy(dtype=np.float32)


class _StoredValues:
    """Feature values in a feature store (:mod:`radiospine.features.store`), read a few studies at a time
    (:meth:`~radiospine.features.store.FeatureStore.iter_tables`), never the whole table at once."""

    def __init__(self, store: FeatureStore) -> None:
        self.store = store

    def chunks(self, columns: Sequence[str]) -> Iterator[np.ndarray]:
        for table in self.store.iter_tables(columns):
            values = np.empty((table.num_rows, len(columns)), dtype=np.float32)
            for j, column in enumerate(table.columns):
                values[:, j] = column.to_numpy()
            yield values


@dataclass(frozen=True)
class PreparedFeatures:
    """A validated feature table whose values are read a model group at a time.

    ``keys``: ``study_id`` (int64), ``condition``, ``level`` of every row, in the table's row order; ``columns``:
    the selected extractors' feature columns, in the table's column order (``table_columns``: every extractor's,
    selected or not; the CNN head's blend reads from them); ``failed_rows``: per extractor, how
    many rows have a status other than ``"ok"``; ``values``: where the values are (the DataFrame given to
    :func:`prepare_features`, or the store read by :func:`prepare_stored_features`). Values are float32 in the
    models (float64 in the store): :meth:`block` converts them, so training and prediction see the same numbers.
    """

    keys: pd.DataFrame
    columns: list[str]
    failed_rows: dict[str, int]
    values: _FrameValues | _StoredValues
    table_columns: list[str]

    def columns_with_values(self, masks: dict[str, np.ndarray]) -> dict[str, list[str]]:
        """Per named row mask (``(n_rows,)`` bool over ``keys``): the feature columns holding a value (not NaN) in
        at least one of its rows, in column order. One pass over the values for all masks."""
        present = {name: np.zeros(len(self.columns), dtype=bool) for name in masks}
        start = 0
        for chunk in self.values.chunks(self.columns):
            stop = start + len(chunk)
            for name, mask in masks.items():
                rows = mask[start:stop]
                if rows.any():
                    present[name] |= ~np.isnan(chunk[rows]).all(axis=0)
            start = stop
        return {name: [column for column, kept in zip(self.columns, flags, strict=True) if kept]
                for name, flags in present.items()}

    def block(self, rows: np.ndarray, columns: Sequence[str], extra_columns: int = 0) -> np.ndarray:
        """float32 ``(rows.sum(), len(columns) + extra_columns)``, C order: ``columns``' values in the rows where
        ``rows`` (``(n_rows,)`` bool over ``keys``) is True, in row order, then ``extra_columns`` columns of zeros.
        One allocation, filled a chunk of rows at a time (the only copy of the values a model group needs)."""
        block = np.zeros((int(rows.sum()), len(columns) + extra_columns), dtype=np.float32)
        start = filled = 0
        for chunk in self.values.chunks(columns):
            stop = start + len(chunk)
            selected = chunk[rows[start:stop]]
            block[filled:filled + len(selected), :len(columns)] = selected
            filled += len(selected)
            start = stop
        return block


def prepare_features(features: pd.DataFrame, extractors: tuple[str, ...] | None = None) -> PreparedFeatures:
    """Validate a feature table (see the module docstring); ``extractors`` limits which are used (None: all).
    The values stay in ``features`` (the caller keeps it) and are read from it a model group at a time.

    Raises ``ValueError`` naming the problem: missing key columns, an id that is not an integer, an unknown
    condition or level, a repeated (study, condition, level), a non-numeric feature column, an extractor
    without its status column, an unknown extractor, a column using the reserved ``key__`` prefix, a column
    with ``"__"`` that is no feature or status column name (:func:`radiospine.features.columns.parse_column`), or
    no feature column at all.
    """
    def numeric(column: str) -> bool:
        return is_numeric_dtype(features[column]) and not is_bool_dtype(features[column])

    return _prepare(features, list(features.columns), numeric, extractors, _FrameValues(features))


def prepare_stored_features(features_dir: str | Path, extractors: tuple[str, ...] | None = None) -> PreparedFeatures:
    """:func:`prepare_features` for the feature table stored in ``features_dir`` (``WORK/features/<split>``)
    without reading it into memory: the keys and status columns are read, the values stay in the store and
    are read a model group at a time (training on it holds one group's float32 design matrix, not the table)."""
    store = open_features(features_dir)
    types = store.column_types()
    names = list(types)
    head = store.read(columns=[name for name in names if name in vocab.KEY_COLUMNS or is_status_column(name)])

    def numeric(column: str) -> bool:
        return pa.types.is_integer(types[column]) or pa.types.is_floating(types[column])

    return _prepare(head, names, numeric, extractors, _StoredValues(store))


def _prepare(head: pd.DataFrame, names: list[str], numeric: Callable[[str], bool],
             extractors: tuple[str, ...] | None, values: _FrameValues | _StoredValues) -> PreparedFeatures:
    """The checks of :func:`prepare_features`: ``head`` holds at least the key and status columns of the table,
    whose columns are ``names``; ``numeric(column)`` tells whether a column holds numbers."""
    missing = [column for column in vocab.KEY_COLUMNS if column not in names]
    if missing:
        raise ValueError(f"the feature table lacks key column(s) {missing}; it needs study_id, condition, level")
    study_ids = pd.to_numeric(head["study_id"], errors="coerce")
    bad_ids = study_ids.isna() | (study_ids != study_ids.round())
    if bad_ids.any():
        raise ValueError(f"the feature table holds study ids that are not integers: "
                         f"{summarize_items(head['study_id'][bad_ids].unique().tolist())}")
    unknown_conditions = sorted(set(head["condition"]) - set(vocab.CONDITIONS))
    unknown_levels = sorted(set(head["level"]) - set(vocab.LEVELS))
    if unknown_conditions or unknown_levels:
        raise ValueError(f"the feature table holds unknown condition(s) {unknown_conditions} / level(s) "
                         f"{unknown_levels}; expected snake_case names such as {vocab.CONDITIONS[1]!r}, 'l4_l5'")
    keys = pd.DataFrame({"study_id": study_ids.astype(np.int64).to_numpy(),
                         "condition": head["condition"].to_numpy(), "level": head["level"].to_numpy()})
    repeated = keys.duplicated(keep=False)
    if repeated.any():
        raise ValueError(f"the feature table repeats (study_id, condition, level): "
                         f"{summarize_items(keys[repeated].drop_duplicates().itertuples(index=False, name=None))}")

    reserved = [column for column in names if str(column).startswith(KEY_PREFIX)]
    if reserved:
        raise ValueError(f"feature column(s) {summarize_items(reserved)} use the prefix {KEY_PREFIX!r} reserved for "
                         f"the level and side features; rename the extractor")
    extractor_of = {column: parse_column(str(column)).extractor for column in names
                    if SEPARATOR in str(column) and not is_status_column(str(column))}
    candidates = list(extractor_of)
    available = sorted(set(extractor_of.values()))
    if extractors is not None:
        unknown = sorted(set(extractors) - set(available))
        if unknown:
            raise ConfigError(f"models.extractors names {unknown}, absent from the feature table (it has "
                              f"{available})")
        candidates = [column for column in candidates if extractor_of[column] in extractors]
    if not candidates:
        raise DataError("the feature table has no feature column (<extractor>__<name>); run the feature stage")
    non_numeric = [column for column in candidates if not numeric(column)]
    if non_numeric:
        raise ValueError(f"feature column(s) {summarize_items(non_numeric)} are not numeric")

    failed_rows = {}
    for extractor in sorted({extractor_of[column] for column in candidates}):
        status = status_column(extractor)
        if status not in names:
            raise ValueError(f"the feature table has {extractor}{SEPARATOR} features but no {status} column; the "
                             f"feature stage records each extraction's status there")
        failed_rows[extractor] = int((head[status].astype(str) != STATUS_OK).sum())
        if failed_rows[extractor]:
            logger.info("%s: %d of %d rows have a failed extraction (NaN features)", extractor,
                        failed_rows[extractor], len(head))
    return PreparedFeatures(keys, candidates, failed_rows, values, list(extractor_of))


def _design_matrix(prepared: PreparedFeatures, rows: np.ndarray, group: ModelGroup,
                   feature_columns: list[str]) -> np.ndarray:
    """The model's input for ``prepared``'s rows where ``rows`` (bool over its keys) is True, all in ``group``:
    float32 ``(rows.sum(), len(feature_columns) + len(group.key_features))``, C order, ``feature_columns`` then
    the group's key features (the level index, the side)."""
    X = prepared.block(rows, feature_columns, extra_columns=len(group.key_features))
    keys = prepared.keys[rows]
    j = len(feature_columns)
    if LEVEL_FEATURE in group.key_features:
        X[:, j] = pd.Index(vocab.LEVELS).get_indexer(keys["level"])
        j += 1
    if SIDE_FEATURE in group.key_features:
        sides = keys["condition"].map(lambda condition: vocab.split_condition(condition).side)
        X[:, j] = (sides == "left").to_numpy()
    return X


def make_member_estimator(member: ModelMember, config: ModelsConfig, threads: int = 1) -> _GBMClassifierBase:
    """A new, unfitted estimator of ``member`` with the config's booster parameters and ``threads`` threads per
    booster (which do not change its results)."""
    return _FORMULATIONS[member.formulation](
        backend=member.backend, random_state=config.seed, n_jobs=threads, **config.gbm.model_dump()
    )


#: Studies read and predicted at a time by :meth:`TrainedModels.predict_stored_studies` (32 studies of ~4,600
#: float64 features: 29 MB of values).
PREDICT_CHUNK_STUDIES = 32


# --- trained models -------------------------------------------------------------------------------------------


@dataclass
class GroupModel:
    """One model group's fitted members. ``feature_columns``: the design matrix's columns, in order
    (extractor features that were not all-NaN in training, then the key features)."""

    group: ModelGroup
    feature_columns: tuple[str, ...]
    members: dict[str, _GBMClassifierBase]


def save_member_boosters(directory: Path, folder: Path, members: Mapping[str, _GBMClassifierBase]
                         ) -> dict[str, dict[str, Any]]:
    """Write each member's boosters in their native formats into ``directory / folder / <member>``; returns, per
    member, its model-card entry ``{"path": "<folder>/<member>"}`` (relative to ``directory``, POSIX)."""
    entries = {}
    for name, estimator in members.items():
        relative = folder / name
        estimator.to_native(directory / relative)
        entries[name] = {"path": relative.as_posix()}
    return entries


def write_model_card(directory: Path, card: dict[str, Any], oof_predictions: pd.DataFrame | None) -> Path:
    """Write ``directory/model_card.json`` (atomic) and, when given, the out-of-fold predictions beside it;
    returns the card's path. Shared by every kind of trained models (:mod:`radiospine.models.target_models`)."""
    if oof_predictions is not None:
        with atomic_path(directory / OOF_PREDICTIONS) as tmp:
            oof_predictions.to_csv(tmp, index=False)
    card_path = directory / MODEL_CARD
    atomic_write_text(card_path, json.dumps(card, indent=2))
    return card_path


@dataclass
class TrainedModels:
    """Everything :func:`train_condition_models` fitted, ready to predict and to save.

    ``blend_weights`` and ``calibrators`` are keyed by base condition; ``any_severe`` is None when the
    adjustment is switched off. ``report`` holds the CV scores and fit details written to the model card;
    ``oof_predictions`` the final out-of-fold long predictions of the labelled studies' rows.
    """

    config: ModelsConfig
    groups: list[GroupModel]
    blend_weights: dict[str, dict[str, float]]
    calibrators: dict[str, Calibrator]
    any_severe: AnySevereAdjuster | None
    report: dict[str, Any] = field(default_factory=dict)
    oof_predictions: pd.DataFrame | None = None

    def predict(self, features: pd.DataFrame) -> pd.DataFrame:
        """Long predictions for every row of ``features`` (same order): ``study_id, condition, level,
        normal_mild, moderate, severe``, rows summing to 1.

        Raises ``ValueError`` when the table lacks a feature column a model was trained on, or holds a
        condition no model was trained for. BLAS runs on one thread (:func:`radiospine.threads.single_threaded_blas`).
        """
        with single_threaded_blas():
            return self._predict(features)

    def _predict(self, features: pd.DataFrame) -> pd.DataFrame:
        prepared = prepare_features(features, self.config.extractors)
        table = prepared.keys
        member_proba = {name: np.full((len(table), N_CLASSES), np.nan) for name in self._member_names()}
        covered = np.zeros(len(table), dtype=bool)
        for group_model, rows, X in self._design_matrices(prepared):
            for name, estimator in group_model.members.items():
                member_proba[name][rows] = cv.class_proba(estimator, X, N_CLASSES)
            covered |= rows
        if not covered.all():
            raise DataError(f"no model was trained for condition(s) "
                            f"{sorted(set(table.loc[~covered, 'condition']))}; train with these conditions")
        if any(CNN_HEAD_MEMBER in weights for weights in self.blend_weights.values()):
            gbm_mean = np.mean([member_proba[name] for name in self._member_names()], axis=0)
            head = cnn_head_proba(prepared, np.ones(len(table), dtype=bool), gbm_mean)
            if head is None:
                raise DataError(f"the models blend the CNN head's probabilities ({CNN_HEAD_MEMBER}), but the feature "
                                f"table has no CNN probability columns: compute the features with the training "
                                f"config (features.cnn.enabled)")
            member_proba[CNN_HEAD_MEMBER] = head
        proba = np.empty((len(table), N_CLASSES))
        base = _base_conditions(table["condition"])
        for base_condition, weights in self.blend_weights.items():
            rows = base == base_condition
            blended = blend([member_proba[name][rows] for name in weights], list(weights.values()))
            proba[rows] = self.calibrators[base_condition].transform(blended)
        predictions = pd.concat([table, pd.DataFrame(proba, columns=list(vocab.SEVERITIES))], axis=1)
        return predictions if self.any_severe is None else self.any_severe.transform(predictions)

    def predict_studies(self, features: pd.DataFrame, study_ids: Sequence[int], prior: pd.DataFrame
                        ) -> tuple[pd.DataFrame, pd.DataFrame]:
        """Long predictions for all 25 rows of every study in ``study_ids``: the models where a row has any
        extracted feature, the ``prior`` (``condition, level`` + probabilities, e.g. ``WORK/models/prior.csv``)
        where it has none (its ROI could not be cut or described) or no feature row at all.

        Returns ``(predictions, filled)``: predictions in :func:`radiospine.labels.target_grid` order, and the
        ``study_id, condition, level`` rows taken from the prior.
        """
        feature_columns = [c for c in features.columns
                           if c not in vocab.KEY_COLUMNS and not is_status_column(c)]
        described = features[feature_columns].notna().any(axis=1)
        predictions = self.predict(features[described].reset_index(drop=True))
        return fill_missing_with_prior(predictions, study_ids, prior)

    def predict_stored_studies(self, features_dir: str | Path, study_ids: Sequence[int], prior: pd.DataFrame, *,
                               chunk_studies: int = PREDICT_CHUNK_STUDIES) -> tuple[pd.DataFrame, pd.DataFrame]:
        """:meth:`predict_studies` on the feature table stored in ``features_dir`` (``WORK/features/<split>``),
        read and predicted ``chunk_studies`` studies at a time, so that memory does not grow with the number of
        studies (the whole table of 1,975 studies is 1.8 GB of float64, and predicting it at once held about
        5x that). Every step of a prediction works row by row or study by study, so the result equals
        :meth:`predict_studies` on the whole table.

        Returns ``(predictions, filled)`` as :meth:`predict_studies`, ``filled`` with the feature table's status
        columns of each filled row (empty where the study has no feature row).
        """
        if chunk_studies < 1:
            raise ValueError(f"chunk_studies must be at least 1, got {chunk_studies}")
        study_ids = list(study_ids)
        completed, filled = [], []
        for start in range(0, len(study_ids), chunk_studies):
            chunk = study_ids[start:start + chunk_studies]
            features = read_features(features_dir, chunk)
            chunk_completed, chunk_filled = self.predict_studies(features, chunk, prior)
            completed.append(chunk_completed)
            if len(chunk_filled):
                status_columns = [c for c in features.columns if is_status_column(c)]
                filled.append(chunk_filled.merge(features[[*vocab.KEY_COLUMNS, *status_columns]],
                                                 on=list(vocab.KEY_COLUMNS), how="left"))
            del features
        if not completed:
            return self.predict_studies(read_features(features_dir, []), study_ids, prior)
        return (pd.concat(completed, ignore_index=True),
                pd.concat(filled, ignore_index=True) if filled else chunk_filled)

    def design_matrices(self, features: pd.DataFrame) -> Iterator[tuple[GroupModel, np.ndarray, np.ndarray]]:
        """Per model group with rows in ``features``: ``(group model, row mask over features, X)``, where ``X`` is
        the group's design matrix, float32 ``(rows.sum(), len(feature_columns))`` with the group model's
        ``feature_columns`` in order — what the members predict from and what their SHAP values explain.

        Raises ``ValueError`` when the table lacks a feature column a model was trained on.
        """
        return self._design_matrices(prepare_features(features, self.config.extractors))

    def _design_matrices(self, prepared: PreparedFeatures) -> Iterator[tuple[GroupModel, np.ndarray, np.ndarray]]:
        available = set(prepared.columns)
        for group_model in self.groups:
            rows = group_model.group.rows(prepared.keys)
            if not rows.any():
                continue
            extractor_columns = [c for c in group_model.feature_columns if parse_column(c).kind != "key"]
            absent = [column for column in extractor_columns if column not in available]
            if absent:
                raise DataError(f"the feature table lacks column(s) {summarize_items(absent)} that model "
                                f"{group_model.group.name} was trained on; use the feature config of training")
            yield group_model, rows, _design_matrix(prepared, rows, group_model.group, extractor_columns)

    def _member_names(self) -> list[str]:
        return [member.name for member in self.config.members]

    # -- saving ------------------------------------------------------------------------------------------

    def save(self, directory: str | Path) -> Path:
        """Write ``model_card.json``, the boosters under ``groups/<group>/<member>/`` (native formats) and
        ``oof_predictions.csv`` into ``directory``. Returns the card's path."""
        directory = Path(directory)
        groups = []
        for group_model in self.groups:
            members = save_member_boosters(directory, Path("groups") / group_model.group.name, group_model.members)
            for name, estimator in group_model.members.items():
                members[name]["n_rounds"] = [int(n) for n in estimator.n_rounds_]
            groups.append({**group_model.group.to_dict(), "name": group_model.group.name,
                           "feature_columns": list(group_model.feature_columns), "members": members})
        card = {
            "format": CARD_FORMAT,
            "classes": list(vocab.SEVERITIES),
            "config": self.config.model_dump(mode="json"),
            "config_hash": config_hash(self.config),
            "versions": library_versions(),
            "groups": groups,
            "blend_weights": self.blend_weights,
            "calibration": {base: calibrator.to_dict() for base, calibrator in self.calibrators.items()},
            "any_severe": None if self.any_severe is None else self.any_severe.to_dict(),
            "report": self.report,
        }
        return write_model_card(directory, card, self.oof_predictions)

    @classmethod
    def load(cls, directory: str | Path) -> TrainedModels:
        """Read models written by :meth:`save`; predictions equal the saved models' predictions."""
        directory = Path(directory)
        card_path = directory / MODEL_CARD
        try:
            card = json.loads(card_path.read_text())
        except FileNotFoundError:
            raise MissingInputError(f"{card_path} does not exist: train the models first (train_condition_models, "
                                    f"then save)") from None
        except json.JSONDecodeError as exc:
            raise DataError(f"{card_path} is not valid JSON ({exc}); train and save the models again") from None
        if card.get("format") != CARD_FORMAT:
            raise DataError(f"{card_path} has format {card.get('format')!r}, expected {CARD_FORMAT!r}")
        config = ModelsConfig.model_validate(card["config"])
        formulations = {member.name: member.formulation for member in config.members}
        groups = []
        for entry in card["groups"]:
            members = {name: _FORMULATIONS[formulations[name]].from_native(directory / spec["path"])
                       for name, spec in entry["members"].items()}
            groups.append(GroupModel(ModelGroup(entry["base"], entry["side"], entry["level"]),
                                     tuple(entry["feature_columns"]), members))
        oof_path = directory / OOF_PREDICTIONS
        return cls(
            config=config,
            groups=groups,
            blend_weights=card["blend_weights"],
            calibrators={base: calibrator_from_dict(data) for base, data in card["calibration"].items()},
            any_severe=None if card["any_severe"] is None else AnySevereAdjuster.from_dict(card["any_severe"]),
            report=card["report"],
            oof_predictions=pd.read_csv(oof_path) if oof_path.is_file() else None,
        )


# --- training -------------------------------------------------------------------------------------------------


def _long_predictions(keys: pd.DataFrame, proba: np.ndarray) -> pd.DataFrame:
    return pd.concat([keys.reset_index(drop=True), pd.DataFrame(proba, columns=list(vocab.SEVERITIES))], axis=1)


def train_condition_models(features: pd.DataFrame | PreparedFeatures, labels_long: pd.DataFrame,
                           config: ModelsConfig, runner: FitRunner | None = None) -> TrainedModels:
    """Train, blend, calibrate and score the per-condition models (see the module docstring).

    ``features``: the feature table, or what :func:`prepare_features` or :func:`prepare_stored_features` (a
    table in the feature store, never read whole) made of it with ``config.extractors``; ``labels_long``: long labels;
    ``config``: the ``models`` config section; ``runner``: where the fits run (:mod:`radiospine.models.fits`: this
    process, worker processes or a Dask cluster; None: this process, one thread). Only studies with at least one
    label are used. The labelled rows must cover all three base conditions (the metric has four parts). BLAS runs
    on one thread (:func:`radiospine.threads.single_threaded_blas`): with the boosters' seeds, the same table and
    config give the same models bit for bit, whatever the runner and its threads per fit.

    Memory: in this process, one model group's design matrix at a time in float32 (the values are read into it
    from the table or the store; the largest group, a sided condition, holds 10 of a study's 25 rows; with a
    serial runner a fit's training and early-stopping rows and the boosters' binned copies of them come on top);
    a worker maps the design matrix of the fit it runs and copies the fit's rows. The keys, labels and
    out-of-fold predictions are small. The boosters' histograms do not grow with the rows (README, "Memory per
    process").
    """
    with single_threaded_blas():
        return _train_condition_models(features, labels_long, config, runner or SerialFits())


def _train_condition_models(features: pd.DataFrame | PreparedFeatures, labels_long: pd.DataFrame,
                            config: ModelsConfig, runner: FitRunner) -> TrainedModels:
    prepared = features if isinstance(features, PreparedFeatures) else prepare_features(features, config.extractors)
    feature_columns, failed_rows = prepared.columns, prepared.failed_rows
    labels = metrics.as_long_labels(labels_long)
    # The labels are merged onto the keys (a left merge keeps the keys' row order); the values stay where they
    # are and are read a model group at a time.
    table = prepared.keys.merge(labels, on=list(vocab.KEY_COLUMNS), how="left", validate="one_to_one")
    labelled_studies = labels.loc[labels["severity"].notna(), "study_id"].unique()
    in_labelled_study = table["study_id"].isin(labelled_studies).to_numpy()
    # prepared row of each row used (rows of studies without labels are not)
    prepared_row = np.flatnonzero(in_labelled_study)
    if not in_labelled_study.all():
        logger.info("%d feature rows belong to studies without labels; they are not used",
                    (~in_labelled_study).sum())
        table = table[in_labelled_study].reset_index(drop=True)
    severity = table["severity"].astype("Float64").fillna(-1).to_numpy(dtype=np.int64)
    labelled = severity >= 0
    with_features = labels.merge(table[list(vocab.KEY_COLUMNS)], on=list(vocab.KEY_COLUMNS))
    unmatched = int(labels["severity"].notna().sum() - with_features["severity"].notna().sum())
    if unmatched:
        logger.warning("%d labelled rows have no feature row; they are neither trained on nor scored", unmatched)
    base = _base_conditions(table["condition"])
    absent = [b for b in vocab.BASE_CONDITIONS if not (labelled & (base == b)).any()]
    if absent:
        raise DataError(f"no labelled feature rows for {absent}: the models (and the metric's parts) need "
                        f"all of {list(vocab.BASE_CONDITIONS)}")

    folds = cv.assign_study_folds(labels[labels["study_id"].isin(table["study_id"])], config.n_folds, config.seed)
    row_fold = table["study_id"].map(folds).to_numpy(dtype=np.int64)
    train_weight = _METRIC_WEIGHTS[np.maximum(severity, 0)] if config.sample_weighting == "metric" \
        else np.ones(len(table))
    members = list(config.members)
    oof = {member.name: np.full((len(table), N_CLASSES), np.nan) for member in members}
    group_models, fit_seconds, dropped_columns = [], {}, {}

    def over_prepared(mask: np.ndarray) -> np.ndarray:
        """A row mask over ``table`` as a row mask over ``prepared.keys``."""
        full = np.zeros(len(prepared.keys), dtype=bool)
        full[prepared_row[mask]] = True
        return full

    groups = model_groups(sorted(set(table["condition"])), config.share_sides, config.share_levels)
    group_rows = {group.name: group.rows(table) for group in groups}
    # Columns without any value in a group's labelled rows carry nothing to learn: dropped from its model.
    with_values = prepared.columns_with_values({name: over_prepared(rows & labelled)
                                                for name, rows in group_rows.items()})
    for group in groups:
        dropped_columns[group.name] = len(feature_columns) - len(with_values[group.name])
        _warn_if_leaves_too_large(group.name, int(labelled[group_rows[group.name]].sum()), members, config)

    def batches() -> Iterator[tuple[FitData, list[Fit]]]:
        """Per group, its design matrix (made only when the runner asks for it) and its members' fits."""
        for group in groups:
            rows = group_rows[group.name]
            y, fold = severity[rows], row_fold[rows]
            fits = []
            for member in members:
                make = partial(make_member_estimator, member, config, threads=runner.threads)
                fits += fold_fits((group.name, member.name), make, y, fold, config.seed, N_CLASSES)
                fits.append(Fit((group.name, member.name, None), make, config.seed, np.flatnonzero(y >= 0)))
            yield FitData(_design_matrix(prepared, over_prepared(rows), group, with_values[group.name]), y,
                          train_weight[rows], table.loc[rows, "study_id"].to_numpy()), fits

    fitted: dict[str, dict[str, _GBMClassifierBase]] = {group.name: {} for group in groups}
    seconds: dict[tuple[str, str], dict[int | None, float]] = {}
    try:
        for fit, result, fit_time in runner.run(batches()):
            group_name, member_name, k = fit.key
            seconds.setdefault((group_name, member_name), {})[k] = fit_time
            if k is None:
                fitted[group_name][member_name] = result
            else:
                oof[member_name][np.flatnonzero(group_rows[group_name])[fit.predict_rows]] = result
    except FitFailed as failure:
        if not isinstance(failure.error, ValueError):
            raise failure.error from failure
        group = next(group for group in groups if group.name == failure.key[0])
        split = group.level is not None or group.side is not None
        hint = ("; with share_levels or share_sides false each model sees one level or side only: set "
                "them true or add studies") if split else ""
        raise DataError(f"model {group.name}, member {failure.key[1]}: {failure.error}{hint}") from failure.error
    for group in groups:
        # seconds of a member's fits (its folds' and the full fit's), each timed where it ran, summed in fold order
        fit_seconds[group.name] = {member.name: round(sum(v for _, v in sorted(
            seconds[group.name, member.name].items(), key=lambda item: -1 if item[0] is None else item[0])), 3)
            for member in members}
        logger.info("trained %s: %s s of fits", group.name, fit_seconds[group.name])
        group_models.append(GroupModel(group, (*with_values[group.name], *group.key_features),
                                       {member.name: fitted[group.name][member.name] for member in members}))

    blend_members = [member.name for member in members]
    if config.cnn_head_blend:
        head = cnn_head_proba(prepared, over_prepared(np.ones(len(table), dtype=bool)),
                              np.mean([oof[name] for name in blend_members], axis=0))
        if head is not None:
            oof[CNN_HEAD_MEMBER] = head
            blend_members.append(CNN_HEAD_MEMBER)
    keys = table[list(vocab.KEY_COLUMNS)]
    metric_weight = _METRIC_WEIGHTS[np.maximum(severity, 0)]
    blend_weights: dict[str, dict[str, float]] = {}
    calibrators: dict[str, Calibrator] = {}
    calibration_report: dict[str, dict[str, Any]] = {}
    blended = np.empty((len(table), N_CLASSES))
    calibrated = np.empty((len(table), N_CLASSES))
    for base_condition in vocab.BASE_CONDITIONS:
        rows = base == base_condition
        scored = rows & labelled
        weights = fit_blend_weights([oof[name][scored] for name in blend_members], severity[scored],
                                    metric_weight[scored], step=config.blend_step)
        blend_weights[base_condition] = {name: float(w) for name, w in zip(blend_members, weights, strict=True)}
        blended[rows] = blend([oof[name][rows] for name in blend_members], weights)
        calibrators[base_condition], calibrated[rows], calibration_report[base_condition] = _fit_calibration(
            config.calibration, blended, severity, metric_weight, rows, labelled, row_fold)

    scoring_labels = table[[*vocab.KEY_COLUMNS, "severity"]]
    final = _long_predictions(keys, calibrated)
    any_severe = None
    if config.any_severe_adjustment:
        any_severe = AnySevereAdjuster().fit(final, scoring_labels)
        final = any_severe.transform(final)

    stages = {name: _long_predictions(keys, oof[name]) for name in blend_members}
    stages.update(blend=_long_predictions(keys, blended), calibrated=_long_predictions(keys, calibrated), final=final)
    cv_scores = {stage: cv.fold_scores(scoring_labels, frame, folds).to_dict(orient="index")
                 for stage, frame in stages.items()}
    report = {
        "n_rows": len(table),
        "n_labelled_rows": int(labelled.sum()),
        "n_studies": len(folds),
        "labelled_rows_without_features": unmatched,
        "n_feature_columns": len(feature_columns),
        "failed_extraction_rows": failed_rows,
        "all_nan_columns_dropped": dropped_columns,
        "fit_seconds": fit_seconds,
        "cv_scores": cv_scores,
        "weighted_prior_in_sample": _weighted_prior_score(scoring_labels, folds.index),
        "calibration": calibration_report,
    }
    logger.info("out-of-fold score %.4f (members %s)", cv_scores["final"]["all"]["score"],
                {m.name: round(cv_scores[m.name]["all"]["score"], 4) for m in members})
    return TrainedModels(config=config, groups=group_models, blend_weights=blend_weights, calibrators=calibrators,
                         any_severe=any_severe, report=report, oof_predictions=final)


def _warn_if_leaves_too_large(group_name: str, n_labelled: int, members: Sequence[ModelMember],
                              config: ModelsConfig) -> None:
    """Warn when a LightGBM member's fold models cannot split at all: a split needs ``2 x min_child_samples``
    rows, and a fold model trains on about ``(n_folds - 1) / n_folds x (1 - validation_fraction)`` of the rows."""
    if not any(member.backend == "lightgbm" for member in members):
        return
    fold_rows = int(n_labelled * (config.n_folds - 1) / config.n_folds * (1 - config.gbm.validation_fraction))
    if fold_rows < 2 * config.gbm.min_child_samples:
        logger.warning("model %s: about %d training rows per fold, fewer than 2 x models.gbm.min_child_samples (%d): "
                       "the LightGBM trees cannot split and predict the class shares; lower min_child_samples "
                       "(configs/demo.yaml uses 20 for 60 studies) or add studies",
                       group_name, fold_rows, config.gbm.min_child_samples)


def _weighted_prior_score(labels: pd.DataFrame, study_ids: pd.Index) -> dict[str, float] | None:
    """The metric of the reference baseline (:func:`radiospine.metrics.weighted_prior_predictions`) fitted on
    ``labels`` themselves, for scale; None when some of the 25 targets has no labelled row (no prior for it)."""
    labelled = labels[labels["severity"].notna()]
    if len(labelled[["condition", "level"]].drop_duplicates()) < len(vocab.TARGET_COLUMNS):
        return None
    return metrics.score(labels, metrics.weighted_prior_predictions(labels, study_ids)).as_dict()


def _fit_calibration(kind: str, proba: np.ndarray, severity: np.ndarray, weight: np.ndarray, rows: np.ndarray,
                     labelled: np.ndarray, row_fold: np.ndarray) -> tuple[Calibrator, np.ndarray, dict[str, Any]]:
    """Fit a ``kind`` calibrator on the labelled ``rows`` of out-of-fold ``proba``; keep it only if it helps.

    Its value is judged without optimism: for each fold, a calibrator fitted on the other folds' rows
    calibrates that fold's rows (cross-fitting), and the weighted log loss of these cross-fitted probabilities
    is compared with the uncalibrated one. Returns (calibrator fitted on all rows or the identity, the
    cross-fitted probabilities of ``rows`` (or the uncalibrated ones), a report).
    """
    scored = rows & labelled
    uncalibrated_loss = metrics.weighted_log_loss(proba[scored, severity[scored]], weight[scored])
    report: dict[str, Any] = {"requested": kind, "kept": "none", "loss_uncalibrated": uncalibrated_loss}
    if kind == "none":
        return IdentityCalibrator(), proba[rows], report
    cross_fitted = np.empty_like(proba)
    for k in np.unique(row_fold[rows]):
        train, test = scored & (row_fold != k), rows & (row_fold == k)
        cross_fitted[test] = make_calibrator(kind).fit(proba[train], severity[train], weight[train]).transform(
            proba[test])
    calibrated_loss = metrics.weighted_log_loss(cross_fitted[scored, severity[scored]], weight[scored])
    report["loss_calibrated_cross_fitted"] = calibrated_loss
    if calibrated_loss >= uncalibrated_loss:
        return IdentityCalibrator(), proba[rows], report
    report["kept"] = kind
    calibrator = make_calibrator(kind).fit(proba[scored], severity[scored], weight[scored])
    report["params"] = calibrator.to_dict()["params"]
    return calibrator, cross_fitted[rows], report
