"""One interface for feature extractors, and the layout of the feature table.

The feature table
-----------------
One row per ``(study_id, condition, level)`` (:data:`radiospine.vocab.KEY_COLUMNS`; the side is part of the
condition name, ``left_subarticular_stenosis``). Every study has all 25 keys of :data:`radiospine.vocab.TARGET_COLUMNS`,
labelled or not. A key may have crops in several views (the canal on sagittal T2 and on axial T2), so a feature
column names its extractor, its view and the feature::

    radiomics__sagittal_t2__original_glcm_Contrast
    cnn__axial_t2__prob_severe

(built and parsed by :mod:`radiospine.features.columns`), and each extractor has one status column
(``radiomics__status``, ``cnn__status``): ``"ok"`` when every crop of the key was described, else the reasons,
one per view (``"axial_t2: constant intensity inside the mask; sagittal_t2: ok"``). A key without any crop has
NaN features and the status ``"no ROI crop"``; a study whose crops could not be made has NaN features and
``"ROI crops failed: <reason>"``. Nothing turns into NaN silently.

Extractors
----------
:class:`Extractor` turns a batch of :class:`~radiospine.roi.types.RoiCrop` into one
:class:`ExtractionResult` per crop; how it batches is its own business. :class:`TrainableExtractor` is an
extractor that must first be fitted on the crops of the split being described (the CNN trained out-of-fold):
the driver calls :meth:`TrainableExtractor.prepare` per study, then :meth:`TrainableExtractor.fit` once, which
returns a ready :class:`Extractor` (see :mod:`radiospine.features.driver`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np

from radiospine.roi.types import RoiCrop

#: The status of a key whose crops were all described.
STATUS_OK = "ok"
#: The status of a key for which the ROI cutter gave no crop.
STATUS_NO_CROP = "no ROI crop"


@dataclass(frozen=True)
class ExtractionResult:
    """What one extractor made of one crop: features, or the reason there are none.

    Attributes:
        features: feature name (without extractor and view) -> finite float; ``None`` when the crop failed.
        error: why the crop failed (``None`` when it did not).
        seconds: wall time spent on this crop (time shared among crops is counted on the first that used it, or
            divided equally among them).
    """

    features: Mapping[str, float] | None
    error: str | None = None
    seconds: float = field(default=0.0, compare=False)

    def __post_init__(self) -> None:
        if (self.features is None) == (self.error is None):
            raise ValueError("an ExtractionResult holds either features or an error, not both or neither")

    @classmethod
    def success(cls, features: Mapping[str, float], seconds: float = 0.0) -> ExtractionResult:
        bad = [name for name, value in features.items() if not math.isfinite(value)]
        if bad:
            raise ValueError(f"non-finite feature values must be a failure, not features: {bad[:3]}")
        return cls(features=dict(features), error=None, seconds=seconds)

    @classmethod
    def failure(cls, reason: str, seconds: float = 0.0) -> ExtractionResult:
        return cls(features=None, error=str(reason) or "unknown failure", seconds=seconds)

    @property
    def ok(self) -> bool:
        return self.error is None


@runtime_checkable
class Extractor(Protocol):
    """Describes crops with a fixed set of features.

    Attributes:
        name: the namespace of its columns (``"radiomics"``): a snake_case word
            (:func:`radiospine.features.columns.is_extractor_name`).
    """

    name: str

    def feature_names(self) -> list[str]:
        """The names (without extractor and view) every successful result holds, in column order."""

    def fingerprint(self) -> str:
        """A hash of everything besides the pixels that decides the features (parameter file, weights)."""

    def extract(self, crops: Sequence[RoiCrop]) -> list[ExtractionResult]:
        """One result per crop, in the order given."""


@runtime_checkable
class TrainableExtractor(Protocol):
    """An extractor fitted on the crops of the split it describes (phase 1 of a two-phase run).

    ``prepare`` runs per study in the workers and returns small arrays (saved by the driver as
    ``<workdir>/inputs/study_<id>.npz``); ``fit`` runs once in the driver's process when every study is
    prepared, may save models under ``workdir`` (and reuse them when a killed run is resumed), and returns
    the ready extractor of the same ``name``.
    """

    name: str

    def feature_names(self) -> list[str]:
        """The feature names of the fitted extractor (known before fitting: they make the table's schema)."""

    def fingerprint(self) -> str:
        """A hash of the settings and labels that decide the fitted extractor."""

    def prepare(self, crops: Sequence[RoiCrop]) -> dict[str, np.ndarray]:
        """Arrays that ``fit`` needs from one study's crops (``crops`` may be empty)."""

    def fit(self, workdir: Path, study_ids: Sequence[int], *, threads: int, progress: bool) -> Extractor:
        """Fit on the prepared studies ``workdir/inputs/study_<id>.npz`` and return the ready extractor."""
