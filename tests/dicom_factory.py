"""Small DICOM test data for radiospine's tests (import it from any test module: ``from dicom_factory import ...``).

* :func:`pydicom_test_file`, :func:`pydicom_data_file`: real MR files shipped inside pydicom and the
  ``pydicom-data`` package, located on disk. Never use ``pydicom.data.get_testdata_file(s)`` for them: for a
  file it does not find locally it tries the network and hangs retrying.
* :func:`make_mr_dataset`: one synthetic single-frame MR image as a pydicom dataset.
* :func:`write_synthetic_stack`: a stack of parallel slices written into a series folder (call it again on the
  same folder to put several stacks in one series); returns the truth as a :class:`SyntheticStack`.
* :func:`write_synthetic_series`: ``root/<study_id>/<series_id>/`` holding one stack.
* :func:`oblique_orientation`: ImageOrientationPatient of a tilted axial or sagittal plane.
* :func:`graft_enhanced_geometry`: copy a real multi-frame file, adding Enhanced MR per-frame geometry.
* :func:`rewrite_frame`: copy a real compressed single-frame file, changing its encoded frame (fault injection);
  :func:`break_as_rle`: re-encode a file as RLE that the header scan takes but pylibjpeg-rle panics on.

Geometry conventions are radiospine's (see ``radiospine/io/volume.py``): LPS mm, PixelSpacing ``[row, col]``.
"""

from __future__ import annotations

import io
import struct
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileDataset, FileMetaDataset
from pydicom.encaps import encapsulate, get_frame
from pydicom.uid import ExplicitVRLittleEndian, MRImageStorage, RLELossless, generate_uid

#: Folder of the test files shipped inside pydicom (MR_small*.dcm, MR_truncated.dcm ...).
PYDICOM_TEST_FILES = Path(pydicom.__file__).parent / "data" / "test_files"

AXIAL = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)
SAGITTAL = (0.0, 1.0, 0.0, 0.0, 0.0, -1.0)


def pydicom_test_file(name: str) -> Path:
    """A file shipped in pydicom's ``data/test_files`` folder (no network)."""
    path = PYDICOM_TEST_FILES / name
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: pydicom {pydicom.__version__} does not ship {name}")
    return path


def pydicom_data_file(name: str) -> Path:
    """A file of the ``pydicom-data`` package (module ``data_store``, folder ``data/``; no network)."""
    try:
        import data_store
    except ImportError as exc:
        raise ImportError("the tests need the pydicom-data package: pip install -e '.[dev]'") from exc
    path = Path(data_store.__file__).parent / "data" / name
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing from the installed pydicom-data package")
    return path


def oblique_orientation(
    tilt_about_lr_deg: float = 0.0, tilt_about_ap_deg: float = 0.0, base: tuple[float, ...] = AXIAL
) -> tuple[float, ...]:
    """ImageOrientationPatient of ``base`` rotated about the L-R axis, then about the A-P axis (LPS)."""
    a, b = np.deg2rad(tilt_about_lr_deg), np.deg2rad(tilt_about_ap_deg)
    about_lr = np.array([[1, 0, 0], [0, np.cos(a), -np.sin(a)], [0, np.sin(a), np.cos(a)]])
    about_ap = np.array([[np.cos(b), 0, np.sin(b)], [0, 1, 0], [-np.sin(b), 0, np.cos(b)]])
    rotation = about_ap @ about_lr
    directions = np.reshape(base, (2, 3)) @ rotation.T
    return tuple(float(v) for v in directions.ravel())


def _ds_values(values, decimals: int) -> list[float]:
    """Round to what fits a DS value (16 characters), so that what is written is exactly the truth."""
    return [float(round(float(v), decimals)) for v in np.ravel(values)]


def make_mr_dataset(
    stored_pixels: np.ndarray,
    *,
    position_lps,
    orientation,
    pixel_spacing: tuple[float, float],
    instance_number: int,
    series_uid: str,
    study_uid: str,
    description: str = "Axial T2",
    slice_thickness: float | None = 4.0,
    spacing_between_slices: float | None = None,
    rescale: tuple[float, float] | None = None,
    omit: tuple[str, ...] = (),
) -> FileDataset:
    """One single-frame MR Image Storage dataset, Explicit VR Little Endian.

    Args:
        stored_pixels: ``(rows, cols)`` int16 stored values.
        position_lps, orientation, pixel_spacing: ImagePositionPatient, ImageOrientationPatient, PixelSpacing
            ``(row spacing, column spacing)``; written as given (round them to DS precision first).
        rescale: ``(slope, intercept)`` written as RescaleSlope / RescaleIntercept, or nothing.
        omit: keywords to delete (to build broken files: ``("PixelSpacing",)``, ``("PixelData",)``).
    """
    stored_pixels = np.ascontiguousarray(stored_pixels, dtype=np.int16)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = MRImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset("", Dataset(), file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID = MRImageStorage
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = series_uid
    ds.Modality = "MR"
    ds.SeriesDescription = description
    ds.InstanceNumber = int(instance_number)
    ds.ImagePositionPatient = list(position_lps)
    ds.ImageOrientationPatient = list(orientation)
    ds.PixelSpacing = list(pixel_spacing)
    if slice_thickness is not None:
        ds.SliceThickness = slice_thickness
    if spacing_between_slices is not None:
        ds.SpacingBetweenSlices = spacing_between_slices
    ds.Rows, ds.Columns = stored_pixels.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = 16
    ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 1
    if rescale is not None:
        ds.RescaleSlope, ds.RescaleIntercept = rescale
    ds.PixelData = stored_pixels.tobytes()
    for keyword in omit:
        delattr(ds, keyword)
    return ds


@dataclass(frozen=True, eq=False)
class SyntheticStack:
    """The truth about a written stack, every per-slice array ordered along the slice normal (ascending).

    Attributes:
        series_dir: the folder the files were written to.
        paths: ``(n,)`` file of each slice.
        instance_numbers: ``(n,)`` int64.
        positions_lps: ``(n, 3)`` ImagePositionPatient as written, LPS mm.
        orientation: ``(6,)`` ImageOrientationPatient as written.
        pixel_spacing: ``(row spacing, column spacing)`` mm as written.
        stored_pixels: ``(n, rows, cols)`` int16 stored values.
        rescale: ``(slope, intercept)`` applied by a reader (``(1, 0)`` when none was written).
    """

    series_dir: Path
    paths: tuple[Path, ...]
    instance_numbers: np.ndarray
    positions_lps: np.ndarray
    orientation: np.ndarray
    pixel_spacing: tuple[float, float]
    stored_pixels: np.ndarray
    rescale: tuple[float, float]

    @property
    def row_direction(self) -> np.ndarray:
        """LPS unit vector along which the column index grows (IOP[0:3])."""
        return self.orientation[:3]

    @property
    def column_direction(self) -> np.ndarray:
        """LPS unit vector along which the row index grows (IOP[3:6])."""
        return self.orientation[3:]

    @property
    def expected_voxels(self) -> np.ndarray:
        """``(n, rows, cols)`` float32 stored values after rescale."""
        slope, intercept = self.rescale
        return (self.stored_pixels.astype(np.float64) * slope + intercept).astype(np.float32)


def write_synthetic_stack(
    series_dir: Path,
    *,
    n_slices: int = 5,
    rows: int = 24,
    cols: int = 40,
    pixel_spacing: tuple[float, float] = (0.5, 0.8),
    orientation: tuple[float, ...] = AXIAL,
    first_position_lps=(-10.0, -20.0, 30.0),
    slice_step_mm: float = 4.0,
    first_instance_number: int = 1000,
    instance_order: Literal["ascending", "descending", "shuffled"] = "shuffled",
    rescale: tuple[float, float] | None = (2.5, -100.0),
    description: str = "Axial T2",
    slice_thickness: float | None = 4.0,
    spacing_between_slices: float | None = None,
    series_uid: str | None = None,
    seed: int = 0,
) -> SyntheticStack:
    """Write ``n_slices`` parallel slices as ``<instance_number>.dcm`` into ``series_dir`` (created if needed).

    Slice ``k`` (along the normal ``IOP[0:3] x IOP[3:6]``) sits at ``first_position_lps + k * slice_step_mm *
    normal``. Instance numbers are ``first_instance_number + 0..n-1`` assigned to slices in ``instance_order``
    (``"descending"``: they run against the normal; ``"shuffled"``: a seeded permutation), so neither file names
    nor instance numbers give the anatomical order. The series UID defaults to one derived from the folder,
    so several calls on one folder write one series with several stacks.
    """
    series_dir = Path(series_dir)
    series_dir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    orientation_written = np.array(_ds_values(orientation, 6))
    normal = np.cross(orientation_written[:3], orientation_written[3:])
    normal /= np.linalg.norm(normal)
    positions = np.array(
        [_ds_values(np.asarray(first_position_lps) + k * slice_step_mm * normal, 4) for k in range(n_slices)]
    )
    offsets = np.arange(n_slices)
    if instance_order == "descending":
        offsets = offsets[::-1]
    elif instance_order == "shuffled":
        offsets = rng.permutation(n_slices)
    instance_numbers = (first_instance_number + offsets).astype(np.int64)
    stored = rng.integers(-300, 3000, size=(n_slices, rows, cols)).astype(np.int16)
    series_uid = series_uid or generate_uid(entropy_srcs=[str(series_dir.resolve())])
    study_uid = generate_uid(entropy_srcs=[str(series_dir.resolve().parent)])
    spacing_written = tuple(_ds_values(pixel_spacing, 6))
    paths = []
    for k in range(n_slices):
        ds = make_mr_dataset(
            stored[k],
            position_lps=positions[k],
            orientation=orientation_written,
            pixel_spacing=spacing_written,
            instance_number=int(instance_numbers[k]),
            series_uid=series_uid,
            study_uid=study_uid,
            description=description,
            slice_thickness=slice_thickness,
            spacing_between_slices=spacing_between_slices,
            rescale=rescale,
        )
        path = series_dir / f"{instance_numbers[k]}.dcm"
        if path.exists():
            raise FileExistsError(f"{path} exists: give this stack a different first_instance_number")
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return SyntheticStack(
        series_dir=series_dir,
        paths=tuple(paths),
        instance_numbers=instance_numbers,
        positions_lps=positions,
        orientation=orientation_written,
        pixel_spacing=spacing_written,  # type: ignore[arg-type]
        stored_pixels=stored,
        rescale=rescale or (1.0, 0.0),
    )


def write_synthetic_series(
    root: Path, *, study_id: int = 101, series_id: int = 202, **stack_options
) -> SyntheticStack:
    """Write one stack into ``root/<study_id>/<series_id>/`` (Kaggle layout).

    ``stack_options`` are those of :func:`write_synthetic_stack`.
    """
    return write_synthetic_stack(Path(root) / str(study_id) / str(series_id), **stack_options)


def graft_enhanced_geometry(
    source: Path,
    destination: Path,
    *,
    positions_lps: np.ndarray,
    orientation: tuple[float, ...],
    pixel_spacing: tuple[float, float],
    slice_thickness: float = 3.0,
    instance_number: int | None = None,
) -> None:
    """Copy a real multi-frame file, adding Enhanced MR functional-group geometry; pixel data bytes unchanged.

    The header gets a SharedFunctionalGroupsSequence (PlaneOrientationSequence, PixelMeasuresSequence) and a
    PerFrameFunctionalGroupsSequence with one PlanePositionSequence per frame (``positions_lps`` is
    ``(n_frames, 3)``, frame order). The source's pixel data element (and anything after it) is copied byte
    for byte, so its transfer syntax (compressed, big endian ...) and any damage in it are kept.
    """
    with Path(source).open("rb") as fp:
        ds = pydicom.dcmread(fp, stop_before_pixels=True)
        pixel_offset = fp.tell()
    pixel_bytes = Path(source).read_bytes()[pixel_offset:]
    positions_lps = np.asarray(positions_lps, dtype=float)
    if len(positions_lps) != int(ds.NumberOfFrames):
        raise ValueError(f"{source} has {ds.NumberOfFrames} frames, got {len(positions_lps)} positions")

    plane_orientation = Dataset()
    plane_orientation.ImageOrientationPatient = _ds_values(orientation, 6)
    pixel_measures = Dataset()
    pixel_measures.PixelSpacing = _ds_values(pixel_spacing, 6)
    pixel_measures.SliceThickness = slice_thickness
    shared = Dataset()
    shared.PlaneOrientationSequence = [plane_orientation]
    shared.PixelMeasuresSequence = [pixel_measures]
    per_frame = []
    for position in positions_lps:
        plane_position = Dataset()
        plane_position.ImagePositionPatient = _ds_values(position, 4)
        frame_groups = Dataset()
        frame_groups.PlanePositionSequence = [plane_position]
        per_frame.append(frame_groups)
    ds.SharedFunctionalGroupsSequence = [shared]
    ds.PerFrameFunctionalGroupsSequence = per_frame
    if instance_number is not None:
        ds.InstanceNumber = instance_number

    implicit_vr, little_endian = ds.original_encoding
    buffer = io.BytesIO()
    pydicom.dcmwrite(buffer, ds, implicit_vr=implicit_vr, little_endian=little_endian)
    Path(destination).parent.mkdir(parents=True, exist_ok=True)
    Path(destination).write_bytes(buffer.getvalue() + pixel_bytes)


def rewrite_frame(
    source: Path,
    destination: Path,
    transform: Callable[[bytes, Dataset], bytes] | None = None,
    *,
    add_geometry: bool = False,
) -> Path:
    """Copy a real single-frame compressed file, its encoded frame replaced by ``transform(frame, dataset)``.

    The new frame is padded to an even length with one 0x00 and encapsulated again (empty basic offset table).
    ``add_geometry``: give a file without an image plane (pydicom's NM and JPEG-LS test files) an axial one:
    ImagePositionPatient (0, 0, 0), ImageOrientationPatient :data:`AXIAL`, PixelSpacing 1 x 1 mm and
    InstanceNumber 1 where it has none, so that the header scan takes it. Returns ``destination``.
    """
    ds = pydicom.dcmread(source)
    if transform is not None:
        frame = transform(get_frame(ds.PixelData, 0, number_of_frames=1), ds)
        ds.PixelData = encapsulate([frame + b"\0" * (len(frame) % 2)])
        ds["PixelData"].is_undefined_length = True
    if add_geometry:
        ds.ImagePositionPatient = [0.0, 0.0, 0.0]
        ds.ImageOrientationPatient = list(AXIAL)
        ds.PixelSpacing = [1.0, 1.0]
        if ds.get("InstanceNumber") in (None, ""):
            ds.InstanceNumber = 1
    Path(destination).parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(destination)
    return Path(destination)


def rle_first_segment_too_long(frame: bytes, ds: Dataset) -> bytes:
    """An RLE frame (PS3.5 G.5) whose first segment decodes to 8 x 128 bytes more than Rows x Columns (replicate
    runs of 128 zeros); the header stays consistent and the other segments are kept. pylibjpeg-rle panics on it
    (pyo3's ``PanicException``, a ``BaseException``)."""
    count, *offsets = struct.unpack("<16L", frame[:64])
    first = b"\x81\x00" * (int(ds.Rows) * int(ds.Columns) // 128 + 8)
    rest = frame[offsets[1] :] if count > 1 else b""
    shifted = [64 + len(first) + offset - offsets[1] for offset in offsets[1:count]]
    return struct.pack("<16L", count, 64, *shifted, *[0] * (14 - len(shifted))) + first + rest


def break_as_rle(path: Path) -> None:
    """Re-encode the file at ``path`` as RLE Lossless with :func:`rle_first_segment_too_long` applied: its header
    scan passes, decoding it fails."""
    ds = pydicom.dcmread(path)
    ds.compress(RLELossless)
    ds.save_as(path)
    rewrite_frame(path, path, rle_first_segment_too_long)
