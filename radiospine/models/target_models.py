"""Per-target GBMs for the tasks scored per target (:mod:`radiospine.task`, ``metric = "per_target"``: ``spider``).

The RSNA task keeps its own driver (:mod:`radiospine.models.condition_models`: three severities, the metric's
four parts, blending, calibration, the any-severe adjustment). A per-target task is simpler: every target is its
own K-grade problem, scored with :func:`radiospine.metrics.target_metrics`.

Inputs
------
features
    The feature table (:func:`radiospine.models.condition_models.prepare_features` validates it): one row per
    ``(study_id, condition, level)``.
labels
    Long task labels (:func:`radiospine.labels.load_task_labels`): ``study_id, target, level, grade``.

Per target
----------
* design matrix: the feature rows whose condition is the target's ``roi_condition``, one per (study, level);
  the feature columns of the target's view (``<extractor>__<view>__<name>``) that are not all NaN on the
  training rows, then ``key__level`` (0 = L1/L2 .. 4 = L5/S1);
* model: every member of ``models.members`` (ordinal: K-1 cumulative boosters; multiclass: one softmax booster;
  a binary target is one logistic booster either way) on grade indices ``0 .. K-1``, rows weighted by the
  target's weight of their true grade when ``models.sample_weighting`` is ``metric``; the members' probabilities
  averaged with equal weights;
* boosted from the level-only prior: every booster starts from the margin of the prior of its training rows
  (:func:`radiospine.metrics.level_prior` of those rows, at each row's level: an ordinal booster from the logit
  of ``P(grade > k | level)``, a softmax one from the log prior; LightGBM ``init_score``, XGBoost
  ``base_margin``), so its trees learn what the image adds beyond the level, and boosters that learn nothing
  predict exactly the prior. Prediction starts from the same prior (the training folds' out of fold; the one
  saved in the model card for the final models). The RSNA task's models start from their libraries' constant;
* out of fold: the labelled studies go to ``models.n_folds`` folds (:func:`study_folds`), and each fold is
  predicted by members fitted on the others (:func:`radiospine.models.cv.fit_grouped`: early stopping on
  held-out studies), as is the level-only prior (:func:`radiospine.metrics.level_prior`), the baseline every
  figure is reported beside; a fold whose training rows hold one grade only is predicted by the prior;
* then every member is fitted on all labelled rows, and the prior on all labels.

:meth:`TrainedTargetModels.save` writes the boosters in their native formats under ``targets/<target>/<member>/``,
``model_card.json`` (feature columns, priors, out-of-fold scores per target) and ``oof_predictions.csv``
(``study_id, target, level, p0 ..``). No pickle is involved.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from sklearn.model_selection import KFold

from radiospine import metrics
from radiospine.artifacts import library_versions
from radiospine.config import ModelsConfig, config_hash
from radiospine.errors import DataError, MissingInputError
from radiospine.features.columns import LEVEL_FEATURE, parse_column
from radiospine.models import cv
from radiospine.models.condition_models import (
    MODEL_CARD,
    make_member_estimator,
    prepare_features,
    save_member_boosters,
    write_model_card,
)
from radiospine.models.fits import Fit, FitData, FitRunner, SerialFits, fold_fits
from radiospine.models.ordinal import MulticlassGBMClassifier, OrdinalGBMClassifier, _GBMClassifierBase
from radiospine.task import Target, Task, get_task
from radiospine.threads import single_threaded_blas

logger = logging.getLogger(__name__)

CARD_FORMAT = "radiospine.target_models/1"
_KEY = ["study_id", "target", "level"]
_ESTIMATORS = {"OrdinalGBMClassifier": OrdinalGBMClassifier, "MulticlassGBMClassifier": MulticlassGBMClassifier}


def study_folds(study_ids: Sequence[int], n_splits: int, seed: int) -> pd.Series:
    """Fold index (0 .. n_splits-1) per study, indexed by study id: ``KFold`` over the sorted ids, shuffled."""
    ids = np.unique(np.asarray(study_ids, dtype=np.int64))
    if len(ids) < n_splits:
        raise DataError(f"{len(ids)} labelled studies cannot be split into {n_splits} folds; lower models.n_folds "
                        f"or add studies")
    folds = pd.Series(-1, index=ids, dtype=np.int64, name="fold")
    for fold, (_, held_out) in enumerate(KFold(n_splits=n_splits, shuffle=True, random_state=seed).split(ids)):
        folds.iloc[held_out] = fold
    return folds


def view_columns(columns: Sequence[str], target: Target) -> list[str]:
    """The feature columns (``<extractor>__<view>__<name>``) of the target's view, in the given order."""
    return [column for column in columns if parse_column(column).view == target.view]


def design_matrix(table: pd.DataFrame, target: Target, task: Task, columns: Sequence[str]
                  ) -> tuple[pd.DataFrame, pd.DataFrame]:
    """``(keys, X)`` of a target from a prepared feature table (``study_id, condition, level`` + features).

    ``keys``: ``study_id, level`` of the target's rows (its ``roi_condition``'s rows at the task's levels),
    in the table's order; ``X``: ``columns`` then :data:`LEVEL_FEATURE` (level index), float64, same rows.
    """
    rows = (table["condition"] == target.roi_condition).to_numpy() & table["level"].isin(task.levels).to_numpy()
    keys = table.loc[rows, ["study_id", "level"]].reset_index(drop=True)
    X = table.loc[rows, list(columns)].reset_index(drop=True)
    X[LEVEL_FEATURE] = pd.Index(task.levels).get_indexer(keys["level"]).astype(np.float64)
    return keys, X


def _grades_of(keys: pd.DataFrame, labels: pd.DataFrame, target: Target) -> np.ndarray:
    """(n_rows,) grade index of each key row, -1 where it has no label."""
    mine = labels[(labels["target"] == target.name) & labels["grade"].notna()]
    merged = keys.merge(mine[["study_id", "level", "grade"]], on=["study_id", "level"], how="left",
                        validate="one_to_one")
    return merged["grade"].astype("Float64").fillna(-1).to_numpy(np.int64)


def _averaged(members: dict[str, _GBMClassifierBase], X: pd.DataFrame, n_grades: int, prior: np.ndarray
              ) -> np.ndarray:
    """The members' mean ``(n_rows, K)`` probabilities; ``prior``: the ``(n_rows, K)`` level-only prior of each
    row, which they boost from."""
    return np.mean([cv.class_proba(estimator, X, n_grades, prior) for estimator in members.values()], axis=0)


def _long(keys: pd.DataFrame, target: Target, proba: np.ndarray, task: Task) -> pd.DataFrame:
    frame = pd.DataFrame(np.full((len(keys), task.max_grades), np.nan), columns=list(task.probability_columns))
    frame.iloc[:, :target.n_grades] = proba
    return pd.concat([keys[["study_id"]].assign(target=target.name, level=keys["level"].to_numpy()), frame],
                     axis=1)


# --- trained models -------------------------------------------------------------------------------------------


@dataclass
class TargetModel:
    """One target's fitted members, its design matrix's columns and its level-only prior ``(levels, K)``."""

    target: Target
    feature_columns: tuple[str, ...]
    members: dict[str, _GBMClassifierBase]
    prior: np.ndarray


@dataclass
class TrainedTargetModels:
    """What :func:`train_target_models` fitted: per target its members and prior; ``report`` holds the
    out-of-fold scores (model card), ``oof_predictions`` the out-of-fold long predictions."""

    task: Task
    config: ModelsConfig
    models: list[TargetModel]
    report: dict[str, Any] = field(default_factory=dict)
    oof_predictions: pd.DataFrame | None = None

    def predict(self, features: pd.DataFrame, study_ids: Sequence[int]) -> tuple[pd.DataFrame, pd.DataFrame]:
        """Long predictions for every target and level of every study in ``study_ids``, and the rows filled.

        A row with a feature row holding any extracted value is predicted by the members; a row whose crop
        failed (all features NaN) or that has no feature row is filled with the target's level-only prior.

        Raises:
            DataError: the table lacks a feature column the models were trained on.

        Returns:
            ``(predictions, filled)``: ``predictions`` has ``study_id, target, level`` and
            ``task.probability_columns`` for every study x target x level, in that order; ``filled`` the keys
            of the rows that came from the prior.
        """
        study_ids = np.asarray(sorted({int(s) for s in study_ids}), dtype=np.int64)
        prepare_features(features, self.config.extractors)  # validates; the values stay in `features`
        table = features
        missing = sorted({c for model in self.models for c in model.feature_columns[:-1]} - set(table.columns))
        if missing:
            raise DataError(f"the feature table lacks {len(missing)} column(s) the models were trained on "
                            f"({', '.join(missing[:3])}...): compute the features with the training run's config")
        parts, filled = [], []
        with single_threaded_blas():
            for model in self.models:
                grid = pd.DataFrame({"study_id": np.repeat(study_ids, len(self.task.levels)),
                                     "level": np.tile(self.task.levels, len(study_ids))})
                keys, X = design_matrix(table, model.target, self.task, model.feature_columns[:-1])
                predicted = X.drop(columns=LEVEL_FEATURE).notna().any(axis=1).to_numpy()
                proba = model.prior[pd.Index(self.task.levels).get_indexer(grid["level"])]
                position = grid.merge(keys[predicted].reset_index(), on=["study_id", "level"], how="left")["index"]
                found = position.notna().to_numpy()
                if found.any():
                    rows = position[found].to_numpy(np.int64)
                    proba[found] = _averaged(model.members, X.iloc[rows].reset_index(drop=True),
                                             model.target.n_grades, proba[found])
                parts.append(_long(grid, model.target, proba, self.task))
                filled.append(grid[~found].assign(target=model.target.name)[_KEY])
        return pd.concat(parts, ignore_index=True), pd.concat(filled, ignore_index=True)

    def save(self, directory: str | Path) -> Path:
        """Write ``model_card.json``, the boosters under ``targets/<target>/<member>/`` and
        ``oof_predictions.csv`` into ``directory``; returns the card's path."""
        directory = Path(directory)
        targets = []
        for model in self.models:
            members = save_member_boosters(directory, Path("targets") / model.target.name, model.members)
            for name, estimator in model.members.items():
                members[name]["class"] = type(estimator).__name__
            targets.append({"target": model.target.name, "feature_columns": list(model.feature_columns),
                            "members": members, "prior": model.prior.tolist()})
        card = {"format": CARD_FORMAT, "task": self.task.name, "config": self.config.model_dump(mode="json"),
                "config_hash": config_hash(self.config), "versions": library_versions(), "targets": targets,
                "report": self.report}
        return write_model_card(directory, card, self.oof_predictions)

    @classmethod
    def load(cls, directory: str | Path) -> TrainedTargetModels:
        """Read models written by :meth:`save`."""
        directory = Path(directory)
        card_path = directory / MODEL_CARD
        if not card_path.is_file():
            raise MissingInputError(f"{card_path} does not exist: run `radiospine train-gbm` first")
        card = json.loads(card_path.read_text())
        if card.get("format") != CARD_FORMAT:
            raise DataError(f"{card_path} is not a per-target model card (format {card.get('format')!r}); it was "
                            f"trained for another task: retrain with `radiospine train-gbm --force` and this config")
        task = get_task(card["task"])
        models = [TargetModel(task.target(entry["target"]), tuple(entry["feature_columns"]),
                              {name: _ESTIMATORS[member["class"]].from_native(directory / member["path"])
                               for name, member in entry["members"].items()},
                              np.asarray(entry["prior"], dtype=np.float64))
                  for entry in card["targets"]]
        return cls(task, ModelsConfig.model_validate(card["config"]), models, card["report"])


@dataclass(frozen=True)
class _TargetRows:
    """One target's training rows: ``keys`` (``study_id, level``), ``data`` (design matrix, grade indices, weights,
    study ids) and ``fold`` ((n_rows,) fold index), all labelled."""

    target: Target
    keys: pd.DataFrame
    data: FitData
    fold: np.ndarray


def _fold_prior(rows: _TargetRows, task: Task) -> tuple[np.ndarray, dict[int, np.ndarray], list[int]]:
    """Out-of-fold ``(n_rows, K)`` level-only prior probabilities, each fold's ``(levels, K)`` prior (fitted on the
    other folds' rows: what that fold's members boost from), and the folds whose training rows hold a single
    grade (a rare finding, a small data set): no classifier can be fitted on one class, so those folds are
    predicted by the prior (with a warning)."""
    y, levels, target = rows.data.y, rows.keys["level"].to_numpy(), rows.target
    prior = np.empty((len(y), target.n_grades))
    level_index = pd.Index(task.levels).get_indexer(levels)
    single, tables = [], {}
    for k in np.unique(rows.fold):
        train, test = rows.fold != k, rows.fold == k
        tables[int(k)] = metrics.level_prior(levels[train], y[train], target, task.levels)
        prior[test] = tables[int(k)][level_index[test]]
        if len(np.unique(y[train])) < 2:
            logger.warning("%s: the training rows of fold %d hold grade %s only; the fold is predicted by the "
                           "level-only prior", target.name, k, target.grades[int(y[train][0])])
            single.append(int(k))
    return prior, tables, single


def train_target_models(features: pd.DataFrame, labels: pd.DataFrame, task: Task, config: ModelsConfig,
                        runner: FitRunner | None = None) -> TrainedTargetModels:
    """Fit and score every target of ``task`` (module docstring); BLAS on one thread. ``runner``: where the fits
    run (:mod:`radiospine.models.fits`; None: this process), which does not change the results.

    Raises:
        DataError: a target with fewer than two grades among its labelled rows, or too few labelled studies
            for ``models.n_folds`` folds.
    """
    runner = runner or SerialFits()
    prepared = prepare_features(features, config.extractors)  # validates; the values stay in `features`
    table = features
    labelled = labels[labels["grade"].notna()]
    folds = study_folds(labelled["study_id"].to_numpy(), config.n_folds, config.seed)
    targets: list[_TargetRows] = []
    for target in task.targets:
        keys, X_all = design_matrix(table, target, task, view_columns(prepared.columns, target))
        y = _grades_of(keys, labels, target)
        if len(np.unique(y[y >= 0])) < 2:
            raise DataError(f"target {target.name} has {len(np.unique(y[y >= 0]))} grade(s) among its "
                            f"{int((y >= 0).sum())} labelled rows with features; it needs two or more")
        keep = [c for c in X_all.columns[:-1] if X_all.loc[y >= 0, c].notna().any()] + [LEVEL_FEATURE]
        X = X_all[keep]
        rows = (y >= 0) & keys["study_id"].isin(folds.index).to_numpy()
        X, y, keys = X[rows].reset_index(drop=True), y[rows], keys[rows].reset_index(drop=True)
        groups = keys["study_id"].to_numpy(np.int64)
        weight = (np.asarray(target.weights)[y] if config.sample_weighting == "metric" else np.ones(len(y)))
        fold = folds.reindex(groups).to_numpy(np.int64)
        level_index = pd.Index(task.levels).get_indexer(keys["level"]).astype(np.int64)
        targets.append(_TargetRows(target, keys, FitData(X, y, weight, groups, prior_rows=level_index), fold))

    priors = {rows.target.name: _fold_prior(rows, task) for rows in targets}
    final_priors = {rows.target.name: metrics.level_prior(rows.keys["level"].to_numpy(), rows.data.y, rows.target,
                                                          task.levels) for rows in targets}

    def batches() -> Iterator[tuple[FitData, list[Fit]]]:
        for rows in targets:
            fits = []
            _, tables, single = priors[rows.target.name]
            for member in config.members:
                make = partial(make_member_estimator, member, config, threads=runner.threads)
                key = (rows.target.name, member.name)
                fits += [replace(fit, prior=tables[fit.key[-1]])
                         for fit in fold_fits(key, make, rows.data.y, rows.fold, config.seed, rows.target.n_grades)
                         if fit.key[-1] not in single]
                fits.append(Fit((*key, None), make, config.seed, np.arange(len(rows.data.y)),
                                prior=final_priors[rows.target.name]))
            yield rows.data, fits

    results: dict[tuple, Any] = {}
    with single_threaded_blas():
        for fit, result, _ in runner.run(batches()):
            results[fit.key] = result
        models, oof_parts, prior_parts = [], [], []
        for rows in targets:
            target, (prior_oof, _, single) = rows.target, priors[rows.target.name]
            oof = prior_oof.copy()
            for k in np.unique(rows.fold):
                if int(k) not in single:
                    oof[rows.fold == k] = np.mean([results[target.name, member.name, int(k)]
                                                   for member in config.members], axis=0)
            members = {member.name: results[target.name, member.name, None] for member in config.members}
            models.append(TargetModel(target, tuple(rows.data.X.columns), members, final_priors[target.name]))
            oof_parts.append(_long(rows.keys, target, oof, task))
            prior_parts.append(_long(rows.keys, target, prior_oof, task))
            logger.info("%s: %d labelled rows, %d feature columns", target.name, len(rows.data.y),
                        rows.data.X.shape[1])
    oof_predictions = pd.concat(oof_parts, ignore_index=True)
    scores = metrics.score_targets(labels, oof_predictions, task, baseline=pd.concat(prior_parts,
                                                                                      ignore_index=True))
    report = {"n_folds": config.n_folds, "studies": len(folds),
              "failed_rows": prepared.failed_rows,
              "oof_scores": json.loads(scores.to_json(orient="records"))}
    return TrainedTargetModels(task, config, models, report, oof_predictions)
