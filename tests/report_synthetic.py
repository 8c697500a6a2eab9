"""Synthetic :class:`~radiospine.report.inputs.ReportInputs` with real models, for the report's tests and its
browser check.

The feature table and labels come from :func:`models_synthetic.make_feature_table`
(``tests/models_synthetic.py``), with its columns renamed to the feature stage's real names (radiomics classes
and filters in three views, CNN probabilities). Per base condition one LightGBM
:class:`~radiospine.models.ordinal.OrdinalGBMClassifier` is fitted on the group's rows plus the level (and side)
feature; out-of-fold predictions come from study-grouped folds (:func:`radiospine.models.cv.assign_study_folds`),
the shown predictions from the model fitted on all rows, and the SHAP values from that model's own
:meth:`~radiospine.models.ordinal.OrdinalGBMClassifier.shap_values`. Thumbnails are drawn on request: a bright
disc (smaller when the row is more severe) on a noisy background, with a disc mask.

``hostile`` puts a given string (``<script>alert(1)</script>``) into a series description, a feature name, the
model card and the data set facts, to show that the report escapes them.
"""

from __future__ import annotations

import itertools
import zlib
from dataclasses import dataclass

import numpy as np
import pandas as pd
from models_synthetic import make_feature_table

from radiospine import vocab
from radiospine.artifacts import library_versions
from radiospine.features.columns import (
    CNN_PROBABILITY_FEATURES,
    LEVEL_FEATURE,
    SIDE_FEATURE,
    feature_column,
    is_status_column,
    parse_column,
)
from radiospine.models import cv
from radiospine.models.ordinal import OrdinalGBMClassifier
from radiospine.report.inputs import ConditionExplanation, ReportInputs, Thumbnail

_VIEWS_OF_BASE = {vocab.SPINAL: ("sagittal_t2", "axial_t2", "sagittal_t1"), vocab.FORAMINAL: ("sagittal_t1",),
                  vocab.SUBARTICULAR: ("axial_t2",)}
#: One view per base condition, in :data:`radiospine.vocab.BASE_CONDITIONS` order.
_VIEWS = tuple(vocab.VIEW_OF_BASE_CONDITION[base] for base in vocab.BASE_CONDITIONS)
_FILTERS = ("original", "log-sigma-1-0-mm-2D", "log-sigma-3-0-mm-2D", "wavelet-LH", "wavelet-HL", "wavelet-HH")
_MEASURES = (("firstorder", "Mean"), ("glcm", "Contrast"), ("glcm", "JointEntropy"), ("glrlm", "RunEntropy"),
             ("glszm", "ZoneEntropy"), ("gldm", "DependenceEntropy"), ("ngtdm", "Busyness"),
             ("firstorder", "Entropy"), ("shape2D", "MajorAxisLength"))


def realistic_feature_names(n_radiomics: int, n_cnn: int) -> list[str]:
    """``n_radiomics`` radiomics names (views x filters x classes, then their ``mean25d_`` slice means) and
    ``n_cnn`` (at most 9) CNN probability names, as the feature stage writes them."""
    radiomics = [feature_column("radiomics", view, f"{prefix}{image_filter}_{cls}_{measure}")
                 for prefix in ("", "mean25d_")
                 for image_filter, (cls, measure), view in itertools.product(
                     _FILTERS, _MEASURES, _VIEWS)]
    if n_radiomics > len(radiomics):
        raise ValueError(f"at most {len(radiomics)} synthetic radiomics names, {n_radiomics} asked for")
    cnn = [feature_column("cnn", view, name) for view in _VIEWS for name in CNN_PROBABILITY_FEATURES][:n_cnn]
    return radiomics[:n_radiomics] + cnn


@dataclass(frozen=True)
class SyntheticThumbnails:
    """A picklable thumbnail source: ``views`` thumbnails of ``size`` x ``size`` pixels per row; the disc
    shrinks with the row's true severity when known (``severity`` keyed by (study_id, condition, level))."""

    severity: dict[tuple[int, str, str], int]
    views: int = 1
    size: int = 80

    def __call__(self, study_id: int, condition: str, level: str) -> list[Thumbnail]:
        base = vocab.split_condition(condition).base
        grade = self.severity.get((study_id, condition, level), 0)
        views = (_VIEWS_OF_BASE[base] * 3)[: self.views]
        thumbnails = []
        for k, view in enumerate(views):
            rng = np.random.default_rng(zlib.crc32(f"{study_id}/{condition}/{level}/{k}".encode()))
            rows, cols = np.mgrid[: self.size, : self.size] - (self.size - 1) / 2.0
            radius = np.hypot(rows, cols)
            disc_radius = self.size * (0.3 - 0.07 * grade)
            image = 0.25 + 0.6 * (radius < disc_radius) + rng.normal(scale=0.06, size=radius.shape)
            mask = (radius < self.size * 0.22).astype(np.uint8)
            thumbnails.append(Thumbnail(view=view, image=np.clip(image, 0.0, 1.0).astype(np.float32), mask=mask,
                                        caption=f"synthetic, slice {k}"))
        return thumbnails


def _fit_ordinal(design: pd.DataFrame, target: np.ndarray, train: np.ndarray, n_estimators: int,
                 seed: int) -> OrdinalGBMClassifier:
    """A small LightGBM ordinal model on the rows ``train`` (boolean mask) of ``design``, weighted 1/2/4."""
    severity = target[train].astype(np.int64)
    model = OrdinalGBMClassifier(n_estimators=n_estimators, learning_rate=0.1, num_leaves=7, min_child_samples=3,
                                 colsample=0.8, random_state=seed, n_jobs=1)
    return model.fit(design[train], severity, sample_weight=np.asarray(vocab.SEVERITY_WEIGHTS)[severity])


def synthetic_report_inputs(
    n_studies: int = 5,
    n_features: int = 40,
    *,
    n_folds: int = 2,
    thumbnail_views: int = 1,
    hostile: str | None = None,
    n_estimators: int = 40,
    seed: int = 0,
) -> ReportInputs:
    """Report inputs for ``n_studies`` synthetic studies with ``n_features`` features per row (radiomics,
    and up to 9 CNN probabilities); see the module docstring. ``thumbnail_views``: thumbnails per row."""
    table = make_feature_table(n_studies, n_features, class_fractions=(0.6, 0.25, 0.15), seed=seed)
    old_names = [c for c in table.features.columns if c not in vocab.KEY_COLUMNS and not is_status_column(c)]
    n_cnn = min(sum(parse_column(name).extractor == "cnn" for name in old_names),
                len(_VIEWS) * len(CNN_PROBABILITY_FEATURES))
    new_names = realistic_feature_names(len(old_names) - n_cnn, n_cnn)
    if hostile is not None:
        new_names[-1] = feature_column("radiomics", "axial_t2", f"original_firstorder_{hostile}")
    features = table.features.rename(columns=dict(zip(old_names, new_names)))
    labels = table.labels
    folds = cv.assign_study_folds(labels, n_folds, seed)
    severity = labels["severity"].to_numpy(dtype=np.float64, na_value=np.nan)
    row_fold = labels["study_id"].map(folds).to_numpy()

    oof = np.zeros((len(labels), len(vocab.SEVERITIES)))
    final = np.zeros_like(oof)
    explanations = {}
    bases = features["condition"].map(lambda c: vocab.split_condition(c).base).to_numpy()
    for base in vocab.BASE_CONDITIONS:
        rows = np.flatnonzero(bases == base)
        design = features.iloc[rows][new_names].reset_index(drop=True)
        design[LEVEL_FEATURE] = pd.Index(vocab.LEVELS).get_indexer(features["level"].iloc[rows]).astype(np.float64)
        if base != vocab.SPINAL:
            design[SIDE_FEATURE] = features["condition"].iloc[rows].str.startswith("left_").to_numpy(np.float64)
        target = severity[rows]
        labelled = ~np.isnan(target)

        for fold in range(n_folds):
            held_out = row_fold[rows] == fold
            model = _fit_ordinal(design, target, labelled & ~held_out, n_estimators, seed)
            oof[rows[held_out]] = cv.class_proba(model, design[held_out], len(vocab.SEVERITIES))
        model = _fit_ordinal(design, target, labelled, n_estimators, seed)
        final[rows] = cv.class_proba(model, design, len(vocab.SEVERITIES))
        thresholds = model.classes_[:-1]
        outputs = [(f"lightgbm ordinal: log-odds of P(severity > {vocab.SEVERITIES[int(c)]})",
                    " or ".join(vocab.SEVERITY_LABELS[int(c) + 1:])) for c in thresholds]
        explanations[base] = ConditionExplanation.from_contributions(
            group=base, model=f"synthetic LightGBM ordinal model, {model.n_rounds_} rounds",
            feature_names=list(design.columns), feature_values=design.to_numpy(dtype=np.float64),
            row_keys=features.iloc[rows][list(vocab.KEY_COLUMNS)], contributions=model.shap_values(design),
            outputs=outputs,
        )

    keys = labels[list(vocab.KEY_COLUMNS)]
    probability_columns = list(vocab.SEVERITIES)
    oof_predictions = pd.concat([keys, pd.DataFrame(oof, columns=probability_columns)], axis=1)
    predictions = pd.concat([keys, pd.DataFrame(final, columns=probability_columns)], axis=1)
    study_ids = sorted(labels["study_id"].unique().tolist())
    series = pd.DataFrame([
        {"study_id": study_id, "series_id": 1000 * (i + 1) + k, "series_description": description}
        for i, study_id in enumerate(study_ids) for k, description in enumerate(vocab.SERIES_DESCRIPTIONS)
    ])
    if hostile is not None:
        series.loc[0, "series_description"] = hostile
    truth = {key: int(s) for key, s in zip(keys.itertuples(index=False, name=None), labels["severity"])
             if not pd.isna(s)}
    model_card = {"format": "synthetic", "members": ["lightgbm ordinal"], "n_estimators": n_estimators,
                  "notes": hostile or "synthetic models on a synthetic feature table"}
    facts: dict[str, object] = {"data": "synthetic (tests/report_synthetic.py)"}
    if hostile is not None:
        facts[hostile] = hostile
    return ReportInputs(
        title="radiospine synthetic report",
        series=series,
        labels=labels,
        oof_predictions=oof_predictions,
        cv_scores=cv.fold_scores(labels, oof_predictions, folds),
        predictions=predictions,
        explanations=explanations,
        thumbnails=SyntheticThumbnails(truth, views=thumbnail_views),
        model_card=model_card,
        provenance={"versions": library_versions(), "config_hash": "synthetic", "seed": seed},
        dataset_facts=facts,
    )

