"""What the localiser's networks see and say: heatmap channels, canonical grids, targets, peak decoding.

A *grid* is a square ``size`` x ``size`` image of ``pixel_mm`` pixels in the plane of a stack's slices, in a
patient-fixed orientation (:func:`canonical_axes`), given as a ``(4, 4)`` ``(col, row, slice, 1)`` -> LPS mm
affine like a stack's (:mod:`radiospine.geometry`): grid slice ``k`` lies in the plane of stack slice ``k`` (or of
``first + k`` for an axial slab, :func:`axial_slab`). Heatmaps are ``(channels, size, size)`` on a grid slice.
Numpy only (no torch).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal, NamedTuple

import numpy as np
from scipy import ndimage

from radiospine import vocab
from radiospine.config import LocalizerConfig
from radiospine.geometry import (
    StackGeometry,
    inside_image,
    patient_to_pixel,
    patient_to_voxel,
    pixel_spacing,
    polyline_crossing_on_slice,
    project_onto_slice,
    slice_centre,
    slice_normal,
    slice_plane_distances,
    slice_step_vector,
    sub_stack_affine,
    unit,
    voxel_to_patient,
)
from radiospine.roi.cut import sample_slices

#: Which network a stack or grid is for.
Kind = Literal["sagittal", "axial"]

FORAMINAL_CONDITIONS = tuple(vocab.join_condition(vocab.FORAMINAL, side) for side in vocab.SIDES)
SUBARTICULAR_CONDITIONS = tuple(vocab.join_condition(vocab.SUBARTICULAR, side) for side in vocab.SIDES)

#: Sagittal heatmap channels: canal levels 0-4, then foraminal levels 5-9 (both sides share a channel).
SAGITTAL_CHANNELS = tuple(f"{vocab.SPINAL}:{level}" for level in vocab.LEVELS) + tuple(
    f"{vocab.FORAMINAL}:{level}" for level in vocab.LEVELS)

#: Axial heatmap channels: the subarticular point of each side.
AXIAL_CHANNELS = SUBARTICULAR_CONDITIONS

#: Normalisation of the localiser's input: robust percentiles over a whole stack's decoded slices.
INPUT_PERCENTILES = (0.5, 99.5)

#: Axial training slabs reach this many slices either side of the marked slice (negatives between discs).
AXIAL_SLAB_HALF_WIDTH = 3

#: Consecutive disc levels lie at least / at most this far apart in mm (about 35-40 mm in adults).
LEVEL_SPACING_MM = (18.0, 60.0)


class GridPeak(NamedTuple):
    """A heatmap maximum: its height and sub-pixel grid position (a tuple, so ``peak, row, col = ...`` works)."""

    height: float
    row: float
    col: float


class Peak(NamedTuple):
    """A decoded point: its heatmap peak height and ``(3,)`` LPS mm position."""

    height: float
    lps: np.ndarray


@dataclass(frozen=True)
class AxialSlab:
    """The slices of an axial stack resampled around one level's slice.

    Attributes:
        first, stop: the stack slices ``first .. stop - 1`` (the level's slice, ``AXIAL_SLAB_HALF_WIDTH`` slices
            either side and the networks' neighbour slices, clipped to the stack).
        grid: ``(4, 4)`` grid affine whose slice 0 is stack slice ``first``.
    """

    first: int
    stop: int
    grid: np.ndarray


def canonical_axes(affine: np.ndarray, kind: Kind) -> tuple[np.ndarray, np.ndarray]:
    """Unit LPS ``(row_axis, col_axis)`` of a grid in the stack's plane, in a patient-fixed orientation.

    Sagittal: columns towards the back (+y), rows towards the feet (-z). Axial: columns towards the patient's
    left (+x), rows towards the back (+y). The patient axes are projected onto the plane, so oblique and
    flipped images all give the same picture.
    """
    normal = slice_normal(affine)
    col_target, row_target = ((np.array([0.0, 1.0, 0.0]), np.array([0.0, 0.0, -1.0])) if kind == "sagittal"
                              else (np.array([1.0, 0.0, 0.0]), np.array([0.0, 1.0, 0.0])))
    col_axis = unit(col_target - (col_target @ normal) * normal)
    row_axis = row_target - (row_target @ normal) * normal
    row_axis = unit(row_axis - (row_axis @ col_axis) * col_axis)
    return row_axis, col_axis


def grid_affine(stack_affine: np.ndarray, reference_slice: int, centre_lps: np.ndarray, kind: Kind, size: int,
                pixel_mm: float) -> np.ndarray:
    """The ``(col, row, slice, 1)`` -> LPS affine of a ``size`` x ``size`` grid over the stack's slices.

    Grid pixel ``((size-1)/2, (size-1)/2)`` of slice ``reference_slice`` sits on ``centre_lps`` projected onto
    that slice; the slice axis is the stack's own slice step, so grid slice ``k`` lies in stack slice ``k``.
    """
    row_axis, col_axis = canonical_axes(stack_affine, kind)
    centre = project_onto_slice(stack_affine, reference_slice, np.asarray(centre_lps, float)[None, :])[0]
    step = slice_step_vector(stack_affine)
    if np.linalg.norm(step) == 0:
        step = slice_normal(stack_affine)
    middle = (size - 1) / 2.0
    affine = np.eye(4)
    affine[:3, 0] = col_axis * pixel_mm
    affine[:3, 1] = row_axis * pixel_mm
    affine[:3, 2] = step
    affine[:3, 3] = centre - middle * pixel_mm * (row_axis + col_axis) - reference_slice * step
    return affine


def _grid_points(grid: np.ndarray, size: int) -> np.ndarray:
    """``(size, size, 3)`` LPS mm of the pixels of grid slice 0."""
    index = np.arange(size, dtype=float)
    rows, cols = np.meshgrid(index, index, indexing="ij")
    points = voxel_to_patient(grid, np.stack([np.zeros(size * size), rows.ravel(), cols.ravel()], axis=1))
    return points.reshape(size, size, 3)


def resample_to_grid(slices: np.ndarray, stack_affine: np.ndarray, grid: np.ndarray, size: int,
                     pixel_mm: float) -> np.ndarray:
    """``(k, rows, cols)`` normalised stack slices -> ``(k, size, size)`` float32 on the grid (same slices)."""
    return sample_slices(slices, stack_affine, _grid_points(grid, size), pixel_mm)


def grid_inside_image(stack: StackGeometry, grid: np.ndarray, size: int) -> np.ndarray:
    """``(size, size)`` bool: which grid pixels fall inside the stack's image (peaks are only sought there)."""
    _, x, y = patient_to_pixel(stack.affine, _grid_points(grid, size).reshape(-1, 3))
    return inside_image(stack.shape, x, y).reshape(size, size)


def sagittal_grid(stack: StackGeometry, config: LocalizerConfig) -> np.ndarray:
    """The sagittal grid of a stack: centred on the middle slice's image centre."""
    middle = (stack.shape[0] - 1) // 2
    centre = slice_centre(stack.affine, stack.shape, middle)
    return grid_affine(stack.affine, middle, centre, "sagittal", config.sagittal_grid_px, config.sagittal_grid_mm)


def axial_grid_centre(stack: StackGeometry, slice_index: int, canal: np.ndarray) -> np.ndarray:
    """Where the canal line ``(n, 3)`` crosses the slice (the axial grid's centre); the image centre without one."""
    if len(canal):
        return polyline_crossing_on_slice(stack.affine, slice_index, canal)
    return slice_centre(stack.affine, stack.shape, slice_index)


def axial_slab(stack: StackGeometry, slice_index: int, centre_lps: np.ndarray, config: LocalizerConfig) -> AxialSlab:
    """The axial grid around ``slice_index`` of a stack, centred on ``centre_lps`` (projected onto that slice)."""
    first = max(0, slice_index - AXIAL_SLAB_HALF_WIDTH - config.neighbour_slices)
    stop = min(stack.shape[0], slice_index + AXIAL_SLAB_HALF_WIDTH + config.neighbour_slices + 1)
    grid = grid_affine(stack.affine, slice_index, centre_lps, "axial", config.axial_grid_px, config.axial_grid_mm)
    return AxialSlab(first, stop, sub_stack_affine(grid, first))


def heatmap_targets(grid: np.ndarray, slice_index: int, size: int, points_lps: np.ndarray, sigma_mm: float,
                    sigma_normal_mm: float) -> np.ndarray:
    """Target heatmaps of one grid slice: per channel the largest 3D Gaussian of its points.

    Args:
        grid: the grid affine (:func:`grid_affine`).
        slice_index: which slice of the grid.
        size: grid pixels per side.
        points_lps: ``(channels, points, 3)`` LPS mm; NaN rows are absent points.
        sigma_mm, sigma_normal_mm: in-plane and through-plane standard deviations.

    Returns:
        ``(channels, size, size)`` float32 in ``[0, 1]``: 1 on a point lying in this slice's plane.
    """
    channels, n_points, _ = points_lps.shape
    out = np.zeros((channels, size, size), np.float32)
    flat = points_lps.reshape(-1, 3)
    present = np.isfinite(flat).all(axis=1)
    if not present.any():
        return out
    pixel_mm = pixel_spacing(grid)[1]
    normal = slice_normal(grid)
    distance = slice_plane_distances(grid, slice_index + 1, flat[present])[:, slice_index]
    projected = flat[present] - distance[:, None] * normal[None, :]
    src = patient_to_voxel(grid, projected)
    index = np.arange(size, dtype=float)
    amplitude = np.exp(-distance**2 / (2 * sigma_normal_mm**2))
    owners = np.flatnonzero(present) // n_points
    for owner, amp, (_, row, col) in zip(owners, amplitude, src):
        if amp < 1e-3:
            continue
        gauss_r = np.exp(-((index - row) * pixel_mm) ** 2 / (2 * sigma_mm**2))
        gauss_c = np.exp(-((index - col) * pixel_mm) ** 2 / (2 * sigma_mm**2))
        np.maximum(out[owner], (amp * gauss_r[:, None] * gauss_c[None, :]).astype(np.float32), out=out[owner])
    return out


def decode_peak(probabilities: np.ndarray, around: tuple[int, int] | None = None, radius: int = 3) -> GridPeak:
    """``(size, size)`` heatmap -> its peak value and sub-pixel row/col.

    The maximum of the whole heatmap, or with ``around = (row, col)`` the maximum within ``radius`` pixels of it.
    The sub-pixel offset fits a parabola to the log heatmap through the maximum and its two neighbours on each
    axis (exact for a Gaussian peak).
    """
    if around is None:
        row, col = np.unravel_index(int(np.argmax(probabilities)), probabilities.shape)
    else:
        r0, c0 = max(0, around[0] - radius), max(0, around[1] - radius)
        window = probabilities[r0:around[0] + radius + 1, c0:around[1] + radius + 1]
        row, col = np.unravel_index(int(np.argmax(window)), window.shape)
        row, col = row + r0, col + c0
    peak = float(probabilities[row, col])
    logs = np.log(np.clip(probabilities, 1e-6, None))

    def offset(minus: float, centre: float, plus: float) -> float:
        curvature = minus - 2 * centre + plus
        return 0.0 if curvature >= 0 else float(np.clip(0.5 * (minus - plus) / curvature, -1.0, 1.0))

    d_row = offset(logs[row - 1, col], logs[row, col], logs[row + 1, col]) if 0 < row < logs.shape[0] - 1 else 0.0
    d_col = offset(logs[row, col - 1], logs[row, col], logs[row, col + 1]) if 0 < col < logs.shape[1] - 1 else 0.0
    return GridPeak(peak, row + d_row, col + d_col)


def decode_levels(probabilities: np.ndarray, grid: np.ndarray, slices_per_level: Sequence[Sequence[int]],
                  min_peak: float, max_candidates: int = 30) -> list[Peak | None]:
    """The five levels' points decoded together, so that they are five different discs in anatomical order.

    Per-level heatmaps often also light up at the neighbouring discs. Candidate discs are the local maxima of
    all five channels (over the allowed slices); each level takes one candidate, in order from head to feet
    (decreasing z), consecutive levels ``LEVEL_SPACING_MM`` apart (per level skipped between them), maximising
    the sum of the log peak heights. A level may stay unassigned at the price of ``log(min_peak)``, so no
    candidate weaker than ``min_peak`` is ever taken (dynamic programming over levels, exact).

    Args:
        probabilities: ``(slices, 5, size, size)`` the five level channels of a stack's grid slices.
        grid: the grid affine (grid slice ``k`` = ``probabilities[k]``).
        slices_per_level: the slices each level may be found on (e.g. one side of the patient).
        min_peak: the skip threshold.

    Returns:
        Per level (L1/L2 first): its :class:`Peak`, or None when left unassigned.
    """
    n_levels = probabilities.shape[1]
    allowed = sorted(set().union(*map(set, slices_per_level)))
    if not allowed:
        return [None] * n_levels
    strongest = probabilities[allowed].max(axis=(0, 1))
    is_peak = (strongest == ndimage.maximum_filter(strongest, size=5)) & (strongest >= min_peak)
    peaks = np.argwhere(is_peak)
    peaks = peaks[np.argsort(-strongest[is_peak])][:max_candidates]
    if not len(peaks):
        return [None] * n_levels
    scores = np.zeros((n_levels, len(peaks)))
    best_slice = np.zeros((n_levels, len(peaks)), dtype=int)
    for level, slices in enumerate(slices_per_level):
        slices = np.asarray(sorted(slices), dtype=int)
        if not len(slices):
            continue
        for c, (row, col) in enumerate(peaks):
            window = probabilities[slices, level, max(row - 1, 0):row + 2, max(col - 1, 0):col + 2]
            per_slice = window.reshape(len(slices), -1).max(axis=1)
            scores[level, c] = per_slice.max()
            best_slice[level, c] = slices[int(np.argmax(per_slice))]
    anchor = best_slice[np.argmax(scores, axis=0), np.arange(len(peaks))]
    positions = voxel_to_patient(grid, np.column_stack([anchor, peaks]).astype(float))
    log_scores = np.log(np.clip(scores, 1e-6, None))
    skip = float(np.log(min_peak))
    total = np.full((n_levels, len(peaks)), -np.inf)
    back: dict[tuple[int, int], tuple[int, int]] = {}
    for level in range(n_levels):
        for c in range(len(peaks)):
            if scores[level, c] < min_peak:
                continue
            total[level, c] = level * skip + log_scores[level, c]
            for previous in range(level):
                gap = level - previous
                for p in np.flatnonzero(np.isfinite(total[previous])):
                    distance = float(np.linalg.norm(positions[p] - positions[c]))
                    if not (positions[p, 2] > positions[c, 2]
                            and LEVEL_SPACING_MM[0] * gap <= distance <= LEVEL_SPACING_MM[1] * gap):
                        continue
                    candidate = total[previous, p] + (gap - 1) * skip + log_scores[level, c]
                    if candidate > total[level, c]:
                        total[level, c] = candidate
                        back[(level, c)] = (previous, p)
    finals = total + (n_levels - 1 - np.arange(n_levels))[:, None] * skip
    result: list[Peak | None] = [None] * n_levels
    if not np.isfinite(finals).any() or finals.max() <= n_levels * skip:
        return result
    state: tuple[int, int] | None = tuple(int(i) for i in np.unravel_index(int(np.argmax(finals)), finals.shape))
    while state is not None:
        level, c = state
        k = int(best_slice[level, c])
        peak, row, col = decode_peak(probabilities[k, level], around=(int(peaks[c][0]), int(peaks[c][1])))
        result[level] = Peak(peak, voxel_to_patient(grid, np.array([[k, row, col]]))[0])
        state = back.get(state)
    return result


def stack_inputs(images: np.ndarray, slice_indices: Sequence[int], neighbours: int) -> np.ndarray:
    """``(slices, h, w)`` -> ``(len(slice_indices), 2*neighbours+1, h, w)``: each slice with its neighbours."""
    n = images.shape[0]
    index = np.clip(np.asarray(slice_indices)[:, None] + np.arange(-neighbours, neighbours + 1)[None, :], 0, n - 1)
    return np.asarray(images[index], dtype=np.float32)
