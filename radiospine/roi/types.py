"""The ROI types shared by the ROI cutter, the feature extractors and the reports."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

from radiospine.vocab import View

#: Where an ROI centre came from: a label coordinate, the localiser, or geometry shared from another series.
RoiSource = Literal["label", "predicted", "fallback"]


@dataclass(frozen=True)
class Roi:
    """Where to cut: one condition (side included) at one level, in one view of one series stack.

    Attributes:
        study_id, series_id, stack_index: the series stack the ROI is cut from.
        condition: full condition name from :mod:`radiospine.vocab` (``"left_subarticular_stenosis"``).
        level: ``"l1_l2"`` .. ``"l5_s1"``.
        view: which kind of image the crop shows.
        centre_lps: ROI centre in patient LPS mm.
        size_mm: in-plane crop size ``(height along image rows, width along image columns)`` in mm.
        slice_indices: stack slice indices used (centre slice in the middle, neighbours for a 2.5D stack).
        source: where the centre came from.
    """

    study_id: int
    series_id: int
    stack_index: int
    condition: str
    level: str
    view: View
    centre_lps: tuple[float, float, float]
    size_mm: tuple[float, float]
    slice_indices: tuple[int, ...]
    source: RoiSource = "label"

    @property
    def key(self) -> tuple[int, str, str]:
        """The feature-table key ``(study_id, condition, level)``."""
        return (self.study_id, self.condition, self.level)


@dataclass(frozen=True, eq=False)
class RoiCrop:
    """The pixels of one ROI, resampled to a fixed in-plane spacing.

    Attributes:
        roi: what was cut.
        image: ``(slice, row, col)`` float32, intensities normalised per series (see the ROI config);
            the middle slice is the ROI's centre slice; rows/cols follow the source image's row/column
            directions.
        mask: ``(slice, row, col)`` uint8, 1 inside the region that radiomics describes.
        pixel_mm: the in-plane spacing of ``image`` in mm (rows and columns alike).
        slice_mm: the distance between ``image`` slices in mm.
    """

    roi: Roi
    image: np.ndarray
    mask: np.ndarray
    pixel_mm: float
    slice_mm: float

    def __post_init__(self) -> None:
        if self.image.ndim != 3 or self.image.shape != self.mask.shape:
            raise ValueError(
                f"RoiCrop image {self.image.shape} and mask {self.mask.shape} must both be (slice, row, col)"
            )
