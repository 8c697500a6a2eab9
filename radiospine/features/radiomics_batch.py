"""pyradiomics' texture feature classes on many 2D images at once: the same values, far fewer Python calls.

pyradiomics describes one image and mask per call: every feature class bins the image, builds its matrix in C and
then evaluates each feature with a few numpy operations on tiny arrays. For the 0.3-1k pixel masks of radiospine's
crops that per-call overhead is most of the cost (about 7 ms per GLCM, 2.6 ms per first-order call), and a study
needs about 700 of each (30 crops x 3 slices x 8 filtered images).

pyradiomics' feature getters are written for a leading batch axis (its voxel-based mode evaluates them on one
matrix per voxel, where most grey levels are absent from any one kernel). :func:`texture_features` uses that for
the first-order, GLCM, GLRLM, GLSZM, GLDM and NGTDM classes: each image is binned by pyradiomics' ``binImage``
and its matrix made by pyradiomics' own C code over a grey-level range common to the stack, the matrices are
stacked, and pyradiomics' own getters run once on the stack. What pyradiomics' one-image path does differently is
kept:

* **grey levels (run lengths, zone sizes) absent from an image.** pyradiomics deletes their all-zero rows; the
  stack keeps them (grey levels ``1..G``, ``G`` the largest of the stack; widths padded with zeros). The features
  are sums over matrix entries weighted by grey values, so zero entries add nothing; NGTDM's getters zero the
  terms of absent levels themselves; the two features that read the number of grey levels itself (GLCM ``Idmn``,
  ``Idn``) get each image's own ``Ng``; MCC divides by ``px * py + eps``, so empty rows stay zero in its ``Q``
  matrix and add only zero eigenvalues.
* **special cases** go through pyradiomics' feature class one image at a time: an image whose GLCM or GLRLM has
  an empty angle (pyradiomics drops the angle), an image with fewer than two grey levels (its MCC is 1 by
  definition), a weighting norm, and any stack on which a getter raises.
* **getters whose own loops dominate on a stack** are replaced by vectorised forms of the same formulas
  (:data:`_STACKED_GETTERS`): the first-order percentiles (numpy's ``nanpercentile`` loops over rows in Python),
  GLCM MCC (pyradiomics loops over grey levels; here one batched matrix product) and GLCM ClusterShade and
  ClusterProminence (powers by multiplication).

Values agree with ``RadiomicsFeatureExtractor.execute`` to rounding (sums over extra zeros and the vectorised
forms may round in another order: a relative difference below 1e-12 on the benchmark's 234 ROIs); the tests check
every feature of every class against pyradiomics. Classes this module does not know (one added to pyradiomics) run
through pyradiomics' feature class per image, exactly as ``computeFeatures`` runs them.

This module relies on attributes of pyradiomics' feature classes that are not part of its documented interface
(``P_glcm``, ``coefficients``, ``targetVoxelArray`` ...); the version is pinned (``pyradiomics-bhklab==3.1.4``) and
the tests compare against pyradiomics' public ``computeFeatures`` on every run.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import SimpleITK as sitk

log = logging.getLogger(__name__)

#: Largest number of matrix entries (images x grey levels^2 x angles) evaluated at once: about 16 MB per float array.
_MAX_BATCH_ENTRIES = 2_000_000


@dataclass(frozen=True)
class TextureInput:
    """One 2D image to describe.

    Attributes:
        image: the (filtered) image cropped to the mask's bounding box, ``(rows, cols)``, in the dtype pyradiomics
            would read from the SimpleITK image.
        mask: the region, ``(rows, cols)`` boolean, same shape.
        spacing: pixel spacing in mm in SimpleITK's order ``(column step, row step)``.
        settings: pyradiomics settings for this image type (``binCount``, ``label``, ``distances`` ...).
    """

    image: np.ndarray
    mask: np.ndarray
    spacing: tuple[float, float]
    settings: Mapping[str, Any]

    def __post_init__(self) -> None:
        if self.image.ndim != 2 or self.image.shape != self.mask.shape:
            raise ValueError(f"a texture input needs a 2D image and a mask of its shape, got {self.image.shape} "
                             f"and {self.mask.shape}")

    def sitk_images(self) -> tuple[sitk.Image, sitk.Image]:
        """The image and its mask (label ``settings["label"]``) as pyradiomics' feature classes take them."""
        image = sitk.GetImageFromArray(self.image)
        image.SetSpacing(tuple(float(step) for step in self.spacing))
        mask = sitk.GetImageFromArray(self.mask.astype(np.uint8) * np.uint8(self.settings.get("label", 1)))
        mask.CopyInformation(image)
        return image, mask


def texture_features(inputs: Sequence[TextureInput], enabled: Mapping[str, Sequence[str] | None]
                     ) -> list[dict[str, float]]:
    """pyradiomics' non-shape feature classes of every input.

    Args:
        inputs: the images to describe.
        enabled: feature class -> feature names (``None`` or empty: every non-deprecated feature), as in
            ``RadiomicsFeatureExtractor.enabledFeatures``; ``shape*`` classes are skipped (they describe the mask,
            not the image).

    Returns:
        Per input, ``"<class>_<feature>" -> value`` in the order ``computeFeatures`` gives (classes in
        ``enabled``'s order, features in the class's order). Values are floats, NaN where pyradiomics gives NaN.
    """
    from radiomics import getFeatureClasses

    classes = getFeatureClasses()
    per_class: list[tuple[str, list[dict[str, float]]]] = []
    prepared = [_Prepared(item) for item in inputs]
    for class_name, names in enabled.items():
        if class_name.startswith("shape") or class_name not in classes:
            continue
        feature_class = classes[class_name]
        if class_name in _STACKS:
            values = _batched(class_name, feature_class, names, prepared)
        else:
            values = [_one_image(feature_class, names, item) for item in prepared]
        per_class.append((class_name, values))
    results = []
    for index in range(len(prepared)):
        row: dict[str, float] = {}
        for class_name, values in per_class:
            row.update({f"{class_name}_{name}": value for name, value in values[index].items()})
        results.append(row)
    return results


class _Prepared:
    """An input with the arrays every class needs (the binned image is made once and shared by all)."""

    def __init__(self, item: TextureInput) -> None:
        self.item = item
        self.settings = dict(item.settings)
        self.image_array = item.image
        self.mask_array = item.mask.astype(bool, copy=False)
        self.spacing = tuple(float(step) for step in item.spacing)
        self._binned: np.ndarray | None = None
        self._levels: np.ndarray | None = None

    @property
    def binned(self) -> np.ndarray:
        """The image binned by pyradiomics' ``binImage`` (grey levels ``1..Ng`` inside the mask)."""
        if self._binned is None:
            from radiomics import imageoperations

            self._binned, _ = imageoperations.binImage(self.image_array.copy(), self.mask_array, **self.settings)
        return self._binned

    @property
    def levels(self) -> np.ndarray:
        """The grey levels present inside the mask, ascending."""
        if self._levels is None:
            self._levels = np.unique(self.binned[self.mask_array])
        return self._levels

    def group_key(self) -> tuple:
        """Inputs with equal keys can share one stack: same settings and pixel spacing."""
        return repr(sorted(self.settings.items())), tuple(self.spacing)


def _one_image(feature_class: type, names: Sequence[str] | None, item: _Prepared) -> dict[str, float]:
    """pyradiomics' feature class on one image, as ``computeFeatures`` calls it."""
    instance = feature_class(*item.item.sitk_images(), **item.settings)
    for name in names or ():
        instance.enableFeatureByName(name)
    return {name: float(value) for name, value in instance.execute().items()}


def _feature_order(feature_class: type, names: Sequence[str] | None) -> list[str]:
    """The features a class computes, in the order its ``execute`` computes them."""
    if names:
        return list(dict.fromkeys(names))
    return [name for name, deprecated in feature_class.getFeatureNames().items() if not deprecated]


@dataclass(frozen=True)
class _Stack:
    """A feature class's matrices for a group of images (positions ``0..n-1`` in the group).

    Attributes:
        stackable: key -> positions that can share one stack (a key per matrix shape: the number of angles).
        special: positions pyradiomics must describe one by one.
        entries_per_image: matrix entries per image in a stack (sets how many images go in one stack).
        load: ``load(instance, positions)`` puts the stacked matrices and coefficients of ``positions`` into a
            bare instance of the feature class, ready for its getters.
    """

    stackable: Mapping[Any, list[int]]
    special: set[int]
    entries_per_image: int
    load: Callable[[Any, list[int]], None]


StackBuilder = Callable[[list[_Prepared]], _Stack]


def _batched(class_name: str, feature_class: type, names: Sequence[str] | None, items: Sequence[_Prepared]
             ) -> list[dict[str, float]]:
    builder = _STACKS[class_name]
    order = _feature_order(feature_class, names)
    results: list[dict[str, float]] = [{} for _ in items]
    groups: dict[tuple, list[int]] = defaultdict(list)
    for index, item in enumerate(items):
        groups[item.group_key()].append(index)
    for indices in groups.values():
        stack = builder([items[i] for i in indices])
        one_by_one = set(stack.special)
        for members in stack.stackable.values():
            size = max(1, _MAX_BATCH_ENTRIES // max(1, stack.entries_per_image))
            for start in range(0, len(members), size):
                positions = members[start:start + size]
                instance = feature_class.__new__(feature_class)
                instance.logger = logging.getLogger(feature_class.__module__)
                instance.settings = items[indices[positions[0]]].settings
                instance.coefficients = {}
                stack.load(instance, positions)
                values = _evaluate(class_name, instance, order, len(positions))
                if values is None:  # a getter raised on the stack: pyradiomics decides per image
                    one_by_one.update(positions)
                    continue
                for row, position in enumerate(positions):
                    results[indices[position]] = {name: float(column[row]) for name, column in values.items()}
        for position in sorted(one_by_one):
            results[indices[position]] = _one_image(feature_class, names, items[indices[position]])
    return results


def _evaluate(class_name: str, instance: Any, order: list[str], n: int) -> dict[str, np.ndarray] | None:
    """Every feature of ``order`` on a stack of ``n`` images (one value per image); ``None`` when a getter
    raised."""
    values = {}
    for name in order:
        try:
            if (class_name, name) in _STACKED_GETTERS:
                value = _STACKED_GETTERS[class_name, name](instance)
            else:
                value = getattr(instance, f"get{name}FeatureValue")()
        except DeprecationWarning:  # pyradiomics leaves deprecated features out of its result
            continue
        except Exception:
            log.debug("batched pyradiomics %s failed on a stack; computing per image", name, exc_info=True)
            return None
        values[name] = np.broadcast_to(np.asarray(value, dtype=float).reshape(-1), (n,))
    return values


def _stacked(matrices: Sequence[np.ndarray]) -> np.ndarray:
    """Matrices ``(levels, k, ...)`` of several images stacked to ``(images, levels, k_max, ...)``, zero-padded
    along the second axis (run lengths, zone sizes, dependence counts absent from an image)."""
    width = max(matrix.shape[1] for matrix in matrices)
    out = np.zeros((len(matrices), matrices[0].shape[0], width, *matrices[0].shape[2:]))
    for row, matrix in enumerate(matrices):
        out[row, :, :matrix.shape[1]] = matrix
    return out


def _largest_level(items: Sequence[_Prepared]) -> int:
    return max((int(item.levels.max()) for item in items if item.levels.size), default=1)


def _by_angles(matrices: Sequence[np.ndarray | None], special: set[int]) -> dict[int, list[int]]:
    """Images grouped by their number of angles (last axis); an image with an empty angle is special
    (pyradiomics deletes the angle)."""
    groups: dict[int, list[int]] = defaultdict(list)
    for position, matrix in enumerate(matrices):
        if matrix is None:
            continue
        if (matrix.sum(tuple(range(matrix.ndim - 1))) == 0).any():
            special.add(position)
        else:
            groups[matrix.shape[-1]].append(position)
    return groups


def _force2d(settings: Mapping[str, Any]) -> tuple[bool, int]:
    return settings.get("force2D", False), settings.get("force2Ddimension", 0)


def _distances(settings: Mapping[str, Any]) -> np.ndarray:
    return np.array(settings.get("distances", [1]))


# --- first order --------------------------------------------------------------------------------------------------

def _first_order_stack(items: list[_Prepared]) -> _Stack:
    """Voxel values padded with NaN (pyradiomics' first-order getters use nan-aware reductions) and the
    histogram of binned values per image, zero-padded (empty bins add nothing to entropy or uniformity)."""
    values = [item.image_array[item.mask_array].astype("float") for item in items]
    counts = [np.unique(item.binned[item.mask_array], return_counts=True)[1] for item in items]

    def load(instance: Any, positions: list[int]) -> None:
        target = np.full((len(positions), max(len(values[p]) for p in positions)), np.nan)
        p_i = np.zeros((len(positions), max(len(counts[p]) for p in positions)))
        for row, p in enumerate(positions):
            target[row, :len(values[p])] = values[p]
            p_i[row, :len(counts[p])] = counts[p]
        sums = p_i.sum(1, keepdims=True)
        sums[sums == 0] = 1
        instance.pixelSpacing = items[positions[0]].spacing
        instance.voxelArrayShift = instance.settings.get("voxelArrayShift", 0)
        instance.targetVoxelArray = target
        instance.coefficients["p_i"] = p_i / sums
        # For the percentile getters of _STACKED_GETTERS: each row's values ascending (NaN padding last).
        instance.coefficients["sortedValues"] = np.sort(target, 1)
        instance.coefficients["nValues"] = np.array([len(values[p]) for p in positions])

    longest = max((len(v) for v in values), default=1)
    return _Stack({"all": list(range(len(items)))}, set(), longest, load)


def _percentile(instance: Any, q: float) -> np.ndarray:
    """``numpy.nanpercentile(targetVoxelArray, q, axis=1)`` (linear interpolation) from the sorted rows, without
    numpy's per-row Python loop for NaN-padded rows."""
    ordered, counts = instance.coefficients["sortedValues"], instance.coefficients["nValues"]
    position = (counts - 1) * (q / 100.0)
    lower = np.floor(position).astype(int)
    upper = np.minimum(lower + 1, counts - 1)
    fraction = position - lower
    rows = np.arange(len(counts))
    below, above = ordered[rows, lower], ordered[rows, upper]
    step = above - below
    # numpy's lerp: from the nearer end, so that a fraction of 1 gives the upper value exactly
    return np.where(fraction >= 0.5, above - step * (1 - fraction), below + step * fraction)


def _robust_mean_absolute_deviation(instance: Any) -> np.ndarray:
    """pyradiomics' RobustMeanAbsoluteDeviation (values between the 10th and 90th percentiles, inclusive)."""
    values = instance.targetVoxelArray
    kept = (values >= _percentile(instance, 10)[:, None]) & (values <= _percentile(instance, 90)[:, None])
    inside = np.where(kept, values, np.nan)
    return np.nanmean(np.absolute(inside - np.nanmean(inside, 1, keepdims=True)), 1)


# --- GLCM ---------------------------------------------------------------------------------------------------------

def _glcm_stack(items: list[_Prepared]) -> _Stack:
    """GLCMs over grey levels ``1..G`` (``G`` the largest ``Ng`` of the group), symmetric and normalised per angle
    as pyradiomics makes them; pyradiomics' special cases (an empty angle, one grey level: MCC = 1, a weighting
    norm) go one by one."""
    from radiomics import cMatrices

    settings = items[0].settings
    if settings.get("weightingNorm") is not None:
        return _Stack({}, set(range(len(items))), 1, lambda instance, positions: None)
    top = _largest_level(items)
    special = {position for position, item in enumerate(items) if len(item.levels) < 2}
    matrices = [None if position in special else
                cMatrices.calculate_glcm(item.binned, item.mask_array, _distances(settings), top,
                                         *_force2d(settings))[0][0]
                for position, item in enumerate(items)]
    groups = _by_angles(matrices, special)
    symmetrical = settings.get("symmetricalGLCM", True)

    def load(instance: Any, positions: list[int]) -> None:
        glcm = np.stack([matrices[p] for p in positions])
        if symmetrical:
            glcm += np.transpose(glcm, (0, 2, 1, 3)).copy()
        glcm /= glcm.sum((1, 2))[:, None, None, :]
        instance.symmetricalGLCM = symmetrical
        instance.weightingNorm = None
        instance.P_glcm = glcm
        instance.coefficients.update({"Ng": top, "grayLevels": np.arange(1, top + 1)})
        instance._calculateCoefficients()
        # The two features that read Ng itself (Idmn, Idn) get each image's own.
        instance.coefficients["Ng"] = np.array([int(items[p].levels.max()) for p in positions])[:, None, None]

    n_angles = max(groups, default=1)
    return _Stack(groups, special, top * top * n_angles, load)


def _glcm_mcc(instance: Any) -> np.ndarray | int:
    """pyradiomics' GLCM MCC, its sum over ``k`` as one batched matrix product (pyradiomics loops over ``k`` in
    Python): ``Q[i, j] = sum_k P[i, k] P[j, k] / (px[i] py[k] + eps)`` per image and angle; MCC is the square
    root of ``Q``'s second largest eigenvalue, averaged over the angles."""
    glcm, coefficients = instance.P_glcm, instance.coefficients
    scaled = glcm / (coefficients["px"] * coefficients["py"] + coefficients["eps"])  # (image, i, k, angle)
    q = np.matmul(scaled.transpose(0, 3, 1, 2), glcm.transpose(0, 3, 2, 1))  # (image, angle, i, j)
    eigenvalues = np.linalg.eigvals(q)
    eigenvalues.sort()
    if eigenvalues.shape[2] < 2:
        return 1  # one grey level: a flat region
    return np.nanmean(np.sqrt(eigenvalues[:, :, -2]), 1).real


def _glcm_cluster_moment(power: int) -> Callable[[Any], np.ndarray]:
    """pyradiomics' GLCM ClusterShade (``power`` 3) or ClusterProminence (4): ``sum P (i + j - ux - uy)^power``
    averaged over the angles, the power by multiplications (numpy's float power is ten times slower)."""
    def getter(instance: Any) -> np.ndarray:
        coefficients = instance.coefficients
        deviation = (coefficients["i"] + coefficients["j"])[None, :, :, None] - coefficients["ux"] - coefficients["uy"]
        squared = deviation * deviation
        moment = squared * deviation if power == 3 else squared * squared
        return np.nanmean(np.sum(instance.P_glcm * moment, (1, 2)), 1)
    return getter


# --- GLRLM, GLSZM, GLDM, NGTDM ------------------------------------------------------------------------------------

def _glrlm_stack(items: list[_Prepared]) -> _Stack:
    """Run-length matrices over grey levels ``1..G`` and run lengths up to the longest image side of the group;
    an image with an empty angle or a weighting norm goes one by one."""
    from radiomics import cMatrices

    settings = items[0].settings
    if settings.get("weightingNorm") is not None:
        return _Stack({}, set(range(len(items))), 1, lambda instance, positions: None)
    top = _largest_level(items)
    longest = max(max(item.image_array.shape) for item in items)
    matrices = [cMatrices.calculate_glrlm(item.binned, item.mask_array, top, longest, *_force2d(settings))[0][0]
                for item in items]
    special: set[int] = set()
    groups = _by_angles(matrices, special)

    def load(instance: Any, positions: list[int]) -> None:
        glrlm = np.stack([matrices[p] for p in positions])
        instance.weightingNorm = None
        instance.P_glrlm = glrlm
        instance.coefficients.update({"Nr": glrlm.sum((1, 2)), "grayLevels": np.arange(1, top + 1)})
        instance._calculateCoefficients()

    return _Stack(groups, special, top * longest * max(groups, default=1), load)


def _glszm_stack(items: list[_Prepared]) -> _Stack:
    """Size-zone matrices over grey levels ``1..G``, zone sizes zero-padded to the group's largest."""
    from radiomics import cMatrices

    settings = items[0].settings
    top = _largest_level(items)
    matrices = [cMatrices.calculate_glszm(item.binned, item.mask_array, top, int(item.mask_array.sum()),
                                          *_force2d(settings))[0] for item in items]

    def load(instance: Any, positions: list[int]) -> None:
        instance.P_glszm = _stacked([matrices[p] for p in positions])
        instance.coefficients["grayLevels"] = np.arange(1, top + 1)
        instance._calculateCoefficients()

    widest = max(matrix.shape[1] for matrix in matrices)
    return _Stack({"all": list(range(len(items)))}, set(), top * widest, load)


def _gldm_stack(items: list[_Prepared]) -> _Stack:
    """Dependence matrices over grey levels ``1..G``; the coefficients as pyradiomics' ``_calculateMatrix`` makes
    them after its C call (dependence sizes empty in every image of the stack dropped)."""
    from radiomics import cMatrices

    settings = items[0].settings
    top = _largest_level(items)
    matrices = [cMatrices.calculate_gldm(item.binned, item.mask_array, _distances(settings), top,
                                         settings.get("gldm_a", 0), *_force2d(settings))[0] for item in items]

    def load(instance: Any, positions: list[int]) -> None:
        gldm = _stacked([matrices[p] for p in positions])
        jvector = np.arange(1, gldm.shape[2] + 1, dtype="float64")
        p_dependence = gldm.sum(1)
        p_grey = gldm.sum(2)
        empty = np.where(p_dependence.sum(0) == 0)
        gldm, jvector = np.delete(gldm, empty, 2), np.delete(jvector, empty)
        p_dependence = np.delete(p_dependence, empty, 1)
        n_zones = p_dependence.sum(1)
        n_zones[n_zones == 0] = 1
        instance.gldm_a = settings.get("gldm_a", 0)
        instance.P_gldm = gldm
        instance.coefficients.update({"Nz": n_zones, "pd": p_dependence, "pg": p_grey, "jvector": jvector,
                                      "ivector": np.arange(1, top + 1, dtype=float)})

    widest = max(matrix.shape[1] for matrix in matrices)
    return _Stack({"all": list(range(len(items)))}, set(), top * widest, load)


def _ngtdm_stack(items: list[_Prepared]) -> _Stack:
    """Neighbourhood grey-tone difference matrices over grey levels ``1..G`` (pyradiomics' NGTDM getters zero
    the terms of absent grey levels themselves, as in its voxel-based mode)."""
    from radiomics import cMatrices

    settings = items[0].settings
    top = _largest_level(items)
    matrices = [cMatrices.calculate_ngtdm(item.binned, item.mask_array, _distances(settings), top,
                                          *_force2d(settings))[0] for item in items]

    def load(instance: Any, positions: list[int]) -> None:
        ngtdm = np.stack([matrices[p] for p in positions])
        instance.P_ngtdm = np.delete(ngtdm, np.where(ngtdm[:, :, 0].sum(0) == 0), 1)
        instance._calculateCoefficients()

    return _Stack({"all": list(range(len(items)))}, set(), top * 3, load)


#: Feature classes evaluated on stacks of images, and how their stacks are made (other classes run per image).
_STACKS: dict[str, StackBuilder] = {"firstorder": _first_order_stack, "glcm": _glcm_stack, "glrlm": _glrlm_stack,
                                    "glszm": _glszm_stack, "gldm": _gldm_stack, "ngtdm": _ngtdm_stack}
#: Getters replaced on stacks by vectorised equivalents of the same formula (pyradiomics' own loop per row or per
#: grey level would dominate the time): (class, feature) -> function of the loaded instance.
_STACKED_GETTERS: dict[tuple[str, str], Callable[[Any], Any]] = {
    ("firstorder", "10Percentile"): lambda instance: _percentile(instance, 10),
    ("firstorder", "90Percentile"): lambda instance: _percentile(instance, 90),
    ("firstorder", "Median"): lambda instance: _percentile(instance, 50),
    ("firstorder", "InterquartileRange"): lambda instance: _percentile(instance, 75) - _percentile(instance, 25),
    ("firstorder", "RobustMeanAbsoluteDeviation"): _robust_mean_absolute_deviation,
    ("glcm", "MCC"): _glcm_mcc,
    ("glcm", "ClusterShade"): _glcm_cluster_moment(3),
    ("glcm", "ClusterProminence"): _glcm_cluster_moment(4),
}
