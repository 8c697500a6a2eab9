"""Read the headers of every file of a PACS or CD export: which files are MR images of which study and series.

An export is any folder tree: with or without a ``DICOMDIR`` (read with pydicom's :class:`~pydicom.fileset.FileSet`),
folders named by UIDs or ``ST000001/SE000002``, files with or without extensions, reports and other files beside
the images. :func:`scan_export` reads the header (no pixel data) of every file under the folder and sorts it into

* an :class:`ExportImage` (an MR image: its study and series UIDs and the tags that type a series), or
* a :class:`SkippedEntry` with the reason: not DICOM, the ``DICOMDIR`` itself, an object without pixels (a
  structured report, a presentation state, a key object), another modality, a header that cannot be parsed; and a
  ``DICOMDIR`` record whose file is missing.

Files whose header reads but whose pixel data is damaged or truncated are found later, when the series is read
(:func:`radiospine.io.headers.read_series_headers` skips and records them). Nothing here looks at patient
names or ids beyond carrying them: callers must not put them in file names.
"""

from __future__ import annotations

import logging
import os
import warnings
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import pydicom
from pydicom.errors import InvalidDicomError
from pydicom.fileset import FileSet
from pydicom.uid import UID

from radiospine.errors import MissingInputError
from radiospine.io.headers import DAMAGED_HEADER_ERRORS, one_line

logger = logging.getLogger(__name__)

#: The name of the media directory file (DICOM PS3.10), matched without regard to case.
DICOMDIR_NAME = "DICOMDIR"
#: Modalities of objects that are not images whatever their SOP class says.
NON_IMAGE_MODALITIES = frozenset({"SR", "PR", "KO", "DOC", "REG", "SEG", "RTSTRUCT"})
#: Tags read from each file (the rest of the header is not parsed).
_TAGS = ("SOPClassUID", "Modality", "StudyInstanceUID", "SeriesInstanceUID", "SeriesNumber", "SeriesDescription",
         "StudyDate", "StudyDescription", "ImageType", "Rows", "Columns", "InstanceNumber", "RepetitionTime",
         "EchoTime", "InversionTime", "ScanningSequence", "SequenceName", "DiffusionBValue", "MRAcquisitionType",
         "NumberOfFrames")


@dataclass(frozen=True)
class ExportImage:
    """One MR image file of an export and the tags its series is typed from (strings as in the header)."""

    path: Path
    study_uid: str
    series_uid: str
    series_number: int | None
    series_description: str
    study_date: str
    study_description: str
    image_type: tuple[str, ...]
    repetition_time_ms: float | None
    echo_time_ms: float | None
    inversion_time_ms: float | None
    scanning_sequence: str
    sequence_name: str
    diffusion_b_value: float | None


@dataclass(frozen=True)
class SkippedEntry:
    """A file (or DICOMDIR record) of an export that is not used, and why."""

    path: Path
    kind: str
    reason: str


@dataclass
class ExportScan:
    """What :func:`scan_export` found: ``images`` (sorted by path), ``skipped``, and the ``DICOMDIR`` if any
    (``dicomdir_files``: how many instances it lists)."""

    root: Path
    images: list[ExportImage] = field(default_factory=list)
    skipped: list[SkippedEntry] = field(default_factory=list)
    dicomdir: Path | None = None
    dicomdir_files: int = 0


def scan_export(root: str | Path) -> ExportScan:
    """Read the header of every file under ``root`` (see the module docstring).

    Every file is read, whether or not a ``DICOMDIR`` lists it: a DICOMDIR that misses files (or a second one in a
    sub-folder) loses nothing. Records of the DICOMDIR whose file is not there are listed as skipped.

    Raises:
        MissingInputError: ``root`` is not a folder.
    """
    root = Path(root)
    if not root.is_dir():
        raise MissingInputError(f"export folder {root} does not exist or is not a folder; point to the folder "
                                f"holding the exported DICOM files (and DICOMDIR, if any)")
    files = sorted(Path(folder) / name for folder, _, names in os.walk(root) for name in names)
    scan = ExportScan(root=root)
    for path in files:
        if path.name.upper() == DICOMDIR_NAME:
            _read_dicomdir(path, scan)
            continue
        image, skipped = _read_file(path)
        if image is not None:
            scan.images.append(image)
        else:
            scan.skipped.append(skipped)
    return scan


def _read_dicomdir(path: Path, scan: ExportScan) -> None:
    """Record the DICOMDIR and its records whose files are missing (every file is read anyway).

    pydicom's FileSet leaves out (with a warning) the records whose file is missing, so these are found from the
    directory records' ReferencedFileID.
    """
    try:
        ds = pydicom.dcmread(path)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # a missing file: recorded below
            present = {Path(instance.path).resolve() for instance in FileSet(ds)}
        listed = [path.parent.joinpath(*_values(record.ReferencedFileID))
                  for record in ds.get("DirectoryRecordSequence", []) if record.get("ReferencedFileID")]
    except (InvalidDicomError, zlib.error, *DAMAGED_HEADER_ERRORS) as exc:  # record it, read the files anyway
        scan.skipped.append(SkippedEntry(path, "dicomdir_unreadable",
                                         f"the DICOMDIR cannot be read ({type(exc).__name__}: {one_line(exc)}); "
                                         f"the folder's files are read without it"))
        return
    missing = [file for file in listed if file.resolve() not in present]
    scan.skipped += [SkippedEntry(file, "listed_but_missing", f"listed in {path.name} but not on disk")
                     for file in missing]
    if scan.dicomdir is None:
        scan.dicomdir, scan.dicomdir_files = path, len(listed)
    scan.skipped.append(SkippedEntry(path, "dicomdir", f"the media directory (lists {len(listed)} instance(s), "
                                                       f"{len(missing)} missing); not an image"))


def _read_file(path: Path) -> tuple[ExportImage | None, SkippedEntry | None]:
    try:
        ds = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=list(_TAGS))
        modality = str(ds.get("Modality", "") or "").upper()
        sop_class = ds.get("SOPClassUID")
        sop_name = UID(str(sop_class)).name if sop_class else "no SOP class"
        if modality in NON_IMAGE_MODALITIES or ds.get("Rows") in (None, "") or ds.get("Columns") in (None, ""):
            return None, SkippedEntry(path, "not_an_image",
                                      f"a DICOM object without an image ({sop_name}, modality {modality or '?'})")
        if modality != "MR":
            return None, SkippedEntry(path, "not_mr", f"an image of modality {modality or '?'} ({sop_name}), "
                                                      f"not MR")
        study_uid, series_uid = str(ds.get("StudyInstanceUID", "") or ""), str(ds.get("SeriesInstanceUID", "") or "")
        if not study_uid or not series_uid:
            return None, SkippedEntry(path, "no_uid", "an MR image without StudyInstanceUID or SeriesInstanceUID: "
                                                      "it cannot be put in a study and series")
        return ExportImage(
            path=path, study_uid=study_uid, series_uid=series_uid,
            series_number=_integer(ds.get("SeriesNumber")),
            series_description=str(ds.get("SeriesDescription", "") or "").strip(),
            study_date=str(ds.get("StudyDate", "") or ""),
            study_description=str(ds.get("StudyDescription", "") or "").strip(),
            image_type=tuple(str(v).upper() for v in _values(ds.get("ImageType"))),
            repetition_time_ms=_number(ds.get("RepetitionTime")),
            echo_time_ms=_number(ds.get("EchoTime")),
            inversion_time_ms=_number(ds.get("InversionTime")),
            scanning_sequence="\\".join(str(v) for v in _values(ds.get("ScanningSequence"))),
            sequence_name=str(ds.get("SequenceName", "") or ""),
            diffusion_b_value=_number(ds.get("DiffusionBValue")),
        ), None
    except InvalidDicomError:
        return None, SkippedEntry(path, "not_dicom", "not a DICOM file (no DICM preamble)")
    except (zlib.error, *DAMAGED_HEADER_ERRORS) as exc:  # a damaged header: record it and go on
        return None, SkippedEntry(path, "unreadable", f"the DICOM header cannot be parsed ({type(exc).__name__}: "
                                                      f"{one_line(exc)})")


def _values(value) -> list:
    if value is None or value == "":
        return []
    return list(value) if isinstance(value, (list, tuple, pydicom.multival.MultiValue)) else [value]


def _number(value) -> float | None:
    try:
        return None if value in (None, "") else float(value)
    except (TypeError, ValueError):
        return None


def _integer(value) -> int | None:
    number = _number(value)
    return None if number is None else int(number)
