"""Write DICOM MR images: single-frame MR Image Storage files, explicit VR little endian, uint16 pixels.

Used by the synthetic study generator (:mod:`radiospine.synth`) and by the volume importer
(:func:`write_volume_series`: a stack read from an image file -> one DICOM series); like the readers it lives in
:mod:`radiospine.io`, the only package that imports pydicom. Geometry tags follow :mod:`radiospine.geometry`:
ImagePositionPatient is the LPS mm of the centre of pixel (row 0, column 0), ImageOrientationPatient the row
direction (along which the column index grows) then the column direction, PixelSpacing ``[row spacing, column
spacing]``. Nothing in a written file depends on the time it was written: the same header and pixels give the
same bytes.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filewriter import dcmwrite
from pydicom.uid import ExplicitVRLittleEndian, MRImageStorage, generate_uid
from pydicom.valuerep import format_number_as_ds


@dataclass(frozen=True)
class MrImageHeader:
    """The header of one MR image file.

    Attributes:
        patient_id, study_id: PatientID and StudyID (StudyID at most 16 characters).
        study_instance_uid, series_instance_uid, sop_instance_uid, frame_of_reference_uid: DICOM UIDs
            (:func:`derived_uid` makes reproducible ones).
        study_date: ``YYYYMMDD``.
        series_number, series_description, instance_number: the series and the image's place in it.
        image_position: ImagePositionPatient, LPS mm of the centre of pixel (row 0, column 0).
        image_orientation: ImageOrientationPatient, 6 direction cosines (row direction, column direction).
        pixel_spacing: PixelSpacing ``(row spacing, column spacing)`` mm.
        slice_thickness, spacing_between_slices: mm.
        repetition_time, echo_time, inversion_time: ms (``inversion_time`` None for non-IR sequences).
        rescale_slope, rescale_intercept: stored value -> output value.
        bits_stored: significant bits of the stored uint16 values (12 or 16).
        magnetic_field_strength: tesla.
        patient_name: PatientName; ``None`` writes ``Synthetic^<patient_id>`` (the synthetic data set's).
    """

    patient_id: str
    study_id: str
    study_instance_uid: str
    series_instance_uid: str
    sop_instance_uid: str
    frame_of_reference_uid: str
    study_date: str
    series_number: int
    series_description: str
    instance_number: int
    image_position: Sequence[float]
    image_orientation: Sequence[float]
    pixel_spacing: tuple[float, float]
    slice_thickness: float
    spacing_between_slices: float
    repetition_time: float
    echo_time: float
    inversion_time: float | None = None
    rescale_slope: float = 1.0
    rescale_intercept: float = 0.0
    bits_stored: int = 12
    magnetic_field_strength: float = 1.5
    patient_name: str | None = None


def derived_uid(*parts: object) -> str:
    """A UID derived from ``parts`` (the same parts give the same UID; different parts, different UIDs)."""
    return generate_uid(entropy_srcs=[str(part) for part in parts])


def _ds(values: Sequence[float] | float) -> list[str] | str:
    """Decimal String value(s), at most 16 characters each."""
    if isinstance(values, (int, float, np.floating, np.integer)):
        return format_number_as_ds(float(values))
    return [format_number_as_ds(float(v)) for v in values]


def write_mr_image(path: str | Path, pixels: np.ndarray, header: MrImageHeader) -> Path:
    """Write one MR image file.

    Args:
        path: the ``.dcm`` file to write (its folder must exist).
        pixels: ``(rows, cols)`` uint16 stored values (``< 2**bits_stored``).
        header: see :class:`MrImageHeader`.

    Raises:
        ValueError: pixels that are not a 2-D uint16 array or exceed ``bits_stored``, or a malformed header
            (orientation not 6 values, position not 3, StudyID over 16 characters).
    """
    pixels = np.asarray(pixels)
    if pixels.ndim != 2 or pixels.dtype != np.uint16:
        raise ValueError(f"{path}: pixels must be a (rows, cols) uint16 array, got {pixels.dtype} {pixels.shape}")
    if pixels.size and int(pixels.max()) >= 2 ** header.bits_stored:
        raise ValueError(f"{path}: a stored value {int(pixels.max())} does not fit in {header.bits_stored} bits")
    if len(header.image_orientation) != 6 or len(header.image_position) != 3:
        raise ValueError(f"{path}: ImageOrientationPatient needs 6 values and ImagePositionPatient 3")
    if len(header.study_id) > 16:
        raise ValueError(f"{path}: StudyID {header.study_id!r} is longer than 16 characters")

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = MRImageStorage
    meta.MediaStorageSOPInstanceUID = header.sop_instance_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian

    ds = Dataset()
    ds.file_meta = meta
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.ImageType = ["ORIGINAL", "PRIMARY", "M", "ND"]
    ds.SOPClassUID = MRImageStorage
    ds.SOPInstanceUID = header.sop_instance_uid
    ds.StudyDate = header.study_date
    ds.SeriesDate = header.study_date
    ds.Modality = "MR"
    ds.SeriesDescription = header.series_description
    ds.PatientName = f"Synthetic^{header.patient_id}" if header.patient_name is None else header.patient_name
    ds.PatientID = header.patient_id
    ds.BodyPartExamined = "LSPINE"
    inversion = header.inversion_time is not None
    ds.ScanningSequence = ["SE", "IR"] if inversion else "SE"
    ds.SequenceVariant = "SK"
    ds.SliceThickness = _ds(header.slice_thickness)
    ds.RepetitionTime = _ds(header.repetition_time)
    ds.EchoTime = _ds(header.echo_time)
    if inversion:
        ds.InversionTime = _ds(header.inversion_time)
    ds.MagneticFieldStrength = _ds(header.magnetic_field_strength)
    ds.SpacingBetweenSlices = _ds(header.spacing_between_slices)
    ds.PatientPosition = "HFS"
    ds.StudyInstanceUID = header.study_instance_uid
    ds.SeriesInstanceUID = header.series_instance_uid
    ds.StudyID = header.study_id
    ds.SeriesNumber = int(header.series_number)
    ds.InstanceNumber = int(header.instance_number)
    ds.ImagePositionPatient = _ds(header.image_position)
    ds.ImageOrientationPatient = _ds(header.image_orientation)
    ds.FrameOfReferenceUID = header.frame_of_reference_uid
    normal = np.cross(np.asarray(header.image_orientation[:3], float), np.asarray(header.image_orientation[3:], float))
    ds.SliceLocation = _ds(float(np.dot(np.asarray(header.image_position, float), normal)))
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows, ds.Columns = (int(n) for n in pixels.shape)
    ds.PixelSpacing = _ds(header.pixel_spacing)
    ds.BitsAllocated = 16
    ds.BitsStored = int(header.bits_stored)
    ds.HighBit = int(header.bits_stored) - 1
    ds.PixelRepresentation = 0
    sample = pixels[::4, ::4]
    low, high = (float(np.percentile(sample, q)) for q in (1.0, 99.5)) if sample.size else (0.0, 1.0)
    ds.WindowCenter = _ds(round((low + high) / 2.0 * header.rescale_slope + header.rescale_intercept, 1))
    ds.WindowWidth = _ds(round(max(high - low, 1.0) * header.rescale_slope, 1))
    ds.RescaleIntercept = _ds(header.rescale_intercept)
    ds.RescaleSlope = _ds(header.rescale_slope)
    ds.PixelData = np.ascontiguousarray(pixels, dtype="<u2").tobytes()

    path = Path(path)
    dcmwrite(path, ds, enforce_file_format=True)
    return path


def stored_values(voxels: np.ndarray) -> tuple[np.ndarray, float, float, int]:
    """Voxels -> ``(uint16 stored values, rescale slope, rescale intercept, bits stored)``.

    Whole numbers in ``[0, 65535]`` are stored as they are (slope 1, intercept 0), so reading the files back gives
    the same voxels; anything else is mapped linearly onto 12 bits (reading back is exact to within half a step).
    """
    voxels = np.asarray(voxels)
    finite = voxels[np.isfinite(voxels)] if np.issubdtype(voxels.dtype, np.floating) else voxels
    if finite.size != voxels.size:
        raise ValueError("voxels hold NaN or infinite values; cannot store them in DICOM")
    low, high = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 0.0)
    whole = not np.issubdtype(voxels.dtype, np.floating) or bool(np.all(np.round(finite) == finite))
    if whole and low >= 0 and high <= 65535:
        bits = 12 if high < 4096 else 16
        return voxels.astype(np.uint16), 1.0, 0.0, bits
    slope = (high - low) / 4095.0 if high > low else 1.0
    stored = np.clip(np.round((voxels.astype(np.float64) - low) / slope), 0, 4095).astype(np.uint16)
    return stored, slope, low, 12


def write_volume_series(folder: str | Path, voxels: np.ndarray, affine: np.ndarray, *, study_id: int,
                        series_id: int, series_number: int, description: str, uid_root: str,
                        study_date: str = "20000101", repetition_time: float = 3000.0, echo_time: float = 100.0,
                        magnetic_field_strength: float = 1.5) -> list[Path]:
    """Write a ``(slice, row, col)`` stack with its ``(col, row, slice)`` -> LPS affine as one DICOM series.

    One file per slice, ``<instance>.dcm`` with instance numbers ``1 .. n`` in slice order; ImagePositionPatient
    of slice ``k`` is the affine's origin plus ``k`` slice steps. ``uid_root`` makes the UIDs reproducible (the
    same root, the same UIDs). Returns the written paths in slice order. The DICOM reader orders slices along the
    image plane normal: a stack given in that order (as :func:`radiospine.io.image_file.read_image_file` returns
    it) reads back with the same voxels and affine; one given the other way round reads back reversed.
    """
    affine = np.asarray(affine, dtype=float)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    stored, slope, intercept, bits = stored_values(voxels)
    col_spacing, row_spacing = (float(np.linalg.norm(affine[:3, n])) for n in (0, 1))
    orientation = np.concatenate([affine[:3, 0] / col_spacing, affine[:3, 1] / row_spacing])
    step = affine[:3, 2]
    normal = np.cross(orientation[:3], orientation[3:])
    spacing_between = float(abs(step @ normal))
    study_uid = derived_uid(uid_root, study_id)
    series_uid = derived_uid(study_uid, series_id)
    frame_uid = derived_uid(study_uid, "frame-of-reference")
    paths = []
    for k in range(stored.shape[0]):
        header = MrImageHeader(
            patient_id=str(study_id), study_id=str(study_id)[:16], study_instance_uid=study_uid,
            series_instance_uid=series_uid, sop_instance_uid=derived_uid(series_uid, k + 1),
            frame_of_reference_uid=frame_uid, study_date=study_date, series_number=int(series_number),
            series_description=description, instance_number=k + 1,
            image_position=(affine[:3, 3] + k * step).tolist(), image_orientation=orientation.tolist(),
            pixel_spacing=(row_spacing, col_spacing), slice_thickness=spacing_between,
            spacing_between_slices=spacing_between, repetition_time=repetition_time, echo_time=echo_time,
            rescale_slope=slope, rescale_intercept=intercept, bits_stored=bits,
            magnetic_field_strength=magnetic_field_strength, patient_name=f"Imported^{study_id}")
        paths.append(write_mr_image(folder / f"{k + 1}.dcm", stored[k], header))
    return paths
