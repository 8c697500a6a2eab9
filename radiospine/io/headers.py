"""Read DICOM headers without pixel data: a series folder -> :class:`~radiospine.io.stacks.SeriesStack` s.

What it does: :func:`read_series_headers` reads the header of every ``*.dcm`` file of one series folder *without
its pixel data*, checks at the byte level what loading will need (a Pixel Data element is there, native pixel
data is as long as Rows x Columns x frames and present in the file, the geometry tags are complete) and hands
the slices to :func:`radiospine.io.stacks.split_into_stacks`. A series may hold several stacks (one axial stack
per disc, each tilted differently; a repeated acquisition; two blocks of slices with a gap between them).
What it does not: decode pixels (:mod:`radiospine.io.decode`, which re-reads the pixel element's header from
here) or order slices (:mod:`radiospine.io.stacks`).

Bad files: skipped and recorded, unless ``strict``
--------------------------------------------------
A ``*.dcm`` file that cannot be used (not DICOM, header unreadable, a deflated dataset that does not inflate,
truncated pixel data, no pixel data, a missing geometry tag, a pixel data length that does not match Rows x
Columns ...) is **skipped**: it is logged as a warning and recorded, with the reason, in
``SeriesStack.skipped_files`` of every stack of the series, so a run over thousands of studies goes on with the
good files and the user is told about the bad one. ``strict=True`` raises :class:`DicomReadError` at the first
bad file instead. A folder with no usable file at all raises :class:`DicomReadError` listing the reasons. Files
not named ``*.dcm`` are ignored.

The header scan reads no pixel data, so it cannot see everything (damaged compressed data, a file changed
after the scan): :func:`radiospine.io.decode.load_volume` raises :class:`DicomReadError` naming the file when
its pixels cannot be decoded.
"""

from __future__ import annotations

import logging
import os
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
from pydicom.datadict import tag_for_keyword
from pydicom.dataset import Dataset
from pydicom.errors import BytesLengthException, InvalidDicomError
from pydicom.multival import MultiValue
from pydicom.uid import (
    UID,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
)

from radiospine.errors import DicomReadError, MissingInputError
from radiospine.io.stacks import SeriesStack, SkippedFile, SliceHeader, split_into_stacks

logger = logging.getLogger(__name__)

#: What to tell the user to do about a file that is damaged.
FIX_DAMAGED = (
    "re-export or re-download it, or delete it so that the series loads from its other files"
)

#: (7FE0,0010) Pixel Data, (7FE0,0008) Float Pixel Data, (7FE0,0009) Double Float Pixel Data.
_PIXEL_DATA_TAGS = frozenset({0x7FE00010, 0x7FE00008, 0x7FE00009})
_UNDEFINED_LENGTH = 0xFFFFFFFF
#: Explicit-VR value representations whose element header has a 4-byte length after 2 reserved bytes.
_LONG_LENGTH_VRS = {b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV"}
#: What pydicom raises on a damaged header, while reading it or when a value is first converted.
DAMAGED_HEADER_ERRORS = (
    OSError, EOFError, ValueError, TypeError, KeyError, IndexError, OverflowError, NotImplementedError,
    struct.error, BytesLengthException,
)
#: Image Pixel module attributes the decoders need.
_REQUIRED_PIXEL_KEYWORDS = (
    "Rows", "Columns", "BitsAllocated", "BitsStored", "PixelRepresentation", "SamplesPerPixel",
    "PhotometricInterpretation",
)


@dataclass(frozen=True)
class _FileHeader:
    """What one file contributes: its slices and the series-level tags read from it."""

    slices: tuple[SliceHeader, ...]
    series_instance_uid: str
    description: str
    slice_thickness: float | None
    spacing_between_slices: float | None
    repetition_time_ms: float | None


# --- reading a series folder ------------------------------------------------------------------------------------------

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
        MissingInputError: ``series_dir`` is not a folder (a ``FileNotFoundError``).
        ValueError: the folder names are not integer ids and no ids were given.
        DicomReadError: no ``*.dcm`` file, no usable file, or (``strict``) any unusable file.
    """
    series_dir = Path(series_dir)
    if not series_dir.is_dir():
        raise MissingInputError(f"series folder {series_dir} does not exist or is not a folder")
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

    series_uid_of = {s: fh.series_instance_uid for fh in file_headers for s in fh.slices}
    groups = split_into_stacks(series_uid_of, orientation_tolerance_deg, gap_factor)
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



# --- reading one file's header ----------------------------------------------------------------------------------------

def _read_file_header(path: Path) -> _FileHeader:
    """Parse one file up to (not into) its pixel data; check what loading will need. Raises DicomReadError.

    A damaged header makes pydicom raise many kinds of errors, when reading or when a value is first used
    (unknown VR, odd byte counts, undecodable text, a deflated dataset that does not inflate ...): all of them
    become a DicomReadError naming the file.
    """
    try:
        return _parse_file_header(path)
    except DicomReadError:
        raise
    except InvalidDicomError as exc:
        raise DicomReadError(
            f"{path} is not a DICOM file ({one_line(exc)}): remove it from the series folder or replace it with the "
            "exported DICOM instance"
        ) from exc
    except zlib.error as exc:
        raise DicomReadError(
            f"{path}: its deflated dataset cannot be inflated (zlib: {one_line(exc)}); the file is truncated or "
            f"damaged: {FIX_DAMAGED}"
        ) from exc
    except DAMAGED_HEADER_ERRORS as exc:
        raise DicomReadError(
            f"{path}: the DICOM header cannot be parsed ({type(exc).__name__}: {one_line(exc)}); the file is damaged: "
            f"{FIX_DAMAGED}"
        ) from exc


def _parse_file_header(path: Path) -> _FileHeader:
    with path.open("rb") as fp:
        ds = pydicom.dcmread(fp, stop_before_pixels=True)
        transfer_syntax = transfer_syntax_of(ds)
        if transfer_syntax == DeflatedExplicitVRLittleEndian:
            pixel_element = None  # the dataset was inflated in memory: fp does not point at the pixels
        else:
            pixel_element = read_pixel_element_header(fp, ds, path)

    for keyword in _REQUIRED_PIXEL_KEYWORDS:
        if ds.get(keyword) in (None, ""):
            raise DicomReadError(
                f"{path} has no {keyword} {_tag_text(keyword)}{_sop_class_text(ds)}: it is not a complete image "
                f"(a truncated header or a non-image object): {FIX_DAMAGED}"
            )
    rows, cols = int(ds.Rows), int(ds.Columns)
    n_frames = number_of_frames(ds, path)
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
            raise DicomReadError(f"{self.path}: {keyword} {value!r} is not a number: {FIX_DAMAGED}") from exc
        if not np.isfinite(number):
            raise DicomReadError(f"{self.path}: {keyword} is {number}: {FIX_DAMAGED}")
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
                f"patient space: {FIX_DAMAGED}"
            )
        values = list(value) if isinstance(value, (list, tuple, MultiValue)) else [value]
        try:
            floats = tuple(float(v) for v in values)
        except (TypeError, ValueError) as exc:
            raise DicomReadError(f"{self.path}: {keyword} {values} is not numeric: {FIX_DAMAGED}") from exc
        if len(floats) != count or not np.all(np.isfinite(floats)):
            raise DicomReadError(
                f"{self.path}: {keyword} {_tag_text(keyword)} must hold {count} finite numbers, got {values}: "
                f"{FIX_DAMAGED}"
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
        raise DicomReadError(f"{path}: PixelSpacing {list(spacing)} must be positive: {FIX_DAMAGED}")
    row_direction, column_direction = np.reshape(orientation, (2, 3))
    if (
        not np.isclose(np.linalg.norm(row_direction), 1, atol=1e-2)
        or not np.isclose(np.linalg.norm(column_direction), 1, atol=1e-2)
        or abs(np.dot(row_direction, column_direction)) > 1e-2
    ):
        raise DicomReadError(
            f"{path}: ImageOrientationPatient {list(orientation)} is not two perpendicular unit vectors: "
            f"{FIX_DAMAGED}"
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


def number_of_frames(ds: Dataset, path: Path) -> int:
    value = ds.get("NumberOfFrames")
    if value in (None, ""):
        return 1
    try:
        n_frames = int(value)
    except (TypeError, ValueError) as exc:
        raise DicomReadError(f"{path}: NumberOfFrames {value!r} is not an integer: {FIX_DAMAGED}") from exc
    if n_frames < 1:
        raise DicomReadError(f"{path}: NumberOfFrames is {n_frames}: the file holds no image: {FIX_DAMAGED}")
    return n_frames


def transfer_syntax_of(ds: Dataset) -> UID:
    file_meta = getattr(ds, "file_meta", None)
    transfer_syntax = file_meta.get("TransferSyntaxUID") if file_meta is not None else None
    if transfer_syntax is not None:
        return UID(str(transfer_syntax))
    implicit_vr, little_endian = ds.original_encoding  # no file meta: the encoding pydicom found
    if implicit_vr:
        return ImplicitVRLittleEndian
    return ExplicitVRLittleEndian if little_endian else ExplicitVRBigEndian


def read_pixel_element_header(fp, ds: Dataset, path: Path) -> tuple[int, int, int]:
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
            f"of {file_size} without an image (the file is truncated, or it is not an image): {FIX_DAMAGED}"
        )
    if implicit_vr:
        length_bytes = head[4:8]
    elif head[4:6] in _LONG_LENGTH_VRS:
        length_bytes = fp.read(4)
    else:
        length_bytes = head[6:8]
    if len(length_bytes) not in (2, 4):
        raise DicomReadError(f"{path} ends inside its Pixel Data element: it is truncated: {FIX_DAMAGED}")
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
            f"{expected}: the pixel data does not match the image size tags: {FIX_DAMAGED}"
        )
    if present < expected:
        raise DicomReadError(
            f"{path} is truncated: it holds {present} of the {expected} bytes of pixel data its header "
            f"announces: {FIX_DAMAGED}"
        )


def one_line(exc: BaseException) -> str:
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


# --- folders and ids --------------------------------------------------------------------------------------------------

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
