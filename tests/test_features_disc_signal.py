"""The disc-signal extractor (radiospine.features.disc_signal) on drawn slices: the disc's signal against the
marrow above and below it, its height, orientation, failures, and the config switch."""

from __future__ import annotations

import numpy as np
import pytest

from radiospine.config import CONFIG_DIR, load_config
from radiospine.features.disc_signal import FEATURE_NAMES, DiscSignalExtractor, describe_disc
from radiospine.features.stage import build_extractors
from radiospine.roi.types import Roi, RoiCrop

PIXEL_MM = 0.5


def drawn_slice(disc: float, height_mm: float, *, marrow: float = 0.5, size_mm: float = 56.0,
                offset_mm: float = 0.0) -> np.ndarray:
    """A (row, col) slice: marrow everywhere, a horizontal disc band ``height_mm`` high of intensity ``disc``
    centred ``offset_mm`` below the centre row."""
    n = int(round(size_mm / PIXEL_MM)) | 1
    t = (np.arange(n) - (n - 1) / 2) * PIXEL_MM - offset_mm
    column = np.full(n, marrow)
    column[np.abs(t) <= height_mm / 2] = disc
    return np.repeat(column[:, None], n, axis=1)


@pytest.mark.parametrize(("disc", "height_mm"), [(0.8, 10.0), (0.2, 10.0), (0.8, 6.0), (0.3, 4.0)])
def test_the_ratio_and_the_height_of_a_drawn_disc(disc: float, height_mm: float) -> None:
    features = describe_disc(drawn_slice(disc, height_mm), PIXEL_MM)
    assert list(features) == list(FEATURE_NAMES)
    assert features["marrow_ratio"] == pytest.approx(disc / 0.5, rel=0.02)
    assert features["height_mm"] == pytest.approx(height_mm, abs=1.0)


def test_up_and_down_are_alike_and_scaling_cancels() -> None:
    image = drawn_slice(0.7, 8.0, offset_mm=1.0)
    features = describe_disc(image, PIXEL_MM)
    assert describe_disc(image[::-1], PIXEL_MM) == pytest.approx(features)
    assert describe_disc(0.5 * image, PIXEL_MM) == pytest.approx(features)


def test_small_crops_and_dark_marrow_are_failures_with_the_reason() -> None:
    with pytest.raises(ValueError, match="crop of 20 mm is too small"):
        describe_disc(drawn_slice(0.8, 10.0, size_mm=20.0), PIXEL_MM)
    with pytest.raises(ValueError, match="no vertebral marrow signal"):
        describe_disc(drawn_slice(0.8, 10.0, marrow=0.0), PIXEL_MM)
    roi = Roi(1, 1, 0, "spinal_canal_stenosis", "l4_l5", "sagittal_t2", (0.0, 0.0, 0.0), (20.0, 20.0), (0, 1, 2))
    good, small = (np.stack([drawn_slice(0.8, 10.0, size_mm=size)] * 3).astype(np.float32) for size in (56.0, 20.0))
    crops = [RoiCrop(roi, image, np.ones_like(image, dtype=np.uint8), PIXEL_MM, 1.0) for image in (good, small)]
    results = DiscSignalExtractor().extract(crops)
    assert results[0].ok and results[0].features["marrow_ratio"] == pytest.approx(1.6, rel=0.02)
    assert not results[1].ok and "too small" in results[1].error


def test_the_extractor_is_enabled_by_the_spider_config_only() -> None:
    default = load_config(CONFIG_DIR / "default.yaml", ["features.cnn.enabled=false"])
    assert [e.name for e in build_extractors(default, "train", ".", ".")] == ["radiomics"]
    spider = load_config(CONFIG_DIR / "spider.yaml", ["features.cnn.enabled=false"])
    assert [e.name for e in build_extractors(spider, "train", ".", ".")] == ["radiomics", "disc"]
