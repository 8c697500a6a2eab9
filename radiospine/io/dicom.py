"""Read DICOM MR series: headers -> :class:`SeriesStack` (cheap) -> :class:`~radiospine.io.volume.Volume` (pixels).

This is the only module of radiospine that imports pydicom.

Two steps, so that a feature stage can scan every series and then decode only the few slices it needs:

1. :func:`read_series_headers` reads the header of every ``*.dcm`` file of one series folder *without its
   pixel data* and splits the slices into stacks. A series may hold several stacks (one axial stack per disc,
   each tilted differently; a repeated acquisition; two blocks of slices with a gap between them).
2. :func:`load_volume` decodes the pixel data of a contiguous range of one stack's slices.

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

Bad files: skipped and recorded, unless ``strict``
--------------------------------------------------
A ``*.dcm`` file that cannot be used (not DICOM, header unreadable, truncated pixel data, no pixel data,
a missing geometry tag, a pixel data length that does not match Rows x Columns ...) is **skipped**: it is
logged as a warning and recorded, with the reason, in ``SeriesStack.skipped_files`` of every stack of the
series, so a run over thousands of studies goes on with the good files and the user is told about the bad
one. ``strict=True`` raises :class:`DicomReadError` at the first bad file instead. A folder with no usable
file at all raises :class:`DicomReadError` listing the reasons. Files not named ``*.dcm`` are ignored.

The header scan reads no pixel data, so it cannot see everything (damaged compressed data, a file changed
after the scan): :func:`load_volume` raises :class:`DicomReadError` naming the file when its pixels cannot be
decoded.

Geometry follows :mod:`radiospine.geometry`: voxels ``(slice, row, col)``, affine ``(col, row, slice, 1)`` ->
patient LPS mm, PixelSpacing ``[row spacing, column spacing]``.
"""

from __future__ import annotations

import itertools
import logging
import os
import struct
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pydicom
from pydicom.datadict import tag_for_keyword
from pydicom.dataset import Dataset
from pydicom.encaps import get_frame
from pydicom.errors import BytesLengthException, InvalidDicomError
from pydicom.multival import MultiValue
from pydicom.pixels import get_decoder, iter_pixels
from pydicom.uid import (
    UID,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000TransferSyntaxes,
    JPEGLSTransferSyntaxes,
    JPEGTransferSyntaxes,
)

from radiospine.geometry import image_plane_normal, make_affine, sub_stack_affine
from radiospine.io.volume import Volume

logger = logging.getLogger(__name__)

#: Two slices closer than this along the slice normal are at the same position (a duplicate), mm.
DUPLICATE_POSITION_TOLERANCE_MM = 0.01

#: What to tell the user to do about a file that is damaged.
_FIX_DAMAGED = (
    "re-export or re-download it, or delete it so that the series loads from its other files"
)

#: (7FE0,0010) Pixel Data, (7FE0,0008) Float Pixel Data, (7FE0,0009) Double Float Pixel Data.
_PIXEL_DATA_TAGS = frozenset({0x7FE00010, 0x7FE00008, 0x7FE00009})
_UNDEFINED_LENGTH = 0xFFFFFFFF
#: Explicit-VR value representations whose element header has a 4-byte length after 2 reserved bytes.
_LONG_LENGTH_VRS = {b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV"}
#: Transfer syntaxes whose frames end with the FFD9 marker (JPEG EOI, JPEG 2000 EOC).
_MARKER_TERMINATED_SYNTAXES = frozenset(JPEGTransferSyntaxes + JPEGLSTransferSyntaxes + JPEG2000TransferSyntaxes)
_END_OF_CODESTREAM = b"\xff\xd9"
#: What pydicom raises on a damaged header, while reading it or when a value is first converted.
_DAMAGED_HEADER_ERRORS = (
    OSError, EOFError, ValueError, TypeError, KeyError, IndexError, OverflowError, NotImplementedError,
    struct.error, BytesLengthException,
)
#: Image Pixel module attributes the decoders need.
_REQUIRED_PIXEL_KEYWORDS = (
    "Rows", "Columns", "BitsAllocated", "BitsStored", "PixelRepresentation", "SamplesPerPixel",
    "PhotometricInterpretation",
)


class DicomReadError(ValueError):
    """A DICOM file or series folder that cannot be read. The message names the file, the problem and the fix."""


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


@dataclass(frozen=True)
class _FileHeader:
    """What one file contributes: its slices and the series-level tags read from it."""

    slices: tuple[SliceHeader, ...]
    series_instance_uid: str
    description: str
    slice_thickness: float | None
    spacing_between_slices: float | None
    repetition_time_ms: float | None


# --- public API ---------------------------------------------------------------------------------------------

def read_series_headers(
    series_dir: Path,
    *,
    study_id: int | None = None,
    series_id: int | None = None,
    strict: bool = False,
    orientation_tolerance_deg: float = 0.5,
    gap_factor: float = 1.5,
) -> list[SeriesStack]:
    """Read the headers (no pixel data) of every ``*.dcm`` file of a series folder and split them into stacks.

    Args:
        series_dir: a series folder, by default laid out ``<study_id>/<series_id>/*.dcm``.
        study_id, series_id: the series' identity; default to the parent folder's and the folder's names,
            which must then be integers.
        strict: raise :class:`DicomReadError` at the first unusable file instead of skipping it.
        orientation_tolerance_deg: slices whose row or column directions differ by more than this angle go
            to different stacks.
        gap_factor: a step along the normal larger than this times the median step starts a new stack.

    Returns:
        The stacks, ordered by smallest instance number (``stack_index`` = position in the list).

    Raises:
        FileNotFoundError: ``series_dir`` is not a folder.
        ValueError: the folder names are not integer ids and no ids were given.
        DicomReadError: no ``*.dcm`` file, no usable file, or (``strict``) any unusable file.
    """
    series_dir = Path(series_dir)
    if not series_dir.is_dir():
        raise FileNotFoundError(f"series folder {series_dir} does not exist or is not a folder")
    study_id = _id_from_folder(study_id, series_dir.parent, "study_id", series_dir)
    series_id = _id_from_folder(series_id, series_dir, "series_id", series_dir)

    dicom_paths, other_names = _list_series_folder(series_dir)
    if not dicom_paths:
        others = f"; it holds {len(other_names)} other entries such as {other_names[:3]}" if other_names else ""
        raise DicomReadError(
            f"series folder {series_dir} has no *.dcm files{others}: point to a folder "
            "<study_id>/<series_id>/ holding the series' DICOM instance files"
        )
    if other_names:
        logger.debug("%s: ignoring %d entries not named *.dcm", series_dir, len(other_names))

    file_headers: list[_FileHeader] = []
    skipped: list[SkippedFile] = []
    for path in dicom_paths:
        try:
            file_headers.append(_read_file_header(path))
        except DicomReadError as exc:
            if strict:
                raise
            logger.warning("skipping a file of series %s: %s", series_dir, exc)
            skipped.append(SkippedFile(path=path, reason=str(exc)))
    if not file_headers:
        reasons = "; ".join(s.reason for s in skipped[:3])
        raise DicomReadError(
            f"series folder {series_dir}: none of its {len(skipped)} *.dcm files is usable ({reasons}"
            f"{' ...' if len(skipped) > 3 else ''})"
        )

    groups = _split_into_stacks(file_headers, orientation_tolerance_deg, gap_factor)
    series_info = {s: fh for fh in file_headers for s in fh.slices}
    stacks = []
    for stack_index, slices in enumerate(groups):
        first = slices[0]
        info = series_info[first]
        stacks.append(
            SeriesStack(
                study_id=study_id,
                series_id=series_id,
                stack_index=stack_index,
                slices=tuple(slices),
                orientation=first.orientation,
                pixel_spacing=first.pixel_spacing,
                slice_thickness=info.slice_thickness,
                spacing_between_slices=info.spacing_between_slices,
                description=info.description,
                series_dir=series_dir,
                series_instance_uid=info.series_instance_uid,
                repetition_time_ms=info.repetition_time_ms,
                skipped_files=tuple(skipped),
            )
        )
    for stack in stacks:
        step_mm = float(np.linalg.norm(stack.slice_step_vector))
        if len(stack.slices) > 2 and stack.position_residual_mm > 0.1 * step_mm:
            logger.warning(
                "%s stack %d: slices sit up to %.2f mm away from a uniform %.2f mm step (uneven spacing)",
                series_dir, stack.stack_index, stack.position_residual_mm, step_mm,
            )
    if len(stacks) > 1:
        logger.info(
            "%s: %d stacks of %s slices", series_dir, len(stacks), [len(s.slices) for s in stacks]
        )
    return stacks


def load_volume(stack: SeriesStack, slices: slice | None = None) -> Volume:
    """Decode the pixel data of a contiguous range of a stack's slices.

    Args:
        stack: from :func:`read_series_headers`.
        slices: stack slice indices to load, a ``slice`` with step 1 (``slice(10, 13)``); ``None`` loads all.

    Returns:
        A :class:`Volume`: voxels ``(n, rows, cols)`` float32, stored values times RescaleSlope plus
        RescaleIntercept (no windowing; MONOCHROME1 images are not inverted), the
        instance numbers of the loaded slices, and an affine whose origin is the first *loaded* slice (voxel
        ``k`` of the volume is stack slice ``start + k``).

    Raises:
        ValueError: ``slices`` is not a non-empty contiguous range.
        DicomReadError: a file cannot be opened or decoded, or its image size differs from the header scan.
    """
    n_slices = len(stack.slices)
    start, stop, step = (slices or slice(None)).indices(n_slices)
    if step != 1 or stop <= start:
        raise ValueError(
            f"slices={slices!r} selects no contiguous range of the {n_slices} slices of {stack.series_dir} "
            f"stack {stack.stack_index}: pass a slice with step 1 such as slice(0, {n_slices})"
        )
    chosen = stack.slices[start:stop]
    _, rows, cols = stack.shape
    voxels = np.empty((len(chosen), rows, cols), dtype=np.float32)

    wanted_by_path: dict[Path, list[tuple[int, SliceHeader]]] = {}
    for out_index, header in enumerate(chosen):
        wanted_by_path.setdefault(header.path, []).append((out_index, header))
    for path, wanted in wanted_by_path.items():
        frames = _decode_frames(path, [header.frame_index for _, header in wanted], (rows, cols), wanted[0][1])
        for (out_index, header), frame in zip(wanted, frames, strict=True):
            np.multiply(frame, np.float32(header.rescale_slope), out=voxels[out_index], dtype=np.float32)
            voxels[out_index] += np.float32(header.rescale_intercept)

    affine = sub_stack_affine(stack.affine, start)
    return Volume(
        voxels=voxels,
        affine=affine,
        instance_numbers=stack.instance_numbers[start:stop],
        study_id=stack.study_id,
        series_id=stack.series_id,
        stack_index=stack.stack_index,
        description=stack.description,
        source_paths=tuple(str(header.path) for header in chosen),
    )


def read_volume(series_dir: Path, **header_options) -> Volume:
    """Read a series folder that holds exactly one stack into a :class:`Volume` (all slices).

    ``header_options`` go to :func:`read_series_headers` (``study_id``, ``series_id``, ``strict`` ...).
    Raises :class:`DicomReadError` naming the folder when it holds several stacks.
    """
    stacks = read_series_headers(series_dir, **header_options)
    if len(stacks) != 1:
        sizes = ", ".join(f"stack {s.stack_index}: {len(s.slices)} slices" for s in stacks)
        raise DicomReadError(
            f"series folder {series_dir} holds {len(stacks)} stacks ({sizes}), not one: use "
            "read_series_headers() and load_volume() on the stack you need"
        )
    return load_volume(stacks[0])


# --- reading one file's header ---------------------------------------------------------------------------------

def _read_file_header(path: Path) -> _FileHeader:
    """Parse one file up to (not into) its pixel data; check what loading will need. Raises DicomReadError.

    A damaged header makes pydicom raise many kinds of errors, when reading or when a value is first used
    (unknown VR, odd byte counts, undecodable text ...): all of them become a DicomReadError naming the file.
    """
    try:
        return _parse_file_header(path)
    except DicomReadError:
        raise
    except InvalidDicomError as exc:
        raise DicomReadError(
            f"{path} is not a DICOM file ({_one_line(exc)}): remove it from the series folder or replace it with the "
            "exported DICOM instance"
        ) from exc
    except _DAMAGED_HEADER_ERRORS as exc:
        raise DicomReadError(
            f"{path}: the DICOM header cannot be parsed ({type(exc).__name__}: {_one_line(exc)}); the file is damaged: "
            f"{_FIX_DAMAGED}"
        ) from exc


def _parse_file_header(path: Path) -> _FileHeader:
    with path.open("rb") as fp:
        ds = pydicom.dcmread(fp, stop_before_pixels=True)
        transfer_syntax = _transfer_syntax(ds)
        if transfer_syntax == DeflatedExplicitVRLittleEndian:
            pixel_element = None  # the dataset was inflated in memory: fp does not point at the pixels
        else:
            pixel_element = _read_pixel_element_header(fp, ds, path)

    for keyword in _REQUIRED_PIXEL_KEYWORDS:
        if ds.get(keyword) in (None, ""):
            raise DicomReadError(
                f"{path} has no {keyword} {_tag_text(keyword)}{_sop_class_text(ds)}: it is not a complete image "
                f"(a truncated header or a non-image object): {_FIX_DAMAGED}"
            )
    rows, cols = int(ds.Rows), int(ds.Columns)
    n_frames = _number_of_frames(ds, path)
    if int(ds.SamplesPerPixel) != 1:
        raise DicomReadError(
            f"{path} is a colour image (SamplesPerPixel {ds.SamplesPerPixel}); MR series must be greyscale: "
            "remove it from the series folder"
        )
    if pixel_element is not None:
        _check_pixel_data_length(path, ds, pixel_element, rows * cols * n_frames)

    instance_number = ds.get("InstanceNumber")
    if instance_number in (None, ""):
        raise DicomReadError(
            f"{path} has no InstanceNumber (0020,0013); labels and volumes refer to slices by instance number: "
            "re-export the file with its instance number"
        )

    per_frame = ds.get("PerFrameFunctionalGroupsSequence") or []
    shared = ds.get("SharedFunctionalGroupsSequence") or []
    frames = [
        _FrameAttributes(
            groups=(*per_frame[frame_index : frame_index + 1], *shared[:1]),
            top_level=ds if n_frames == 1 else None,
            path=path,
            frame_index=frame_index,
        )
        for frame_index in range(n_frames)
    ]
    slices = tuple(
        _slice_header(frame, rows, cols, int(instance_number), str(transfer_syntax)) for frame in frames
    )
    return _FileHeader(
        slices=slices,
        series_instance_uid=str(ds.get("SeriesInstanceUID", "")),
        description=str(ds.get("SeriesDescription", "") or ""),
        slice_thickness=frames[0].optional_float("PixelMeasuresSequence", "SliceThickness"),
        spacing_between_slices=frames[0].optional_float("PixelMeasuresSequence", "SpacingBetweenSlices"),
        repetition_time_ms=frames[0].optional_float("MRTimingAndRelatedParametersSequence", "RepetitionTime"),
    )


@dataclass(frozen=True)
class _FrameAttributes:
    """Where one frame's attributes are: its per-frame functional groups, the shared functional groups and,
    for a single-frame file only, the top level (a multi-frame file's top-level geometry cannot say where each
    frame is)."""

    groups: tuple[Dataset, ...]
    top_level: Dataset | None
    path: Path
    frame_index: int

    def get(self, sequence_keyword: str, keyword: str):
        """The value of ``keyword`` in the first group's ``sequence_keyword`` item holding it, else top level."""
        for groups in self.groups:
            sequence = groups.get(sequence_keyword)
            if sequence and keyword in sequence[0]:
                return sequence[0][keyword].value
        return self.top_level.get(keyword) if self.top_level is not None else None

    def optional_float(self, sequence_keyword: str, keyword: str) -> float | None:
        """One finite number, ``None`` when absent or empty; DicomReadError when it is not a number."""
        value = self.get(sequence_keyword, keyword)
        if value is None or value == "":
            return None
        try:
            number = float(value)
        except (TypeError, ValueError) as exc:
            raise DicomReadError(f"{self.path}: {keyword} {value!r} is not a number: {_FIX_DAMAGED}") from exc
        if not np.isfinite(number):
            raise DicomReadError(f"{self.path}: {keyword} is {number}: {_FIX_DAMAGED}")
        return number

    def floats(self, sequence_keyword: str, keyword: str, count: int) -> tuple[float, ...]:
        """``count`` finite numbers, or DicomReadError naming the file, the tag and where it was looked for."""
        value = self.get(sequence_keyword, keyword)
        if value is None or value == "":
            where = (
                "(nor in a functional group)" if self.top_level is not None else
                f"in frame {self.frame_index} of its PerFrameFunctionalGroupsSequence or "
                f"SharedFunctionalGroupsSequence ({sequence_keyword})"
            )
            raise DicomReadError(
                f"{self.path} has no {keyword} {_tag_text(keyword)} {where}, so its slice cannot be placed in "
                f"patient space: {_FIX_DAMAGED}"
            )
        values = list(value) if isinstance(value, (list, tuple, MultiValue)) else [value]
        try:
            floats = tuple(float(v) for v in values)
        except (TypeError, ValueError) as exc:
            raise DicomReadError(f"{self.path}: {keyword} {values} is not numeric: {_FIX_DAMAGED}") from exc
        if len(floats) != count or not np.all(np.isfinite(floats)):
            raise DicomReadError(
                f"{self.path}: {keyword} {_tag_text(keyword)} must hold {count} finite numbers, got {values}: "
                f"{_FIX_DAMAGED}"
            )
        return floats


def _slice_header(
    frame: _FrameAttributes, rows: int, cols: int, instance_number: int, transfer_syntax_uid: str
) -> SliceHeader:
    """The geometry and rescale of one frame."""
    path = frame.path
    position = frame.floats("PlanePositionSequence", "ImagePositionPatient", 3)
    orientation = frame.floats("PlaneOrientationSequence", "ImageOrientationPatient", 6)
    spacing = frame.floats("PixelMeasuresSequence", "PixelSpacing", 2)
    if min(spacing) <= 0:
        raise DicomReadError(f"{path}: PixelSpacing {list(spacing)} must be positive: {_FIX_DAMAGED}")
    row_direction, column_direction = np.reshape(orientation, (2, 3))
    if (
        not np.isclose(np.linalg.norm(row_direction), 1, atol=1e-2)
        or not np.isclose(np.linalg.norm(column_direction), 1, atol=1e-2)
        or abs(np.dot(row_direction, column_direction)) > 1e-2
    ):
        raise DicomReadError(
            f"{path}: ImageOrientationPatient {list(orientation)} is not two perpendicular unit vectors: "
            f"{_FIX_DAMAGED}"
        )
    slope = frame.optional_float("PixelValueTransformationSequence", "RescaleSlope")
    intercept = frame.optional_float("PixelValueTransformationSequence", "RescaleIntercept")
    return SliceHeader(
        path=path,
        frame_index=frame.frame_index,
        instance_number=instance_number,
        position_lps=position,  # type: ignore[arg-type]
        orientation=orientation,  # type: ignore[arg-type]
        rows=rows,
        cols=cols,
        pixel_spacing=spacing,  # type: ignore[arg-type]
        rescale_slope=1.0 if slope is None else slope,
        rescale_intercept=0.0 if intercept is None else intercept,
        transfer_syntax_uid=transfer_syntax_uid,
    )


def _number_of_frames(ds: Dataset, path: Path) -> int:
    value = ds.get("NumberOfFrames")
    if value in (None, ""):
        return 1
    try:
        n_frames = int(value)
    except (TypeError, ValueError) as exc:
        raise DicomReadError(f"{path}: NumberOfFrames {value!r} is not an integer: {_FIX_DAMAGED}") from exc
    if n_frames < 1:
        raise DicomReadError(f"{path}: NumberOfFrames is {n_frames}: the file holds no image: {_FIX_DAMAGED}")
    return n_frames


def _transfer_syntax(ds: Dataset) -> UID:
    file_meta = getattr(ds, "file_meta", None)
    transfer_syntax = file_meta.get("TransferSyntaxUID") if file_meta is not None else None
    if transfer_syntax is not None:
        return UID(str(transfer_syntax))
    implicit_vr, little_endian = ds.original_encoding  # no file meta: the encoding pydicom found
    if implicit_vr:
        return ImplicitVRLittleEndian
    return ExplicitVRLittleEndian if little_endian else ExplicitVRBigEndian


def _read_pixel_element_header(fp, ds: Dataset, path: Path) -> tuple[int, int, int]:
    """Read the header of the pixel data element at ``fp`` (where ``stop_before_pixels`` left the file).

    Returns ``(tag, value length, bytes of value present in the file)``; the length is ``0xFFFFFFFF`` for
    encapsulated (compressed) data. Reads 12 bytes at most: no pixel data.
    """
    implicit_vr, little_endian = ds.original_encoding
    endian = "<" if little_endian else ">"
    header_end = fp.tell()
    file_size = os.fstat(fp.fileno()).st_size
    head = fp.read(8)
    tag = None
    if len(head) == 8:
        group, element = struct.unpack(endian + "HH", head[:4])
        tag = group << 16 | element
    if tag not in _PIXEL_DATA_TAGS:
        raise DicomReadError(
            f"{path} has no Pixel Data (7FE0,0010){_sop_class_text(ds)}: its header ends at byte {header_end} "
            f"of {file_size} without an image (the file is truncated, or it is not an image): {_FIX_DAMAGED}"
        )
    if implicit_vr:
        length_bytes = head[4:8]
    elif head[4:6] in _LONG_LENGTH_VRS:
        length_bytes = fp.read(4)
    else:
        length_bytes = head[6:8]
    if len(length_bytes) not in (2, 4):
        raise DicomReadError(f"{path} ends inside its Pixel Data element: it is truncated: {_FIX_DAMAGED}")
    (length,) = struct.unpack(endian + ("L" if len(length_bytes) == 4 else "H"), length_bytes)
    return tag, length, file_size - fp.tell()


def _check_pixel_data_length(path: Path, ds: Dataset, pixel_element: tuple[int, int, int], n_pixels: int) -> None:
    """Native (uncompressed) pixel data: the declared and the present length must hold Rows x Columns x frames."""
    tag, length, present = pixel_element
    if length == _UNDEFINED_LENGTH or tag != 0x7FE00010:
        return  # encapsulated data: its frames are only checked when decoded
    bits_allocated = int(ds.BitsAllocated)
    expected = (n_pixels + 7) // 8 if bits_allocated == 1 else n_pixels * bits_allocated // 8
    if length < expected:
        raise DicomReadError(
            f"{path}: Pixel Data holds {length} bytes but Rows x Columns x frames x BitsAllocated "
            f"({ds.Rows} x {ds.Columns} x {n_pixels // (int(ds.Rows) * int(ds.Columns))} x {bits_allocated}) need "
            f"{expected}: the pixel data does not match the image size tags: {_FIX_DAMAGED}"
        )
    if present < expected:
        raise DicomReadError(
            f"{path} is truncated: it holds {present} of the {expected} bytes of pixel data its header "
            f"announces: {_FIX_DAMAGED}"
        )


def _one_line(exc: BaseException) -> str:
    """An exception's message on one line (pydicom's plugin errors span several)."""
    return " ".join(str(exc).split())


def _tag_text(keyword: str) -> str:
    tag = tag_for_keyword(keyword)
    return f"({tag >> 16:04X},{tag & 0xFFFF:04X})" if tag is not None else ""


def _sop_class_text(ds: Dataset) -> str:
    sop_class = ds.get("SOPClassUID")
    if not sop_class:
        return ""
    return f" (SOP class {UID(str(sop_class)).name})"


# --- folders and ids ---------------------------------------------------------------------------------------------

def _id_from_folder(given: int | None, folder: Path, name: str, series_dir: Path) -> int:
    if given is not None:
        return int(given)
    try:
        return int(folder.name)
    except ValueError:
        raise ValueError(
            f"cannot take {name} from folder name {folder.name!r} of {series_dir}: it is not an integer; "
            f"lay the data out as <study_id>/<series_id>/ or pass {name}=..."
        ) from None


def _list_series_folder(series_dir: Path) -> tuple[list[Path], list[str]]:
    """``(sorted *.dcm files, names of the other entries)``; the suffix test ignores case."""
    dicom_paths, other_names = [], []
    with os.scandir(series_dir) as entries:
        for entry in entries:
            if entry.name.lower().endswith(".dcm") and entry.is_file():
                dicom_paths.append(Path(entry.path))
            else:
                other_names.append(entry.name)
    return sorted(dicom_paths), sorted(other_names)


# --- stacks --------------------------------------------------------------------------------------------------------

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


def _split_into_stacks(
    file_headers: list[_FileHeader], orientation_tolerance_deg: float, gap_factor: float
) -> list[list[SliceHeader]]:
    """Slices -> stacks, each ordered along its normal; stacks ordered by smallest instance number."""
    min_cosine = float(np.cos(np.deg2rad(orientation_tolerance_deg)))
    uid_of = {s: fh.series_instance_uid for fh in file_headers for s in fh.slices}
    all_slices = sorted(uid_of, key=_slice_sort_key)

    # 1. planes: same series UID, size, spacing and orientation (greedy, against each group's first slice)
    groups: list[list[SliceHeader]] = []
    for header in all_slices:
        for group in groups:
            if uid_of[group[0]] == uid_of[header] and _same_plane(group[0], header, min_cosine):
                group.append(header)
                break
        else:
            groups.append([header])
    if len({uid_of[g[0]] for g in groups}) > 1:
        logger.warning(
            "%s holds several SeriesInstanceUIDs: their slices go to separate stacks", all_slices[0].path.parent
        )

    stacks: list[list[SliceHeader]] = []
    for group in groups:
        for repeat in _split_duplicates(group):
            stacks.extend(_split_gaps(repeat, gap_factor))
    stacks.sort(key=lambda stack: min(_slice_sort_key(s) for s in stack))
    return stacks


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


# --- decoding ------------------------------------------------------------------------------------------------------

def _decode_frames(
    path: Path, frame_indices: list[int], expected_shape: tuple[int, int], header: SliceHeader
) -> list[np.ndarray]:
    """Decode the given frames of one file: a list of ``(rows, cols)`` arrays of stored values."""
    try:
        if header.transfer_syntax_uid in _MARKER_TERMINATED_SYNTAXES:
            _check_frames_complete(path, frame_indices)
        frames = list(iter_pixels(path, indices=frame_indices))
    except (FileNotFoundError, PermissionError, IsADirectoryError) as exc:
        raise DicomReadError(
            f"{path} cannot be opened ({_one_line(exc)}): it was moved or deleted after the header scan: scan the "
            "series folder again"
        ) from exc
    except (NotImplementedError, RuntimeError) as exc:
        if not _decoder_available(header.transfer_syntax_uid):
            raise DicomReadError(
                f"{path}: no installed pixel data handler decodes its transfer syntax "
                f"{UID(header.transfer_syntax_uid).name} ({_one_line(exc)}): install pylibjpeg, pylibjpeg-libjpeg, "
                "pylibjpeg-openjpeg and pylibjpeg-rle (see setup.cfg)"
            ) from exc
        raise _pixel_decode_error(path, header, exc) from exc
    except DicomReadError:
        raise
    except (*_DAMAGED_HEADER_ERRORS, AttributeError, InvalidDicomError) as exc:
        raise _pixel_decode_error(path, header, exc) from exc
    for frame_index, frame in zip(frame_indices, frames, strict=True):
        if frame.shape != expected_shape:
            raise DicomReadError(
                f"{path}: frame {frame_index} decodes to shape {frame.shape} but the stack expects "
                f"(rows, cols) = {expected_shape}: the file changed after the header scan (scan the series "
                f"folder again) or its Rows/Columns do not match its pixel data ({_FIX_DAMAGED})"
            )
    return frames


def _check_frames_complete(path: Path, frame_indices: list[int]) -> None:
    """JPEG, JPEG-LS and JPEG 2000 frames must end with their end marker (FFD9, EOI / EOC).

    Some decoders turn a cut codestream into an image without an error (pylibjpeg-libjpeg with JPEG-LS), so a
    truncated file would load as garbage. Reads the wanted frames' encoded bytes, no decoding.
    """
    with path.open("rb") as fp:
        ds = pydicom.dcmread(fp, stop_before_pixels=True)
        _read_pixel_element_header(fp, ds, path)
        extended_offsets = None
        if "ExtendedOffsetTable" in ds and "ExtendedOffsetTableLengths" in ds:
            extended_offsets = (ds.ExtendedOffsetTable, ds.ExtendedOffsetTableLengths)
        for frame_index in frame_indices:
            encoded = get_frame(
                fp,
                frame_index,
                number_of_frames=_number_of_frames(ds, path),
                extended_offsets=extended_offsets,
                endianness="<" if ds.original_encoding[1] else ">",
            )
            # an odd-length codestream is padded with one 0x00 (or 0xFF, a JPEG fill byte) after the marker
            if not encoded.rstrip(b"\x00\xff").endswith(_END_OF_CODESTREAM):
                raise DicomReadError(
                    f"{path}: frame {frame_index} of its {_transfer_syntax(ds).name} pixel data does not end "
                    f"with the end-of-image marker (FFD9): the file is truncated or damaged: {_FIX_DAMAGED}"
                )


def _pixel_decode_error(path: Path, header: SliceHeader, exc: Exception) -> DicomReadError:
    return DicomReadError(
        f"{path}: its pixel data ({UID(header.transfer_syntax_uid).name}) cannot be decoded "
        f"({type(exc).__name__}: {_one_line(exc)}); the file is truncated or damaged, or its "
        f"Rows/Columns/BitsAllocated do not match its pixel data: {_FIX_DAMAGED}"
    )


def _decoder_available(transfer_syntax_uid: str) -> bool:
    try:
        return get_decoder(UID(transfer_syntax_uid)).is_available
    except NotImplementedError:
        return False
