"""Write DICOM MR images: single-frame MR Image Storage files, explicit VR little endian, uint16 pixels.

Used by the synthetic study generator (:mod:`radiospine.synth`); like the readers it lives in
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
    ds.PatientName = f"Synthetic^{header.patient_id}"
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
