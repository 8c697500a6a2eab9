"""Disc signal against the vertebral marrow beside it, and the disc's height, from a crop centred on a disc.

Radiologists grade a disc's degeneration (Pfirrmann) by the T2 signal of its nucleus against a reference and by
the disc's height. The crop's intensities are scaled per slice (:mod:`radiospine.roi.cut`), which differs
between studies with the scanner and the field of view; the marrow of the vertebral bodies directly above and
below the disc is a reference inside the same crop. (The CSF of the canal at the same level was tried as the
reference and described Pfirrmann less well on SPIDER: a stenosed canal at a degenerated disc holds little CSF.)

What is measured, on the crop's centre slice (``(row, col)``, ``pixel_mm`` per pixel, the rows along the source
image's row direction, which on a sagittal slice runs head to feet), smoothed by a Gaussian of one pixel:

* the *profile*: the mean intensity of each row over the columns within ``_BAND_MM`` of the centre column, a
  function of the signed distance ``t`` (mm) from the centre row along the rows;
* ``marrow_ratio``: the profile's mean over ``|t| <= _CENTRE_MM`` (the nucleus) divided by its median over
  ``_MARROW_MM[0] <= |t| <= _MARROW_MM[1]`` (the vertebral bodies above and below: a lumbar disc is about
  7-12 mm high, so these rows lie in the bodies; the endplates are excluded);
* ``height_mm``: the distance between the rows of the steepest profile change within ``_EDGE_MM`` above and
  below the centre (the disc's edges against the endplates).

Both are symmetric in ``t``, so the crop's up-down orientation does not matter. The crop must be centred on
the disc (``radiospine import-volumes --points disc``, or a localiser trained on such points) and at least
``2 * _MARROW_MM[1]`` mm high; on other crops the figures mean nothing (the RSNA task does not use them).
On SPIDER (155 lumbar discs, computed on the original volumes at the mask-derived disc centres) the ratio's
Spearman correlation with the Pfirrmann grade is -0.60, against -0.52 for the nucleus intensity scaled by the
slice's 99.5th percentile and -0.46 for the nucleus against the canal's CSF.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import numpy as np
from scipy import ndimage

from radiospine.features.base import ExtractionResult
from radiospine.hashing import json_hash
from radiospine.roi.types import RoiCrop

#: Half-width of the column band the profile averages (mm each side of the centre column).
_BAND_MM = 4.0
#: Half-height of the nucleus' rows (mm each side of the centre row).
_CENTRE_MM = 1.5
#: Distances from the centre row of the marrow's rows (mm, above and below).
_MARROW_MM = (9.0, 14.0)
#: Distances from the centre row within which each edge of the disc is sought (mm, above and below).
_EDGE_MM = (1.5, 9.0)
#: Marrow no brighter than this (in the crop's [0, 1] scale) is no reference: a crop off the spine.
_MIN_MARROW = 1e-3

FEATURE_NAMES: tuple[str, ...] = ("marrow_ratio", "height_mm")


def describe_disc(image: np.ndarray, pixel_mm: float) -> dict[str, float]:
    """:data:`FEATURE_NAMES` of one ``(row, col)`` centre slice centred on a disc (module docstring).

    Raises:
        ValueError: the slice is smaller than the profile needs, or its marrow rows are dark (no reference).
    """
    rows, cols = image.shape
    t = (np.arange(rows) - (rows - 1) / 2) * pixel_mm
    if t[-1] < _MARROW_MM[1]:
        raise ValueError(f"crop of {rows * pixel_mm:.0f} mm is too small: the disc signal needs "
                         f"{2 * _MARROW_MM[1]:.0f} mm above and below the disc centre")
    band = np.abs((np.arange(cols) - (cols - 1) / 2) * pixel_mm) <= _BAND_MM
    profile = ndimage.gaussian_filter(np.asarray(image, dtype=np.float64), 1.0)[:, band].mean(axis=1)
    distance = np.abs(t)
    marrow = float(np.median(profile[(distance >= _MARROW_MM[0]) & (distance <= _MARROW_MM[1])]))
    if marrow <= _MIN_MARROW:
        raise ValueError("no vertebral marrow signal above and below the centre (a crop off the spine?)")
    slope = np.abs(np.gradient(profile, t))
    edges = []
    for side in (t > 0, t < 0):
        rows_on_side = np.flatnonzero(side & (distance >= _EDGE_MM[0]) & (distance <= _EDGE_MM[1]))
        edges.append(t[rows_on_side[np.argmax(slope[rows_on_side])]])
    return {"marrow_ratio": float(profile[distance <= _CENTRE_MM].mean()) / marrow,
            "height_mm": float(edges[0] - edges[1])}


class DiscSignalExtractor:
    """The disc's signal against the marrow beside it and its height (module docstring): ``disc__<view>__...``."""

    name = "disc"

    def feature_names(self) -> list[str]:
        return list(FEATURE_NAMES)

    def fingerprint(self) -> str:
        return json_hash({"features": FEATURE_NAMES, "band_mm": _BAND_MM, "centre_mm": _CENTRE_MM,
                          "marrow_mm": _MARROW_MM, "edge_mm": _EDGE_MM})

    def extract(self, crops: Sequence[RoiCrop]) -> list[ExtractionResult]:
        results = []
        for crop in crops:
            started = time.perf_counter()
            try:
                features = describe_disc(crop.image[crop.image.shape[0] // 2], crop.pixel_mm)
            except ValueError as exc:
                results.append(ExtractionResult.failure(str(exc), time.perf_counter() - started))
                continue
            results.append(ExtractionResult.success(features, time.perf_counter() - started))
        return results
