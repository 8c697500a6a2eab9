"""Synthetic ROI crops for the feature tests: a bright disc on a darker, noisy background.

The disc's radius shrinks with the key's synthetic severity (a narrowed canal), so features have a known order:
a larger bright disc gives a larger mean intensity inside a fixed mask. Everything is seeded by the key.
Importable by worker processes (joblib, Dask) when ``tests/`` is on ``PYTHONPATH``.
"""

from __future__ import annotations

import time
import zlib
from pathlib import Path

import numpy as np

from radiospine import vocab
from radiospine.roi.types import Roi, RoiCrop

#: A small pyradiomics parameter file: true 2D, the original image plus one LoG sigma and the wavelet images.
LIGHT_PARAMS = """\
imageType:
  Original: {}
  LoG:
    sigma: [1.0]
  Wavelet: {}
featureClass:
  shape2D:
  firstorder:
  glcm: [Contrast, Correlation, JointEntropy]
setting:
  label: 1
  binCount: 16
  normalize: false
  minimumROISize: 8
  additionalInfo: false
"""

#: Conditions and the views the synthetic "cutter" gives them (the canal in two views).
VIEWS_OF_CONDITION = {
    "spinal_canal_stenosis": ("sagittal_t2", "axial_t2"),
    "left_neural_foraminal_narrowing": ("sagittal_t1",),
    "right_neural_foraminal_narrowing": ("sagittal_t1",),
    "left_subarticular_stenosis": ("axial_t2",),
    "right_subarticular_stenosis": ("axial_t2",),
}


#: An even smaller parameter file for the run tests: the original image and one LoG image, few features.
RUN_PARAMS = """\
imageType:
  Original: {}
  LoG:
    sigma: [1.0]
featureClass:
  shape2D: [PixelSurface]
  firstorder: [Mean, Variance]
  glcm: [Contrast]
setting:
  label: 1
  binCount: 16
  minimumROISize: 8
"""


def write_light_params(folder: Path, text: str = LIGHT_PARAMS) -> Path:
    path = Path(folder) / "light.yaml"
    path.write_text(text)
    return path


def severity(study_id: int, condition: str, level: str) -> int:
    """A deterministic synthetic severity 0/1/2 of a key."""
    return zlib.crc32(f"{study_id}/{condition}/{level}".encode()) % 3


def disc_crop(study_id: int, condition: str, level: str, view: str, *, disc_radius_px: float,
              brightness: float = 1.0, size: int = 32, slices: int = 3, mask_radius_px: float = 10.0,
              pixel_mm: float = 0.5, seed: int = 0, source: str = "label") -> RoiCrop:
    """A ``(slices, size, size)`` crop: a disc of ``brightness`` on a 0.2 background, Gaussian noise 0.05."""
    rng = np.random.default_rng(seed)
    rows, cols = np.mgrid[:size, :size] - (size - 1) / 2
    radius = np.hypot(rows, cols)
    image = np.where(radius <= disc_radius_px, brightness, 0.2)[None].repeat(slices, axis=0)
    image = (image + 0.05 * rng.standard_normal(image.shape)).astype(np.float32)
    mask = (radius <= mask_radius_px).astype(np.uint8)[None].repeat(slices, axis=0)
    roi = Roi(study_id=study_id, series_id=1000 + len(view), stack_index=0, condition=condition, level=level,
              view=view, centre_lps=(0.0, 0.0, 0.0), size_mm=(size * pixel_mm, size * pixel_mm),
              slice_indices=tuple(range(4, 4 + slices)), source=source)
    return RoiCrop(roi=roi, image=image, mask=mask, pixel_mm=pixel_mm, slice_mm=4.0)


def study_crops(study_id: int, levels: tuple[str, ...] = ("l4_l5", "l5_s1"), *, size: int = 32,
                slices: int = 3) -> list[RoiCrop]:
    """Crops of ``levels`` for every condition in its views; the disc narrows with the key's severity."""
    crops = []
    for condition, views in VIEWS_OF_CONDITION.items():
        for level in levels:
            grade = severity(study_id, condition, level)
            for view in views:
                seed = zlib.crc32(f"{study_id}/{condition}/{level}/{view}".encode())
                crops.append(disc_crop(study_id, condition, level, view, disc_radius_px=9.0 - 3.0 * grade,
                                       size=size, slices=slices, seed=seed))
    return crops


def labels_of(study_ids, levels: tuple[str, ...] = ("l4_l5", "l5_s1")) -> dict[tuple[int, str, str], int]:
    """The synthetic severity of every key of ``levels`` (the other levels are ungraded)."""
    return {(int(s), c, lv): severity(int(s), c, lv) for s in study_ids for c in vocab.CONDITIONS for lv in levels}


def crops_for_study(study_id: int, *, delay: float = 0.0, failing: tuple[int, ...] = (),
                    levels: tuple[str, ...] = ("l4_l5", "l5_s1"), slices: int = 3) -> list[RoiCrop]:
    """The synthetic ROI cutter: ``failing`` studies raise as a missing series would; ``delay`` slows it."""
    if delay:
        time.sleep(delay)
    if study_id in failing:
        raise FileNotFoundError(f"study {study_id}: no Sagittal T2/STIR series")
    return study_crops(study_id, levels, slices=slices)
