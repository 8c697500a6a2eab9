"""Radiomics features of ROI crops with pyradiomics, in true 2D per slice, aggregated over the crop's slices.

What is computed is decided by a pyradiomics parameter file (pyradiomics' own YAML format, shipped in
``configs/radiomics/``); this module decides only how images reach pyradiomics:

* Every slice of a crop is passed as a **2D** SimpleITK image (spacing ``pixel_mm`` x ``pixel_mm``) with its 2D
  mask. (One-slice 3D images with ``force2D`` would lose the LoG and wavelet images; DESIGN.md section 5.)
* Per crop the features are reported for the **centre slice** under pyradiomics' own names
  (``original_glcm_Contrast``), and, when ``slice_mean`` is on, as the **mean over the crop's slices**
  (centre and 2.5D neighbours) whose mask is not empty, prefixed ``mean25d_``, with ``n_slices`` the number of
  slices in that mean. The crop fails (a recorded reason, no features) when its centre slice cannot be described:
  empty mask, constant intensity inside the mask, non-finite pixels or features, a mask below
  ``minimumROISize``. A neighbour slice that cannot be described is left out of the mean (``n_slices`` shows it).
* 3D extraction over the crop stack is not done: the stacks are 3 to 5 slices of 3-4 mm against 0.5 mm pixels,
  too thin and anisotropic for 3D texture; the slice mean carries the through-plane information.
* **Shared filtered images.** pyradiomics' ``execute`` filters the image again for every mask. Here the
  preprocessing and the filtered images (Original, LoG, Wavelet ... as configured) of a slice are computed once
  per distinct slice image and reused for every mask drawn on the same pixels within one :meth:`extract` call
  (crops of one study): crops that the ROI cutter cuts from the same window of the same slice (left and right
  recesses in one axial window, say) share them. The features themselves are computed with pyradiomics' own
  ``computeShape`` / ``computeFeatures`` exactly as ``execute`` does; a test checks the values are identical
  to ``RadiomicsFeatureExtractor.execute`` on the same 2D image and mask.

Settings that make pyradiomics' preprocessing depend on the mask (``resampledPixelSpacing``, ``preCrop``,
``resegmentRange``) and 3D-only classes (``shape``, ``LBP3D``) are rejected with a message naming the file:
crops arrive already resampled to a fixed spacing and the images are 2D.

pyradiomics attaches a stderr handler to its ``radiomics`` logger at import and logs at INFO; its logger is set
to WARNING only for the duration of each call here (never at import).
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import logging
import math
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk
import yaml

from radiospine.features.base import ExtractionResult
from radiospine.roi.types import RoiCrop

log = logging.getLogger(__name__)

#: Prefix of the slice-mean features.
MEAN_PREFIX = "mean25d_"
#: The feature counting the slices in the mean.
N_SLICES_FEATURE = "n_slices"

_MASK_DEPENDENT_SETTINGS = ("resampledPixelSpacing", "preCrop", "resegmentRange")
_THREE_D_ONLY = {"featureClass": ("shape",), "imageType": ("LBP3D",)}
#: pyradiomics' warning at construction when binCount is set; the parameter files explain why binCount is used.
_BIN_COUNT_WARNING = "Fixed bin Count enabled"


class _DropMessage(logging.Filter):
    def __init__(self, prefix: str) -> None:
        super().__init__()
        self.prefix = prefix

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(self.prefix)


@contextlib.contextmanager
def quiet_pyradiomics() -> Iterator[None]:
    """pyradiomics' loggers (and pykwalify's, which validates its parameter files) at WARNING inside the block.

    pyradiomics sets its logger to INFO when it is imported, so it is imported first; the levels are restored
    after the block.
    """
    import radiomics  # noqa: F401  (its import sets the level this block overrides)

    loggers = [logging.getLogger("radiomics"), logging.getLogger("pykwalify")]
    before = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.WARNING)
    try:
        yield
    finally:
        for logger, level in zip(loggers, before):
            logger.setLevel(level)


class RadiomicsExtractor:
    """pyradiomics features of crops (see the module docstring for what reaches pyradiomics).

    Args:
        params_path: a pyradiomics parameter file (YAML). Read when the extractor is made, so workers on other
            machines (a Dask cluster) need only the pickled extractor, not the file.
        slice_mean: also report the mean over the crop's slices (``mean25d_`` names) and ``n_slices``.
    """

    name = "radiomics"

    def __init__(self, params_path: str | Path, *, slice_mean: bool = True) -> None:
        self.params_path = Path(params_path)
        try:
            self.params_text = self.params_path.read_text()
        except FileNotFoundError:
            raise FileNotFoundError(
                f"pyradiomics parameter file {self.params_path} does not exist; set features.radiomics.params "
                f"to one of the files in configs/radiomics/ or to your own file") from None
        self.slice_mean = bool(slice_mean)
        self._slice_feature_names: list[str] | None = None

    def fingerprint(self) -> str:
        text = json.dumps({"params": self.params_text, "slice_mean": self.slice_mean}, sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    def slice_feature_names(self) -> list[str]:
        """pyradiomics' names for one slice (``original_shape2D_Elongation`` ...), in its order.

        Found once by describing a small seeded probe image (pyradiomics names its filtered images only when
        it makes them), then cached.
        """
        if self._slice_feature_names is None:
            rng = np.random.default_rng(0)
            rows, cols = np.mgrid[:64, :64]
            probe = (0.5 + 0.1 * rng.standard_normal((64, 64))).astype(np.float32)
            probe_mask = ((rows - 32) ** 2 + (cols - 32) ** 2 <= 14 ** 2).astype(np.uint8)
            with quiet_pyradiomics():
                features = self._describe_slice(probe, probe_mask, 0.5, {})
            self._slice_feature_names = list(features)
        return list(self._slice_feature_names)

    def feature_names(self) -> list[str]:
        names = self.slice_feature_names()
        if not self.slice_mean:
            return names
        return [*names, *(MEAN_PREFIX + name for name in names), N_SLICES_FEATURE]

    def extract(self, crops: Sequence[RoiCrop]) -> list[ExtractionResult]:
        """One result per crop. Filtered slice images are shared among crops cut from identical pixels."""
        expected = self.slice_feature_names()
        filtered_cache: dict[bytes, tuple[sitk.Image, list[tuple[sitk.Image, str, dict]]]] = {}
        results = []
        with quiet_pyradiomics():
            for crop in crops:
                start = time.perf_counter()
                try:
                    features = self._describe_crop(crop, expected, filtered_cache)
                except Exception as exc:  # any failure of one ROI is recorded with its reason; the run goes on
                    log.debug("radiomics failed on %s", crop.roi, exc_info=True)
                    results.append(ExtractionResult.failure(_reason(exc), time.perf_counter() - start))
                else:
                    results.append(ExtractionResult.success(features, time.perf_counter() - start))
        return results

    # --- internals ----------------------------------------------------------------------------------

    def _extractor(self) -> Any:
        return _pyradiomics_extractor(self.params_text, str(self.params_path))

    def _describe_crop(self, crop: RoiCrop, expected: list[str],
                       filtered_cache: dict[bytes, tuple[sitk.Image, list[tuple[sitk.Image, str, dict]]]]
                       ) -> dict[str, float]:
        image, mask = crop.image, crop.mask
        if not np.isfinite(image).all():
            raise ValueError("non-finite pixel values in the crop")
        centre = image.shape[0] // 2
        per_slice: list[dict[str, float]] = []
        for index in [centre, *(k for k in range(image.shape[0]) if k != centre)]:
            try:
                features = self._describe_slice(image[index], mask[index], crop.pixel_mm, filtered_cache)
                _check_names(features, expected)
            except Exception as exc:  # a neighbour slice that fails only leaves the mean (n_slices shows it)
                if index == centre:
                    raise
                log.debug("radiomics: slice %d of %s left out of the mean: %s", index, crop.roi, exc)
                continue
            per_slice.append(features)
            if not self.slice_mean:
                break
        result = dict(per_slice[0])
        if self.slice_mean:
            for name in expected:
                result[MEAN_PREFIX + name] = float(np.mean([features[name] for features in per_slice]))
            result[N_SLICES_FEATURE] = float(len(per_slice))
        return result

    def _describe_slice(self, pixels: np.ndarray, mask: np.ndarray, pixel_mm: float,
                        filtered_cache: dict[bytes, tuple[sitk.Image, list[tuple[sitk.Image, str, dict]]]]
                        ) -> dict[str, float]:
        """pyradiomics features of one 2D slice ``(row, col)`` and its mask, as ``execute`` computes them."""
        from radiomics import imageoperations

        extractor = self._extractor()
        settings = dict(extractor.settings)
        inside = mask.astype(bool)
        if not inside.any():
            raise ValueError("empty mask on the slice")
        values = pixels[inside]
        if values.min() == values.max():
            raise ValueError("constant intensity inside the mask (no texture to describe)")

        pixels = np.ascontiguousarray(pixels, dtype=np.float32)
        cache_key = hashlib.blake2b(pixels.tobytes() + repr((pixels.shape, float(pixel_mm))).encode(),
                                    digest_size=16).digest()
        if cache_key not in filtered_cache:
            image = sitk.GetImageFromArray(pixels)
            image.SetSpacing((float(pixel_mm), float(pixel_mm)))
            if settings.get("normalize", False):
                image = imageoperations.normalizeImage(image, **settings)
            filtered = []
            for image_type, custom in extractor.enabledImagetypes.items():
                arguments = dict(settings)
                arguments.update(custom or {})
                # pyradiomics' image generators only read the mask for LBP3D, which is rejected above.
                filtered.extend(getattr(imageoperations, f"get{image_type}Image")(image, None, **arguments))
            filtered_cache[cache_key] = (image, filtered)
        image, filtered = filtered_cache[cache_key]

        mask_image = sitk.GetImageFromArray(np.ascontiguousarray(mask, dtype=np.uint8))
        mask_image.CopyInformation(image)
        mask_image = imageoperations.getMask(mask_image, **settings)
        bounding_box, corrected = imageoperations.checkMask(image, mask_image, **settings)
        if corrected is not None:
            mask_image = corrected
        if bounding_box is None:
            raise ValueError("pyradiomics rejected the mask")
        features: dict[str, Any] = dict(extractor.computeShape(image, mask_image, bounding_box, **settings))
        for filtered_image, image_type_name, arguments in filtered:
            cropped_image, cropped_mask = imageoperations.cropToTumorMask(filtered_image, mask_image, bounding_box,
                                                                          padDistance=0)
            features.update(extractor.computeFeatures(cropped_image, cropped_mask, image_type_name, **arguments))
        values = {name: float(value) for name, value in features.items() if not name.startswith("diagnostics_")}
        bad = [name for name, value in values.items() if not math.isfinite(value)]
        if bad:
            raise ValueError(f"pyradiomics gave non-finite values for {len(bad)} features (e.g. {', '.join(bad[:3])})")
        return values


@functools.lru_cache(maxsize=4)
def _pyradiomics_extractor(params_text: str, where_path: str) -> Any:
    """pyradiomics' extractor for a parameter file's text, built once per process (it is not pickled)."""
    from radiomics import featureextractor

    where = f"pyradiomics parameter file {where_path}"
    try:
        params = yaml.safe_load(params_text)
    except yaml.YAMLError as exc:
        raise ValueError(f"{where} is not valid YAML: {exc}") from None
    if not isinstance(params, dict):
        raise ValueError(f"{where} must hold a mapping with imageType, featureClass and setting")
    for section, names in _THREE_D_ONLY.items():
        bad = [name for name in names if name in (params.get(section) or {})]
        if bad:
            raise ValueError(f"{where}: {section} {bad} need 3D images; radiospine passes 2D slices "
                             f"(use shape2D for shape) - remove them")
    bad = [name for name in _MASK_DEPENDENT_SETTINGS if (params.get("setting") or {}).get(name) is not None]
    if bad:
        raise ValueError(f"{where}: settings {bad} are not supported: crops arrive resampled to a fixed "
                         f"spacing by the ROI cutter (roi.pixel_mm) - remove them")
    drop = _DropMessage(_BIN_COUNT_WARNING)
    construction_logger = logging.getLogger("radiomics.featureextractor")
    construction_logger.addFilter(drop)
    try:
        with quiet_pyradiomics():
            return featureextractor.RadiomicsFeatureExtractor(params)
    except Exception as exc:  # pykwalify's schema errors have several types; name the file either way
        raise ValueError(f"{where} is not a valid pyradiomics parameter file: {_reason(exc)}") from None
    finally:
        construction_logger.removeFilter(drop)


def _check_names(features: dict[str, float], expected: list[str]) -> None:
    if len(features) != len(expected) or set(features) != set(expected):
        missing = sorted(set(expected) - set(features))
        extra = sorted(set(features) - set(expected))
        raise ValueError(f"pyradiomics returned {len(features)} features, expected {len(expected)} "
                         f"(missing {missing[:3]}, unexpected {extra[:3]}); is the crop too small for a filter?")


def _reason(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
