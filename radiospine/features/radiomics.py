"""Radiomics features of ROI crops with pyradiomics, in true 2D per slice, aggregated over the crop's slices.

What is computed is decided by a pyradiomics parameter file (pyradiomics' own YAML format, shipped in
``configs/radiomics/``); this module decides only how images reach pyradiomics:

* Every slice of a crop is passed as a **2D** SimpleITK image (spacing ``pixel_mm`` x ``pixel_mm``) with its 2D
  mask. (One-slice 3D images with ``force2D`` would lose the LoG and wavelet images; docs/design.md section 12.)
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
  recesses in one axial window, say) share them.
* **Texture classes on stacks.** All filtered images of all slices of one :meth:`extract` call are described
  together by :func:`radiospine.features.radiomics_batch.texture_features`: the getters of pyradiomics'
  first-order, GLCM, GLRLM, GLSZM, GLDM and NGTDM classes run once on a stack of images rather than once per
  image (the per-call overhead dominates on masks of a few hundred pixels). Shape features come from pyradiomics'
  ``computeShape``.
  A test checks every value against ``RadiomicsFeatureExtractor.execute`` on the same 2D image and mask (equal
  to about 1e-12 relative: the stacked sums may round in another order).

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
import logging
import math
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk
import yaml

from radiospine.errors import ConfigError, MissingInputError
from radiospine.features.base import ExtractionResult
from radiospine.features.radiomics_batch import TextureInput, texture_features
from radiospine.hashing import json_hash
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
            raise MissingInputError(
                f"pyradiomics parameter file {self.params_path} does not exist; set features.radiomics.params "
                f"to one of the files in configs/radiomics/ or to your own file") from None
        self.slice_mean = bool(slice_mean)
        self._slice_feature_names: list[str] | None = None

    def fingerprint(self) -> str:
        return json_hash({"params": self.params_text, "slice_mean": self.slice_mean})

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
                [features] = self._describe_slices([(probe, probe_mask, 0.5)])
            if isinstance(features, Exception):
                raise features
            self._slice_feature_names = list(features)
        return list(self._slice_feature_names)

    def feature_names(self) -> list[str]:
        names = self.slice_feature_names()
        if not self.slice_mean:
            return names
        return [*names, *(MEAN_PREFIX + name for name in names), N_SLICES_FEATURE]

    def extract(self, crops: Sequence[RoiCrop]) -> list[ExtractionResult]:
        """One result per crop. All slices of all crops are described together (texture classes evaluated on
        stacks, filtered images shared among crops cut from identical pixels); each crop's ``seconds`` is an
        equal share of the call's time."""
        start = time.perf_counter()
        expected = self.slice_feature_names()
        slices, owners, failures = [], [], {}
        for crop_index, crop in enumerate(crops):
            if not np.isfinite(crop.image).all():
                failures[crop_index] = ValueError("non-finite pixel values in the crop")
                continue
            centre = crop.image.shape[0] // 2
            order = [centre, *(k for k in range(crop.image.shape[0]) if k != centre)]
            for index in order[:None if self.slice_mean else 1]:
                slices.append((crop.image[index], crop.mask[index], crop.pixel_mm))
                owners.append((crop_index, index == centre))
        with quiet_pyradiomics():
            described = self._describe_slices(slices)
        per_crop: dict[int, list[dict[str, float]]] = {}
        for (crop_index, is_centre), features in zip(owners, described, strict=True):
            if isinstance(features, dict):
                try:
                    _check_names(features, expected)
                except ValueError as exc:
                    features = exc
            if isinstance(features, Exception):
                if is_centre:
                    failures[crop_index] = features
                else:  # a neighbour slice that cannot be described only leaves the mean (n_slices shows it)
                    log.debug("radiomics: a slice of %s left out of the mean: %s", crops[crop_index].roi, features)
                continue
            per_crop.setdefault(crop_index, []).append(features)
        share = (time.perf_counter() - start) / max(1, len(crops))
        results = []
        for crop_index, crop in enumerate(crops):
            if crop_index in failures:
                log.debug("radiomics failed on %s: %s", crop.roi, failures[crop_index])
                results.append(ExtractionResult.failure(_reason(failures[crop_index]), share))
            else:
                results.append(ExtractionResult.success(self._crop_features(per_crop[crop_index], expected), share))
        return results

    # --- internals ----------------------------------------------------------------------------------

    def _extractor(self) -> Any:
        return _pyradiomics_extractor(self.params_text, str(self.params_path))

    def _crop_features(self, per_slice: list[dict[str, float]], expected: list[str]) -> dict[str, float]:
        """The centre slice's features (first in ``per_slice``) and, with ``slice_mean``, their mean over the
        described slices."""
        result = dict(per_slice[0])
        if self.slice_mean:
            means = np.mean([[features[name] for name in expected] for features in per_slice], axis=0)
            result.update(zip((MEAN_PREFIX + name for name in expected), means.tolist()))
            result[N_SLICES_FEATURE] = float(len(per_slice))
        return result

    def _describe_slices(self, slices: Sequence[tuple[np.ndarray, np.ndarray, float]]
                         ) -> list[dict[str, float] | Exception]:
        """pyradiomics features of 2D slices ``(pixels (row, col), mask (row, col), pixel_mm)``, as ``execute``
        computes them for each: per slice its features, or the exception that says why it cannot be described.

        Filtered images are made once per distinct slice image; the texture classes run on all slices' filtered
        images at once (:func:`radiospine.features.radiomics_batch.texture_features`).
        """
        extractor = self._extractor()
        prepared: list[tuple[dict[str, float], list[tuple[str, TextureInput]]] | Exception] = []
        filtered_cache: dict[bytes, tuple[sitk.Image, list[tuple[np.ndarray, str, dict]]]] = {}
        for pixels, mask, pixel_mm in slices:
            try:
                prepared.append(self._prepare_slice(extractor, pixels, mask, pixel_mm, filtered_cache))
            except Exception as exc:  # noqa: BLE001 -- one slice that cannot be described is that slice's failure
                prepared.append(exc)
        inputs = [item for entry in prepared if not isinstance(entry, Exception) for _, item in entry[1]]
        try:
            textures = iter(texture_features(inputs, extractor.enabledFeatures))
        except Exception:  # some slice breaks pyradiomics: describe slice by slice to find which (rare)
            log.debug("radiomics: texture features of %d slices failed together; one by one", len(slices),
                      exc_info=True)
            textures = None
        described: list[dict[str, float] | Exception] = []
        for entry in prepared:
            if isinstance(entry, Exception):
                described.append(entry)
                continue
            features, images = entry
            try:
                own = (next(textures) for _ in images) if textures is not None else \
                    iter(texture_features([item for _, item in images], extractor.enabledFeatures))
                for image_type_name, _ in images:
                    features.update({f"{image_type_name}_{name}": value for name, value in next(own).items()})
            except Exception as exc:  # noqa: BLE001 -- this slice's failure (only reached slice by slice)
                described.append(exc)
                continue
            bad = [name for name, value in features.items() if not math.isfinite(value)]
            described.append(ValueError(f"pyradiomics gave non-finite values for {len(bad)} features (e.g. "
                                        f"{', '.join(bad[:3])})") if bad else features)
        return described

    @staticmethod
    def _prepare_slice(extractor: Any, pixels: np.ndarray, mask: np.ndarray, pixel_mm: float,
                       filtered_cache: dict[bytes, tuple[sitk.Image, list[tuple[np.ndarray, str, dict]]]]
                       ) -> tuple[dict[str, float], list[tuple[str, TextureInput]]]:
        """A slice's shape features and its filtered images cropped to the mask (what ``execute`` describes)."""
        from radiomics import imageoperations

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
            filtered_cache[cache_key] = (image, [(sitk.GetArrayFromImage(filtered_image), name, arguments)
                                                 for filtered_image, name, arguments in filtered])
        image, filtered = filtered_cache[cache_key]

        mask_image = sitk.GetImageFromArray(np.ascontiguousarray(mask, dtype=np.uint8))
        mask_image.CopyInformation(image)
        mask_image = imageoperations.getMask(mask_image, **settings)
        bounding_box, corrected = imageoperations.checkMask(image, mask_image, **settings)
        if corrected is not None:
            mask_image = corrected
        if bounding_box is None:
            raise ValueError("pyradiomics rejected the mask")
        shape = {name: float(value) for name, value in extractor.computeShape(image, mask_image, bounding_box,
                                                                               **settings).items()
                 if not name.startswith("diagnostics_")}
        # pyradiomics' cropToTumorMask with padDistance 0, on arrays: the box is (x min, x max, y min, y max).
        x_min, x_max, y_min, y_max = (int(bound) for bound in bounding_box)
        window = np.s_[y_min:y_max + 1, x_min:x_max + 1]
        region = sitk.GetArrayFromImage(mask_image)[window] == settings.get("label", 1)
        images = [(image_type_name, TextureInput(filtered_array[window], region, image.GetSpacing(), arguments))
                  for filtered_array, image_type_name, arguments in filtered]
        return shape, images


@functools.lru_cache(maxsize=4)
def _pyradiomics_extractor(params_text: str, where_path: str) -> Any:
    """pyradiomics' extractor for a parameter file's text, built once per process (it is not pickled)."""
    from radiomics import featureextractor

    where = f"pyradiomics parameter file {where_path}"
    try:
        params = yaml.safe_load(params_text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{where} is not valid YAML: {exc}") from None
    if not isinstance(params, dict):
        raise ConfigError(f"{where} must hold a mapping with imageType, featureClass and setting")
    for section, names in _THREE_D_ONLY.items():
        bad = [name for name in names if name in (params.get(section) or {})]
        if bad:
            raise ConfigError(f"{where}: {section} {bad} need 3D images; radiospine passes 2D slices "
                              f"(use shape2D for shape) - remove them")
    bad = [name for name in _MASK_DEPENDENT_SETTINGS if (params.get("setting") or {}).get(name) is not None]
    if bad:
        raise ConfigError(f"{where}: settings {bad} are not supported: crops arrive resampled to a fixed "
                          f"spacing by the ROI cutter (roi.pixel_mm) - remove them")
    drop = _DropMessage(_BIN_COUNT_WARNING)
    construction_logger = logging.getLogger("radiomics.featureextractor")
    construction_logger.addFilter(drop)
    try:
        with quiet_pyradiomics():
            return featureextractor.RadiomicsFeatureExtractor(params)
    except Exception as exc:  # noqa: BLE001 -- pykwalify's schema errors have several types; name the file either way
        raise ConfigError(f"{where} is not a valid pyradiomics parameter file: {_reason(exc)}") from None
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
