"""Slices -> stacks: pure geometry on slice headers, no file access and no pydicom.

What it does: holds the header records (:class:`SliceHeader` per slice, :class:`SeriesStack` per stack,
:class:`SkippedFile` per file left out) and splits a series' slices into stacks
(:func:`split_into_stacks`). What it does not: read files (:mod:`radiospine.io.headers` fills the records from
DICOM headers) or decode pixels (:mod:`radiospine.io.decode`).

Stacks
------
Slices (a single-frame file, or one frame of a multi-frame Enhanced MR file) go to the same stack when they
share the SeriesInstanceUID, Rows/Columns, PixelSpacing and ImageOrientationPatient (row and column directions
within ``orientation_tolerance_deg``). Within such a group, slices are ordered by their position along the
slice normal ``n = IOP[0:3] x IOP[3:6]`` (ascending), never by file name or instance number, and the group is
split again:

* **duplicated positions** (two slices within ``DUPLICATE_POSITION_TOLERANCE_MM`` along the normal): the
  k-th slice (by instance number) of every position goes to the k-th stack, so a repeated acquisition at the
  same positions gives two stacks;
* **gaps**: a step along the normal larger than ``gap_factor`` times the median step starts a new stack.
  With the default 1.5 a single missing slice splits the stack too, because a Volume assumes a uniform step
  (its affine would put every slice after the hole in the wrong place).

Stacks are numbered (``stack_index``) by their smallest instance number.

Geometry follows :mod:`radiospine.geometry`: voxels ``(slice, row, col)``, affine ``(col, row, slice, 1)`` ->
patient LPS mm, PixelSpacing ``[row spacing, column spacing]``.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from radiospine.geometry import image_plane_normal, make_affine

logger = logging.getLogger(__name__)

#: Two slices closer than this along the slice normal are at the same position (a duplicate), mm.
DUPLICATE_POSITION_TOLERANCE_MM = 0.01


@dataclass(frozen=True)
class SkippedFile:
    """A ``*.dcm`` file left out of a series, and why."""

    path: Path
    reason: str


@dataclass(frozen=True)
class SliceHeader:
    """One image slice: a single-frame file, or one frame of a multi-frame file.

    Attributes:
        path: the file.
        frame_index: 0-based frame of the file (0 for a single-frame file).
        instance_number: DICOM InstanceNumber of the file (shared by all frames of a multi-frame file).
        position_lps: ImagePositionPatient, LPS mm of the centre of pixel (row 0, col 0).
        orientation: ImageOrientationPatient, 6 direction cosines: row direction (along which the column
            index grows), then column direction (along which the row index grows).
        rows, cols: image size in pixels.
        pixel_spacing: DICOM PixelSpacing ``(row spacing, column spacing)`` mm.
        rescale_slope, rescale_intercept: stored value -> output value (1 and 0 when the file has none).
        transfer_syntax_uid: the file's transfer syntax.
    """

    path: Path
    frame_index: int
    instance_number: int
    position_lps: tuple[float, float, float]
    orientation: tuple[float, float, float, float, float, float]
    rows: int
    cols: int
    pixel_spacing: tuple[float, float]
    rescale_slope: float
    rescale_intercept: float
    transfer_syntax_uid: str


@dataclass(frozen=True)
class SeriesStack:
    """Headers of one stack of parallel slices of a series, ordered along the slice normal; no pixel data.

    Attributes:
        study_id, series_id: the series' identity.
        stack_index: 0-based stack number within the series (stacks numbered by smallest instance number).
        slices: ``(n_slices,)`` slice headers, in ascending position along the image plane normal
            (:func:`radiospine.geometry.image_plane_normal` of ``orientation``).
        orientation: ImageOrientationPatient of the first slice (6 direction cosines).
        pixel_spacing: ``(row spacing, column spacing)`` mm.
        slice_thickness: SliceThickness mm, ``None`` when absent.
        spacing_between_slices: SpacingBetweenSlices mm, ``None`` when absent (used only for one-slice stacks).
        description: SeriesDescription, ``""`` when absent.
        series_dir: the series folder.
        series_instance_uid: SeriesInstanceUID (``""`` when absent).
        repetition_time_ms: RepetitionTime (ms) of the first file, ``None`` when absent (tells T1 from T2 when the
            series description is missing).
        skipped_files: files of the series folder that were left out, with the reason (the same tuple on
            every stack of the series).
    """

    study_id: int
    series_id: int
    stack_index: int
    slices: tuple[SliceHeader, ...] = field(repr=False)
    orientation: tuple[float, float, float, float, float, float]
    pixel_spacing: tuple[float, float]
    slice_thickness: float | None
    spacing_between_slices: float | None
    description: str
    series_dir: Path
    series_instance_uid: str = ""
    repetition_time_ms: float | None = None
    skipped_files: tuple[SkippedFile, ...] = field(default=(), repr=False)

    def __post_init__(self) -> None:
        if not self.slices:
            raise ValueError(f"a stack needs at least one slice ({self.series_dir}, stack {self.stack_index})")

    @property
    def shape(self) -> tuple[int, int, int]:
        """``(n_slices, rows, cols)`` of the stack's voxel array."""
        first = self.slices[0]
        return (len(self.slices), first.rows, first.cols)

    @property
    def instance_numbers(self) -> np.ndarray:
        """``(n_slices,)`` int64 InstanceNumber per slice, in stack (normal) order."""
        return np.array([s.instance_number for s in self.slices], dtype=np.int64)

    @property
    def positions_lps(self) -> np.ndarray:
        """``(n_slices, 3)`` float64 ImagePositionPatient per slice, LPS mm."""
        return np.array([s.position_lps for s in self.slices], dtype=float)

    @property
    def slice_step_vector(self) -> np.ndarray:
        """LPS mm vector from one slice's position to the next: (last - first) / (n - 1).

        For a single slice: the image plane normal times SpacingBetweenSlices, else SliceThickness, else 1 mm.
        """
        positions = self.positions_lps
        if len(positions) > 1:
            return (positions[-1] - positions[0]) / (len(positions) - 1)
        for step in (self.spacing_between_slices, self.slice_thickness):
            if step is not None and step > 0:
                return image_plane_normal(self.orientation) * step
        return image_plane_normal(self.orientation) * 1.0

    @property
    def affine(self) -> np.ndarray:
        """``(4, 4)`` float64, homogeneous ``(col, row, slice, 1)`` -> patient LPS mm (slice 0 at the origin)."""
        return make_affine(self.slices[0].position_lps, self.orientation, self.pixel_spacing, self.slice_step_vector)

    @property
    def position_residual_mm(self) -> float:
        """Largest distance (mm) between a slice's ImagePositionPatient and where :attr:`affine` puts it.

        Near 0 for a regular stack; large when the spacing is uneven (below the gap split threshold).
        """
        positions = self.positions_lps
        predicted = positions[0] + np.arange(len(positions))[:, None] * self.slice_step_vector
        return float(np.linalg.norm(positions - predicted, axis=1).max())

    @property
    def source_paths(self) -> tuple[Path, ...]:
        """``(n_slices,)`` file of each slice (repeated for the frames of a multi-frame file)."""
        return tuple(s.path for s in self.slices)


# --- splitting slices into stacks -------------------------------------------------------------------------------------

def split_into_stacks(
    series_uid_of: Mapping[SliceHeader, str], orientation_tolerance_deg: float, gap_factor: float
) -> list[list[SliceHeader]]:
    """Slices -> stacks, each ordered along its normal; stacks ordered by smallest instance number.

    Args:
        series_uid_of: every slice of the series folder -> the SeriesInstanceUID of its file.
        orientation_tolerance_deg: slices whose row or column directions differ by more than this angle go
            to different stacks.
        gap_factor: a step along the normal larger than this times the median step starts a new stack.

    Returns:
        The stacks, each a non-empty list of slices in ascending position along its normal.
    """
    min_cosine = float(np.cos(np.deg2rad(orientation_tolerance_deg)))
    all_slices = sorted(series_uid_of, key=_slice_sort_key)

    # 1. planes: same series UID, size, spacing and orientation (greedy, against each group's first slice)
    groups: list[list[SliceHeader]] = []
    for header in all_slices:
        for group in groups:
            if series_uid_of[group[0]] == series_uid_of[header] and _same_plane(group[0], header, min_cosine):
                group.append(header)
                break
        else:
            groups.append([header])
    if len({series_uid_of[g[0]] for g in groups}) > 1:
        logger.warning(
            "%s holds several SeriesInstanceUIDs: their slices go to separate stacks", all_slices[0].path.parent
        )

    stacks: list[list[SliceHeader]] = []
    for group in groups:
        for repeat in _split_duplicates(group):
            stacks.extend(_split_gaps(repeat, gap_factor))
    stacks.sort(key=lambda stack: min(_slice_sort_key(s) for s in stack))
    return stacks


def _same_plane(a: SliceHeader, b: SliceHeader, max_cos_deviation: float) -> bool:
    """Same image size and spacing, row and column directions within the angular tolerance."""
    if (a.rows, a.cols) != (b.rows, b.cols) or not np.allclose(a.pixel_spacing, b.pixel_spacing, rtol=1e-3):
        return False
    directions_a = np.reshape(a.orientation, (2, 3))
    directions_b = np.reshape(b.orientation, (2, 3))
    cosines = np.sum(directions_a * directions_b, axis=1) / (
        np.linalg.norm(directions_a, axis=1) * np.linalg.norm(directions_b, axis=1)
    )
    return bool(np.all(cosines >= max_cos_deviation))


def _slice_sort_key(header: SliceHeader) -> tuple[int, str, int]:
    return (header.instance_number, str(header.path), header.frame_index)


def _distance_along_normal(slices: list[SliceHeader]) -> np.ndarray:
    normal = image_plane_normal(slices[0].orientation)
    return np.array([s.position_lps for s in slices], dtype=float) @ normal


def _split_duplicates(group: list[SliceHeader]) -> list[list[SliceHeader]]:
    """Slices sharing a position: the k-th (by instance number) of each position goes to repeat k.

    Returns the repeats, each sorted along the normal.
    """
    distances = _distance_along_normal(group)
    order = sorted(range(len(group)), key=lambda i: (distances[i], _slice_sort_key(group[i])))
    positions: list[list[int]] = []  # indices into group, per distinct position along the normal
    for i in order:
        if positions and distances[i] - distances[positions[-1][0]] <= DUPLICATE_POSITION_TOLERANCE_MM:
            positions[-1].append(i)
        else:
            positions.append([i])
    n_repeats = max(len(p) for p in positions)
    repeats: list[list[SliceHeader]] = [[] for _ in range(n_repeats)]
    for members in positions:
        for k, i in enumerate(sorted(members, key=lambda i: _slice_sort_key(group[i]))):
            repeats[k].append(group[i])
    return repeats


def _split_gaps(slices: list[SliceHeader], gap_factor: float) -> list[list[SliceHeader]]:
    """Cut a position-sorted run of slices where a step exceeds ``gap_factor`` x the median step."""
    if len(slices) < 3:
        return [slices]
    steps = np.diff(_distance_along_normal(slices))
    bounds = [0, *(np.flatnonzero(steps > gap_factor * np.median(steps)) + 1).tolist(), len(slices)]
    return [slices[begin:end] for begin, end in itertools.pairwise(bounds)]
