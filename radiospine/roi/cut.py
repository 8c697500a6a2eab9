"""ROIs from coordinates: place them in patient space, cut crops resampled to a fixed pixel spacing, add masks.

Which image shows which condition (:data:`radiospine.vocab.VIEW_OF_BASE_CONDITION`)
-----------------------------------------------------------------------------
* spinal canal: the Sagittal T2/STIR slice the coordinate is on; with ``roi.canal_on_axial`` also the canal on
  the Axial T2 slice through the disc (a cross-series view, see :func:`place_rois`);
* neural foramen: the Sagittal T1 slice of that side the coordinate is on;
* subarticular recess: the Axial T2 slice through the disc, centred on that side's point.

Cutting
-------
A crop is sampled on a square grid of ``roi.pixel_mm`` in the plane of the ROI's centre slice, centred exactly on
the ROI centre, its rows along the source image's row direction and its columns along its column direction, with
an odd number of pixels per side, so that the centre pixel ``((h - 1) / 2, (w - 1) / 2)`` *is* the centre.
Sampling is linear (``scipy.ndimage.map_coordinates``) after a Gaussian anti-aliasing filter when the grid is
coarser than the image. Neighbouring slices (``roi.neighbour_slices`` each side; a 2.5D stack) are sampled at the
same in-plane positions; at the ends of a stack the end slice repeats. Pixels outside the image are 0.

Intensity normalisation: each crop's slices are mapped to ``[0, 1]`` by robust percentiles
(``roi.normalise_percentiles``) of the *whole decoded slices* the crop is cut from (not of the crop alone, so
dark and bright crops keep their contrast, and the same slice always gets the same scaling whichever other ROIs
are cut), then clipped.

Mask: a disc (``roi.mask_shape: disc``) of diameter ``mask_size_mm`` centred on the ROI centre, on every slice,
cleared where the crop leaves the image. Why a shape and not a segmentation: the coordinates mark the centre of
the structure, not its outline, and intensity-based segmentation of the canal, the foramen or the recess fails
exactly where it matters (a severely stenosed canal has no bright CSF left to threshold; foraminal fat vanishes
as the foramen narrows). A fixed disc in millimetres describes the same physical neighbourhood in every study,
whatever the scanner's pixel size, so radiomics features compare across studies; what grows or shrinks inside
it (CSF, fat, disc) is what the features then measure. ``square`` uses the whole square of that side.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import ndimage

from radiospine import vocab
from radiospine.catalog import series_dir
from radiospine.config import RadiospineConfig, RoiConfig
from radiospine.errors import DicomReadError, RoiError
from radiospine.geometry import (
    StackGeometry,
    column_direction,
    coordinate_to_patient,
    find_stack,
    inside_image,
    patient_to_pixel,
    patient_to_voxel,
    pixel_spacing,
    polyline_crossing_on_slice,
    project_onto_slice,
    row_direction,
    slice_index_of_instance,
    slice_spacing_mm,
)
from radiospine.roi.axial import assign_axial_levels, chosen_slices
from radiospine.roi.types import Roi, RoiCrop, RoiSource

log = logging.getLogger(__name__)

#: Columns a coordinates frame must have (as :func:`radiospine.labels.load_label_coordinates` returns);
#: an optional ``source`` column (``label`` / ``predicted`` / ``fallback``) says where each point came from.
REQUIRED_COORDINATE_COLUMNS = ("study_id", "series_id", "instance_number", "condition", "level", "x", "y")

#: The failure reason of a (condition, level) the coordinates do not hold.
NO_COORDINATE = "no coordinate"


@dataclass(frozen=True)
class RoiFailure:
    """An ROI that could not be made, recorded so the feature table can say why (never a silent NaN)."""

    study_id: int
    condition: str
    level: str
    view: str
    reason: str


def roi_config(config: RoiConfig | RadiospineConfig) -> RoiConfig:
    """The ``roi`` section of a root config (or the section itself)."""
    return config.roi if isinstance(config, RadiospineConfig) else config


def odd_pixels(size_mm: float, pixel_mm: float) -> int:
    """The odd number of pixels closest to ``size_mm / pixel_mm`` from above, so the crop has a centre pixel."""
    n = max(1, int(round(size_mm / pixel_mm)))
    return n if n % 2 else n + 1


def neighbour_indices(centre: int, n_slices: int, neighbours: int) -> tuple[int, ...]:
    """``centre - neighbours .. centre + neighbours``, clamped to the stack (the end slice repeats)."""
    return tuple(int(np.clip(centre + k, 0, n_slices - 1)) for k in range(-neighbours, neighbours + 1))


def normalise_intensity(voxels: np.ndarray, percentiles: tuple[float, float]) -> np.ndarray:
    """Map intensities to ``[0, 1]`` by the given robust percentiles of ``voxels`` (any shape), clipped; float32."""
    low, high = np.percentile(voxels, percentiles)
    scale = float(high - low) if high > low else 1.0
    return np.clip((np.asarray(voxels, np.float32) - np.float32(low)) / np.float32(scale), 0.0, 1.0)


def plane_grid(centre_lps: np.ndarray, row_axis_lps: np.ndarray, col_axis_lps: np.ndarray, shape: tuple[int, int],
               pixel_mm: float) -> np.ndarray:
    """LPS positions of a ``shape = (h, w)`` grid centred on ``centre_lps`` -> ``(h, w, 3)`` mm.

    Grid pixel ``(r, c)`` sits at ``centre + (r - (h-1)/2) * pixel_mm * row_axis + (c - (w-1)/2) * pixel_mm *
    col_axis``; ``row_axis`` is the unit direction the grid's row index grows along (downwards), ``col_axis``
    the one its column index grows along.
    """
    h, w = shape
    r = (np.arange(h) - (h - 1) / 2.0) * pixel_mm
    c = (np.arange(w) - (w - 1) / 2.0) * pixel_mm
    return (np.asarray(centre_lps, float)[None, None, :] + r[:, None, None] * np.asarray(row_axis_lps)[None, None, :]
            + c[None, :, None] * np.asarray(col_axis_lps)[None, None, :])


def sample_slices(images: np.ndarray, affine: np.ndarray, grid_lps: np.ndarray, pixel_mm: float,
                  order: int = 1) -> np.ndarray:
    """Sample parallel slices at the in-plane positions of an LPS grid lying in (or near) their planes.

    Args:
        images: ``(k, rows, cols)`` slices of one stack.
        affine: that stack's ``(col, row, slice, 1)`` -> LPS affine (only its in-plane part is used).
        grid_lps: ``(h, w, 3)`` LPS points (:func:`plane_grid`); each is mapped to fractional (row, col).
        pixel_mm: the grid spacing, to anti-alias when it is coarser than the image's pixels.
        order: spline order of ``map_coordinates`` (1: linear).

    Returns:
        ``(k, h, w)`` float32; 0 outside the image.
    """
    h, w, _ = grid_lps.shape
    src = patient_to_voxel(affine, grid_lps.reshape(-1, 3))
    rows, cols = src[:, 1], src[:, 2]
    k, n_rows, n_cols = images.shape
    row_spacing, col_spacing = pixel_spacing(affine)
    sigma_row = max(0.0, (pixel_mm / row_spacing - 1.0) / 2.0)
    sigma_col = max(0.0, (pixel_mm / col_spacing - 1.0) / 2.0)
    margin = int(np.ceil(4 * max(sigma_row, sigma_col))) + 2
    r0 = int(np.clip(np.floor(rows.min()) - margin, 0, n_rows))
    r1 = int(np.clip(np.ceil(rows.max()) + margin + 1, 0, n_rows))
    c0 = int(np.clip(np.floor(cols.min()) - margin, 0, n_cols))
    c1 = int(np.clip(np.ceil(cols.max()) + margin + 1, 0, n_cols))
    out = np.zeros((k, h * w), dtype=np.float32)
    if r1 <= r0 or c1 <= c0:
        return out.reshape(k, h, w)
    region = np.asarray(images[:, r0:r1, c0:c1], dtype=np.float32)
    if sigma_row > 0 or sigma_col > 0:
        region = ndimage.gaussian_filter(region, sigma=(0.0, sigma_row, sigma_col), mode="nearest")
    inside = (rows >= -0.5) & (rows <= n_rows - 0.5) & (cols >= -0.5) & (cols <= n_cols - 0.5)
    coordinates = np.stack([rows - r0, cols - c0])
    for i in range(k):
        out[i] = ndimage.map_coordinates(region[i], coordinates, order=order, mode="nearest") * inside
    return out.reshape(k, h, w)


def roi_mask(shape: tuple[int, int], pixel_mm: float, size_mm: float, mask_shape: str) -> np.ndarray:
    """``(h, w)`` uint8: a disc of diameter ``size_mm`` (or a square of side ``size_mm``) at the grid centre."""
    h, w = shape
    r = (np.arange(h) - (h - 1) / 2.0)[:, None] * pixel_mm
    c = (np.arange(w) - (w - 1) / 2.0)[None, :] * pixel_mm
    half = size_mm / 2.0
    if mask_shape == "disc":
        inside = r**2 + c**2 <= half**2
    elif mask_shape == "square":
        inside = (np.abs(r) <= half) & (np.abs(c) <= half)
    else:
        raise ValueError(f"unknown mask shape {mask_shape!r}; expected 'disc' or 'square'")
    return inside.astype(np.uint8)


def cut_roi(roi: Roi, slices: np.ndarray, affine: np.ndarray, config: RoiConfig) -> RoiCrop:
    """Cut one ROI from the decoded slices it names.

    Args:
        roi: from :func:`place_rois`.
        slices: ``(len(roi.slice_indices), rows, cols)`` the stack slices ``roi.slice_indices``, in that order,
            already normalised (:func:`normalise_intensity`).
        affine: the *stack's* affine (stack slice indices, not those of a partial volume).
        config: the ROI config (pixel spacing, mask).

    Raises:
        RoiError: the crop's mask lies wholly outside the image.
    """
    shape_cfg = getattr(config, vocab.split_condition(roi.condition).base)
    pixel_mm = config.pixel_mm
    grid_shape = (odd_pixels(roi.size_mm[0], pixel_mm), odd_pixels(roi.size_mm[1], pixel_mm))
    centre_slice = roi.slice_indices[len(roi.slice_indices) // 2]
    centre = project_onto_slice(affine, centre_slice, np.asarray(roi.centre_lps)[None, :])[0]
    # the crop's rows grow along the image's column direction, its columns along the image's row direction
    grid = plane_grid(centre, column_direction(affine), row_direction(affine), grid_shape, pixel_mm)
    image = sample_slices(slices, affine, grid, pixel_mm)
    valid = sample_slices(np.ones((1, *slices.shape[1:]), np.float32), affine, grid, pixel_mm, order=0)[0] > 0
    mask = roi_mask(grid_shape, pixel_mm, shape_cfg.mask_size_mm, config.mask_shape) * valid
    if not mask.any():
        raise RoiError(f"study {roi.study_id} {roi.condition} {roi.level}: the {roi.view} ROI at "
                       f"{np.round(roi.centre_lps, 1).tolist()} mm lies outside series {roi.series_id}'s image")
    return RoiCrop(roi=roi, image=image, mask=np.repeat(mask[None].astype(np.uint8), len(roi.slice_indices), 0),
                   pixel_mm=pixel_mm, slice_mm=slice_spacing_mm(affine))


def place_rois(study_id: int, coords: pd.DataFrame, stacks_by_series: Mapping[int, Sequence[StackGeometry]],
               config: RoiConfig, unreadable_series: Mapping[int, str] | None = None
               ) -> tuple[list[Roi], list[RoiFailure]]:
    """Place the ROIs of one study from its coordinates (pure geometry: no pixel data is read).

    Args:
        study_id: the study.
        coords: its coordinate rows (``REQUIRED_COORDINATE_COLUMNS``, condition and level in snake_case, optional
            ``source``); rows of other studies are ignored.
        stacks_by_series: series id -> its stacks (header-only ``SeriesStack`` s or ``Volume`` s). A series
            missing here makes its ROIs failures.
        config: the ROI config.

    Returns:
        ``(rois, failures)``. One ROI per coordinate row on the series it names (the view of its base
        condition), plus, with ``canal_on_axial``, the spinal canal on the axial slice through each disc: the
        slice of that level's subarticular coordinates, or when there are none the slice the axial level
        assignment (:mod:`radiospine.roi.axial`) ties to the level, centred where the canal line (the canal
        points joined from L1/L2 down to L5/S1) crosses that slice's plane. Every one of the 25
        (condition, level) of the study without an ROI in its own view is a failure with the reason
        (:data:`NO_COORDINATE` when the coordinates lack it).
    """
    required = [c for c in REQUIRED_COORDINATE_COLUMNS if c not in coords.columns]
    if required:
        raise RoiError(f"coordinates lack column(s) {required}; read them with radiospine.labels."
                       "load_label_coordinates or the localiser's output")
    rows = coords[coords["study_id"] == int(study_id)]
    rois: list[Roi] = []
    failures: list[RoiFailure] = []
    canal_points: dict[str, tuple[np.ndarray, RoiSource]] = {}
    axial_slices: dict[str, tuple[int, int, int]] = {}  # level -> (series, stack index, slice index)
    done: set[tuple[str, str]] = set()
    for row in rows.itertuples(index=False):
        condition, level = str(row.condition), str(row.level)
        base = vocab.split_condition(condition).base
        view = vocab.VIEW_OF_BASE_CONDITION[base]
        source: RoiSource = getattr(row, "source", "label") if "source" in rows.columns else "label"
        if (condition, level) in done:
            log.warning("study %s: more than one coordinate for %s %s; using the first", study_id, condition, level)
            continue
        if int(row.series_id) not in stacks_by_series:
            reason = (unreadable_series or {}).get(int(row.series_id), "it was not read")
            failures.append(RoiFailure(int(study_id), condition, level, view,
                                       f"series {int(row.series_id)} is not available: {reason}"))
            continue
        stacks = stacks_by_series[int(row.series_id)]
        try:
            stack_index = find_stack(list(stacks), int(row.instance_number))
        except KeyError as exc:
            failures.append(RoiFailure(int(study_id), condition, level, view,
                                       f"series {int(row.series_id)}: {exc.args[0]}"))
            continue
        stack = stacks[stack_index]
        slice_index = slice_index_of_instance(stack, int(row.instance_number))
        if not inside_image(stack.shape, float(row.x), float(row.y), margin_px=0.0):
            failures.append(RoiFailure(int(study_id), condition, level, view,
                                       f"coordinate x={row.x}, y={row.y} lies outside the {stack.shape[2]}x"
                                       f"{stack.shape[1]} image of series {int(row.series_id)}"))
            continue
        centre = coordinate_to_patient(stack, int(row.instance_number), float(row.x), float(row.y))
        done.add((condition, level))
        rois.append(Roi(study_id=int(study_id), series_id=int(row.series_id), stack_index=stack_index,
                        condition=condition, level=level, view=view, centre_lps=tuple(float(v) for v in centre),
                        size_mm=tuple(getattr(config, base).crop_mm),
                        slice_indices=neighbour_indices(slice_index, stack.shape[0], config.neighbour_slices),
                        source=source))
        if base == vocab.SPINAL:
            canal_points[level] = (centre, source)
        elif base == vocab.SUBARTICULAR:
            axial_slices.setdefault(level, (int(row.series_id), stack_index, slice_index))

    if config.canal_on_axial and canal_points:
        rois.extend(_canal_on_axial(int(study_id), canal_points, axial_slices, stacks_by_series, rows, config,
                                    failures))
    for condition in vocab.CONDITIONS:
        for level in vocab.LEVELS:
            if (condition, level) not in done and not any(
                    f.condition == condition and f.level == level for f in failures):
                view = vocab.VIEW_OF_BASE_CONDITION[vocab.split_condition(condition).base]
                failures.append(RoiFailure(int(study_id), condition, level, view, NO_COORDINATE))
    return rois, failures


def _canal_on_axial(study_id: int, canal_points: dict[str, tuple[np.ndarray, RoiSource]],
                    axial_slices: dict[str, tuple[int, int, int]],
                    stacks_by_series: Mapping[int, Sequence[StackGeometry]], rows: pd.DataFrame, config: RoiConfig,
                    failures: list[RoiFailure]) -> list[Roi]:
    """The canal on the axial slice through each disc (see :func:`place_rois`)."""
    axial_series = sorted({int(s) for s in rows.loc[rows["condition"].isin(
        [c for c in vocab.CONDITIONS if vocab.split_condition(c).base == vocab.SUBARTICULAR]), "series_id"]}
        & set(stacks_by_series))
    ordered = [level for level in vocab.LEVELS if level in canal_points]
    canal_line = np.array([canal_points[level][0] for level in ordered])
    missing = [level for level in ordered if level not in axial_slices]
    if missing and axial_series:
        assignment = assign_axial_levels(study_id, {level: canal_points[level][0] for level in missing},
                                         {s: stacks_by_series[s] for s in axial_series},
                                         max_distance_mm=config.axial_max_distance_mm)
        for level, row in chosen_slices(assignment).iterrows():
            axial_slices[level] = (int(row.series_id), int(row.stack_index), int(row.slice_index))
    rois = []
    for level in ordered:
        if level not in axial_slices:
            failures.append(RoiFailure(study_id, vocab.SPINAL, level, "axial_t2",
                                       "no axial slice through this level (no subarticular coordinate and no "
                                       "axial slice within roi.axial_max_distance_mm of the canal point)"))
            continue
        series_id, stack_index, slice_index = axial_slices[level]
        stack = stacks_by_series[series_id][stack_index]
        centre = polyline_crossing_on_slice(stack.affine, slice_index, canal_line)
        _, x, y = patient_to_pixel(stack.affine, centre[None, :])
        if not inside_image(stack.shape, x, y)[0]:
            failures.append(RoiFailure(study_id, vocab.SPINAL, level, "axial_t2",
                                       f"the canal point projects outside the image of axial series {series_id}"))
            continue
        rois.append(Roi(study_id=study_id, series_id=series_id, stack_index=stack_index, condition=vocab.SPINAL,
                        level=level, view="axial_t2", centre_lps=tuple(float(v) for v in centre),
                        size_mm=tuple(config.spinal_canal_stenosis.crop_mm),
                        slice_indices=neighbour_indices(slice_index, stack.shape[0], config.neighbour_slices),
                        source=canal_points[level][1]))
    return rois


def cut_rois(rois: Sequence[Roi], stacks_by_series: Mapping[int, Sequence], config: RoiConfig,
             failures: list[RoiFailure] | None = None) -> list[RoiCrop]:
    """Decode the slices each ROI needs (``load_volume(stack, slice(a, b))``, once per range) and cut them.

    ``stacks_by_series`` must hold header-only ``SeriesStack`` s from :func:`radiospine.io.headers.read_series_headers`.
    A failure is appended to ``failures`` (or raised as :class:`RoiError` when it is ``None``).
    """
    from radiospine.io.decode import load_volume

    decoded: dict[tuple[int, int, int, int], np.ndarray] = {}
    crops = []
    for roi in rois:
        stack = stacks_by_series[roi.series_id][roi.stack_index]
        first, last = min(roi.slice_indices), max(roi.slice_indices)
        key = (roi.series_id, roi.stack_index, first, last)
        try:
            if key not in decoded:
                volume = load_volume(stack, slice(first, last + 1))
                decoded[key] = normalise_intensity(volume.voxels, config.normalise_percentiles)
            slices = decoded[key][np.asarray(roi.slice_indices) - first]
            crops.append(cut_roi(roi, slices, stack.affine, config))
        except (DicomReadError, RoiError) as exc:
            if failures is None:
                raise RoiError(f"study {roi.study_id} {roi.condition} {roi.level} ({roi.view}): {exc}") from exc
            failures.append(RoiFailure(roi.study_id, roi.condition, roi.level, roi.view, str(exc)))
    return crops


def read_study_stacks(data_dir: str | Path, split: str, study_id: int, series_ids: Sequence[int],
                      failures_by_series: dict[int, str] | None = None) -> dict[int, list]:
    """Header-only stacks of the given series of one study: series id -> ``list[SeriesStack]``.

    A series that cannot be read is left out; its reason goes to ``failures_by_series`` (or is raised as
    :class:`RoiError` when that is ``None``).
    """
    from radiospine.io.headers import read_series_headers

    stacks: dict[int, list] = {}
    for series_id in series_ids:
        path = series_dir(Path(data_dir), split, int(study_id), int(series_id))
        try:
            stacks[int(series_id)] = read_series_headers(path, study_id=int(study_id), series_id=int(series_id))
        except (DicomReadError, FileNotFoundError) as exc:
            if failures_by_series is None:
                raise RoiError(f"study {study_id}: series {series_id} cannot be read: {exc}") from exc
            log.warning("study %s: series %s cannot be read: %s", study_id, series_id, exc)
            failures_by_series[int(series_id)] = str(exc)
    return stacks


def crops_for_study(data_dir: str | Path, split: str, study_id: int, coords: pd.DataFrame,
                    config: RoiConfig | RadiospineConfig, *, failures: list[RoiFailure] | None = None,
                    strict: bool = False) -> list[RoiCrop]:
    """Every ROI crop of one study that its coordinates allow (module-level, picklable for worker processes).

    Args:
        data_dir, split: the data folder (Kaggle layout) and ``"train"`` / ``"test"``.
        study_id: the study.
        coords: coordinates (label or localiser), as :func:`radiospine.labels.load_label_coordinates` returns;
            other studies' rows are ignored; an optional ``source`` column marks predicted centres.
        config: the ``roi`` config section (or the root config).
        failures: when given, every (condition, level, view) that could not be made is appended here as a
            :class:`RoiFailure` (no coordinate, unreadable series, instance not in the series, outside the image,
            undecodable slice). In a worker process, make the list inside the worker and return it with the crops.
        strict: raise :class:`RoiError` at the first failure other than a missing coordinate instead.
            Without ``failures`` or ``strict``, failures are logged as warnings and the other crops returned.

    Returns:
        One :class:`RoiCrop` per placed ROI: the 25 (condition, level) in their own view where the coordinates
        have them, plus the canal on axial slices (``roi.canal_on_axial``); ``roi.view`` tells views apart.
    """
    config = roi_config(config)
    rows = coords[coords["study_id"] == int(study_id)]
    series_failures: dict[int, str] = {}
    stacks = read_study_stacks(data_dir, split, study_id, sorted({int(s) for s in rows["series_id"]}),
                               None if strict else series_failures)
    rois, placement_failures = place_rois(int(study_id), rows, stacks, config, series_failures)
    recorded: list[RoiFailure] = []
    for failure in placement_failures:
        if strict and failure.reason != NO_COORDINATE:
            raise RoiError(f"study {failure.study_id} {failure.condition} {failure.level} ({failure.view}): "
                           f"{failure.reason}")
        recorded.append(failure)
    crops = cut_rois(rois, stacks, config, None if strict else recorded)
    for failure in recorded:
        if failure.reason != NO_COORDINATE:
            log.warning("study %s %s %s (%s): no crop: %s", failure.study_id, failure.condition, failure.level,
                        failure.view, failure.reason)
    if failures is not None:
        failures.extend(recorded)
    return crops
