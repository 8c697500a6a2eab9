"""Decode pixel data: a header-only :class:`~radiospine.io.stacks.SeriesStack` -> :class:`~radiospine.io.volume.Volume`.

What it does: :func:`load_volume` decodes the frames of a contiguous range of one stack's slices (so a feature
stage that scanned every series decodes only the few slices it needs) and applies the rescale;
:func:`read_volume` reads a one-stack series folder whole. What it does not: scan folders or split stacks
(:mod:`radiospine.io.headers`, :mod:`radiospine.io.stacks`).

No decoder ends a run: whatever a decoder raises while decoding a file, a ``BaseException`` from a native
extension included (pylibjpeg-rle panics, pyo3's ``PanicException``, on an RLE segment that decodes past its
end), becomes a :class:`~radiospine.errors.DicomReadError` naming the file and the reason, which the callers
record before going on; only ``KeyboardInterrupt``, ``SystemExit`` and ``GeneratorExit`` pass through. Before
decoding, the encoded frames are checked where decoders let damage through silently: JPEG, JPEG-LS and JPEG 2000
frames must end with their end marker, RLE headers must announce the segments the image needs inside the frame.
JPEG-LS is decoded by CharLS (pyjpegls) alone when it is installed: pylibjpeg-libjpeg, pydicom's other JPEG-LS
plugin, turns a damaged JPEG-LS stream into an image without an error, and pydicom would fall back to it when
CharLS refuses the stream. When no installed plugin decodes a file's transfer syntax, the error names the
packages to install.

Geometry follows :mod:`radiospine.geometry`: voxels ``(slice, row, col)``, affine ``(col, row, slice, 1)`` ->
patient LPS mm.
"""

from __future__ import annotations

import itertools
import struct
from pathlib import Path

import numpy as np
import pydicom
from pydicom.encaps import get_frame
from pydicom.pixels import get_decoder, iter_pixels
from pydicom.uid import (
    UID,
    DeflatedExplicitVRLittleEndian,
    JPEG2000TransferSyntaxes,
    JPEGLSTransferSyntaxes,
    JPEGTransferSyntaxes,
    RLELossless,
)

from radiospine.errors import DicomReadError
from radiospine.geometry import sub_stack_affine
from radiospine.io.headers import (
    FIX_DAMAGED,
    number_of_frames,
    one_line,
    read_pixel_element_header,
    read_series_headers,
    transfer_syntax_of,
)
from radiospine.io.stacks import SeriesStack, SliceHeader
from radiospine.io.volume import Volume

#: Transfer syntaxes whose frames end with the FFD9 marker (JPEG EOI, JPEG 2000 EOC).
_MARKER_TERMINATED_SYNTAXES = frozenset(JPEGTransferSyntaxes + JPEGLSTransferSyntaxes + JPEG2000TransferSyntaxes)
_END_OF_CODESTREAM = b"\xff\xd9"
#: Not a decoder's failure but a request to stop: these pass through the decoder guard.
_STOP_REQUESTS = (KeyboardInterrupt, SystemExit, GeneratorExit)
#: Size of an RLE frame's header: the segment count and 15 segment offsets, 32-bit little endian (PS3.5 G.5).
_RLE_HEADER_BYTES = 64


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


# --- decoding frames --------------------------------------------------------------------------------------------------

def _decode_frames(
    path: Path, frame_indices: list[int], expected_shape: tuple[int, int], header: SliceHeader
) -> list[np.ndarray]:
    """Decode the given frames of one file: a list of ``(rows, cols)`` arrays of stored values.

    Raises :class:`DicomReadError` naming the file for anything the checks or the decoders raise (see the module
    docstring); ``KeyboardInterrupt``, ``SystemExit`` and ``GeneratorExit`` pass through.
    """
    transfer_syntax_uid = header.transfer_syntax_uid
    try:
        if transfer_syntax_uid in _MARKER_TERMINATED_SYNTAXES or transfer_syntax_uid == RLELossless:
            _check_encoded_frames(path, frame_indices, transfer_syntax_uid)
        # iter_pixels parses a file path without inflating a deflated dataset (it finds no Pixel Data): read it whole
        source = pydicom.dcmread(path) if transfer_syntax_uid == DeflatedExplicitVRLittleEndian else path
        frames = list(iter_pixels(source, indices=frame_indices, decoding_plugin=_decoding_plugin(transfer_syntax_uid)))
    except DicomReadError:
        raise
    except (FileNotFoundError, PermissionError, IsADirectoryError) as exc:
        raise DicomReadError(
            f"{path} cannot be opened ({one_line(exc)}): it was moved or deleted after the header scan: scan the "
            "series folder again"
        ) from exc
    except _STOP_REQUESTS:
        raise
    except BaseException as exc:  # a decoder's failure, a native panic included, is this file's failure
        if isinstance(exc, (NotImplementedError, RuntimeError)) and not _decoder_available(transfer_syntax_uid):
            raise DicomReadError(
                f"{path}: no installed pixel data handler decodes its transfer syntax "
                f"{UID(transfer_syntax_uid).name} ({one_line(exc)}): install pyjpegls, pylibjpeg, "
                "pylibjpeg-libjpeg, pylibjpeg-openjpeg and pylibjpeg-rle (see setup.cfg)"
            ) from exc
        raise _pixel_decode_error(path, header, exc) from exc
    for frame_index, frame in zip(frame_indices, frames, strict=True):
        if frame.shape != expected_shape:
            raise DicomReadError(
                f"{path}: frame {frame_index} decodes to shape {frame.shape} but the stack expects "
                f"(rows, cols) = {expected_shape}: the file changed after the header scan (scan the series "
                f"folder again) or its Rows/Columns do not match its pixel data ({FIX_DAMAGED})"
            )
    return frames


def _decoding_plugin(transfer_syntax_uid: str) -> str:
    """``"pyjpegls"`` for JPEG-LS when CharLS is installed, else ``""`` (pydicom tries its plugins in turn)."""
    if transfer_syntax_uid in JPEGLSTransferSyntaxes and "pyjpegls" in _available_plugins(transfer_syntax_uid):
        return "pyjpegls"
    return ""


def _check_encoded_frames(path: Path, frame_indices: list[int], transfer_syntax_uid: str) -> None:
    """Check the wanted frames' encoded bytes where decoders let damage through; reads them, decodes nothing.

    * JPEG, JPEG-LS and JPEG 2000 frames must end with their end marker (FFD9, EOI / EOC): some decoders turn a
      cut codestream into an image without an error (pylibjpeg-libjpeg with JPEG-LS), so a truncated file would
      load as garbage.
    * RLE frames: see :func:`_rle_header_problem` (pylibjpeg-rle decodes a frame whose segment count lies).
    """
    with path.open("rb") as fp:
        ds = pydicom.dcmread(fp, stop_before_pixels=True)
        read_pixel_element_header(fp, ds, path)
        extended_offsets = None
        if "ExtendedOffsetTable" in ds and "ExtendedOffsetTableLengths" in ds:
            extended_offsets = (ds.ExtendedOffsetTable, ds.ExtendedOffsetTableLengths)
        for frame_index in frame_indices:
            encoded = get_frame(
                fp,
                frame_index,
                number_of_frames=number_of_frames(ds, path),
                extended_offsets=extended_offsets,
                endianness="<" if ds.original_encoding[1] else ">",
            )
            if transfer_syntax_uid == RLELossless:
                n_segments = int(ds.SamplesPerPixel) * ((int(ds.BitsAllocated) + 7) // 8)
                problem = _rle_header_problem(encoded, n_segments)
                if problem:
                    raise DicomReadError(
                        f"{path}: frame {frame_index} of its RLE Lossless pixel data has a damaged RLE header "
                        f"({problem}): {FIX_DAMAGED}"
                    )
            # an odd-length codestream is padded with one 0x00 (or 0xFF, a JPEG fill byte) after the marker
            elif not encoded.rstrip(b"\x00\xff").endswith(_END_OF_CODESTREAM):
                raise DicomReadError(
                    f"{path}: frame {frame_index} of its {transfer_syntax_of(ds).name} pixel data does not end "
                    f"with the end-of-image marker (FFD9): the file is truncated or damaged: {FIX_DAMAGED}"
                )


def _rle_header_problem(encoded: bytes, n_segments: int) -> str | None:
    """What is wrong with an RLE frame's header (DICOM PS3.5 G.5), ``None`` when nothing.

    It must announce ``n_segments`` segments (SamplesPerPixel x bytes per sample), the first at byte 64, each
    after the one before and inside the frame's ``len(encoded)`` bytes.
    """
    if len(encoded) < _RLE_HEADER_BYTES:
        return f"the frame holds {len(encoded)} bytes, fewer than the {_RLE_HEADER_BYTES} of its header"
    count, *offsets = struct.unpack("<16L", encoded[:_RLE_HEADER_BYTES])
    if count != n_segments:
        return f"it announces {count} segments where SamplesPerPixel x BitsAllocated / 8 needs {n_segments}"
    used = offsets[:count]
    if used[0] != _RLE_HEADER_BYTES:
        return f"its first segment starts at byte {used[0]}, not {_RLE_HEADER_BYTES}"
    if any(later <= earlier for earlier, later in itertools.pairwise(used)) or used[-1] >= len(encoded):
        return f"its segment offsets {used} do not increase within the frame's {len(encoded)} bytes"
    return None


def _pixel_decode_error(path: Path, header: SliceHeader, exc: BaseException) -> DicomReadError:
    return DicomReadError(
        f"{path}: its pixel data ({UID(header.transfer_syntax_uid).name}) cannot be decoded "
        f"({type(exc).__name__}: {one_line(exc)}); the file is truncated or damaged, or its "
        f"Rows/Columns/BitsAllocated do not match its pixel data: {FIX_DAMAGED}"
    )


def _decoder_available(transfer_syntax_uid: str) -> bool:
    """Whether an installed pydicom plugin (or pydicom itself, for native data) decodes the transfer syntax."""
    try:
        return get_decoder(UID(transfer_syntax_uid)).is_available
    except NotImplementedError:
        return False


def _available_plugins(transfer_syntax_uid: str) -> tuple[str, ...]:
    """Names of the installed pydicom plugins that decode the transfer syntax (none for native data)."""
    try:
        return tuple(get_decoder(UID(transfer_syntax_uid)).available_plugins)
    except NotImplementedError:
        return ()
