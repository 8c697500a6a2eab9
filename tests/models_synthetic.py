"""Synthetic feature tables with ordinal labels, for model tests and benchmarks/bench_formulations.py (no images).

The tables look like the feature stage's output: one row per (study, condition, level), feature columns
``<extractor>__<view>__<name>`` and one ``<extractor>__status`` column per extractor
(:mod:`radiospine.features.columns`). Severity is an ordinal latent cut at two thresholds: the latent adds a
per-study degeneration score, a per-level offset (worst at L4/L5 and L5/S1, as in the real data), a per-(study,
level) term shared by all conditions at that level, and row noise. A few features measure the latent with noise
(some through monotone non-linear transforms); the rest are noise, plus one constant column. Failed extractions
set their status to a reason and their features to NaN, as the feature stage does.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from radiospine import vocab
from radiospine.features.columns import feature_column, parse_column, status_column
from radiospine.labels import target_grid

#: Per-level latent offsets, L1/L2 .. L5/S1.
_LEVEL_OFFSET = np.array([-1.0, -0.5, 0.0, 0.6, 0.4])
#: Per-base-condition latent offsets.
_BASE_OFFSET = {vocab.SPINAL: -0.3, vocab.FORAMINAL: 0.1, vocab.SUBARTICULAR: 0.0}
EXTRACTORS: tuple[str, ...] = ("radiomics", "cnn")
FAILURE_REASON = "roi_outside_volume"


@dataclass(frozen=True)
class SyntheticTable:
    """``features``: study_id, condition, level, ``<extractor>__status`` and feature columns.
    ``labels``: long labels as :mod:`radiospine.labels` defines them (``severity`` Int8, ``<NA>`` missing).
    ``latent``: (n_rows,) the noiseless-threshold latent behind each row's severity, aligned with both frames.
    """

    features: pd.DataFrame
    labels: pd.DataFrame
    latent: np.ndarray


def make_feature_table(
    n_studies: int = 40,
    n_features: int = 20,
    *,
    n_informative: int = 6,
    class_fractions: tuple[float, float, float] = (0.72, 0.19, 0.09),
    level_effect: float = 1.0,
    missing_label_fraction: float = 0.012,
    failure_fraction: float = 0.02,
    nan_fraction: float = 0.01,
    seed: int = 0,
) -> SyntheticTable:
    """A synthetic feature table and its long labels: ``25 * n_studies`` rows.

    ``n_features`` feature columns (at least ``n_informative + 1``): ``n_informative`` informative ones, one
    constant column, the rest noise; named like the feature stage's columns, the first half
    ``radiomics__sagittal_t2__original_f<j>``, the rest ``cnn__axial_t2__emb_<j>``.
    ``class_fractions`` sets the share of normal_mild / moderate / severe rows (thresholds are quantiles of
    the latent). ``level_effect`` scales the per-level offsets (0: every level alike).
    ``missing_label_fraction`` of labels are ``<NA>``; ``failure_fraction`` of rows have a failed extractor
    (status set to a reason, its features NaN); ``nan_fraction`` of informative cells are NaN.
    """
    if n_features < n_informative + 1:
        raise ValueError(f"n_features={n_features} must be at least n_informative + 1 = {n_informative + 1}")
    if not np.isclose(sum(class_fractions), 1.0):
        raise ValueError(f"class_fractions {class_fractions} must sum to 1")
    rng = np.random.default_rng(seed)
    study_ids = rng.choice(np.arange(1_000_000, 9_999_999), size=n_studies, replace=False)
    grid = target_grid(study_ids)
    n_rows = len(grid)
    study_index = np.repeat(np.arange(n_studies), len(vocab.TARGET_COLUMNS))
    level_index = pd.Index(vocab.LEVELS).get_indexer(grid["level"])
    base = grid["condition"].map(lambda condition: vocab.split_condition(condition).base)

    degeneration = rng.normal(size=n_studies)[study_index]
    study_level = rng.normal(scale=0.6, size=(n_studies, len(vocab.LEVELS)))[study_index, level_index]
    latent = (
        0.9 * degeneration
        + level_effect * _LEVEL_OFFSET[level_index]
        + base.map(_BASE_OFFSET).to_numpy()
        + study_level
        + rng.normal(scale=0.5, size=n_rows)
    )
    thresholds = np.quantile(latent, np.cumsum(class_fractions)[:2])
    severity = np.searchsorted(thresholds, latent).astype(np.int64)

    columns: dict[str, np.ndarray] = {}
    names = _feature_names(n_features)
    for j, name in enumerate(names):
        if j < n_informative:
            measured = latent + rng.normal(scale=0.6 + 0.3 * j, size=n_rows)
            values = np.exp(0.5 * measured) if j % 3 == 2 else measured
            values[rng.random(n_rows) < nan_fraction] = np.nan
        elif j == n_informative:
            values = np.full(n_rows, 3.0)
        else:
            values = rng.normal(size=n_rows)
        columns[name] = values
    features = grid.copy()
    for extractor in EXTRACTORS:
        failed = rng.random(n_rows) < failure_fraction
        features[status_column(extractor)] = np.where(failed, FAILURE_REASON, "ok")
        for name in names:
            if parse_column(name).extractor == extractor:
                columns[name][failed] = np.nan
    features = pd.concat([features, pd.DataFrame(columns)], axis=1)

    labels = grid.copy()
    labels["severity"] = pd.array(severity, dtype="Int8")
    labels.loc[rng.random(n_rows) < missing_label_fraction, "severity"] = pd.NA
    return SyntheticTable(features=features, labels=labels, latent=latent)


def _feature_names(n_features: int) -> list[str]:
    n_radiomics = (n_features + 1) // 2
    return [feature_column("radiomics", "sagittal_t2", f"original_f{j:03d}") for j in range(n_radiomics)] + [
        feature_column("cnn", "axial_t2", f"emb_{j:03d}") for j in range(n_features - n_radiomics)
    ]
