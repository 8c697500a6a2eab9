"""PACS/CD-like exports built from a synthetic data folder (``radiospine synth``), for ``radiospine grade``'s tests.

:func:`build_export` copies the test studies of a data folder into an export the way a PACS writes one, with the
awkward parts the reader must handle, each optional:

* the series renamed as scanners name them (``T1_TSE_SAG``, ``t2_tse_sag``, ``T2_TSE_TRA``): the Kaggle type names
  are gone, so the reader must type the series from their headers;
* ``layout="uid"``: ``<StudyInstanceUID>/<SeriesInstanceUID>/<SOPInstanceUID>`` without a file extension;
  ``layout="dicomdir"``: pydicom's :class:`~pydicom.fileset.FileSet` layout (``PT000000/ST000000/SE000000/IM000000``)
  with a ``DICOMDIR``;
* a three-slice localiser and a diffusion series added to the first study;
* the axial series of the last study left out;
* a text file, a PDF-like report and a structured report (DICOM without pixels) beside the images;
* one file of the first study's Sagittal T1 series cut short (its pixel data truncated).
"""

from __future__ import annotations

import copy
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pydicom
from pydicom.dataset import FileMetaDataset
from pydicom.fileset import FileSet
from pydicom.uid import BasicTextSRStorage, ExplicitVRLittleEndian, generate_uid

from radiospine import vocab

#: What scanners call the three series types (the export carries these, not the Kaggle names).
SCANNER_NAMES = {vocab.SAGITTAL_T1: "T1_TSE_SAG", vocab.SAGITTAL_T2: "t2_tse_sag", vocab.AXIAL_T2: "T2_TSE_TRA"}
LOCALIZER_DESCRIPTION = "localizer"
DIFFUSION_DESCRIPTION = "ep2d_diff_tra b1000"


@dataclass(frozen=True)
class BuiltExport:
    """The export folder and what the reader should find: per study (in the order of ``study_uids``) the
    SeriesInstanceUIDs of each type (the synthetic axial series may be several), the truncated file and the non-image
    files."""

    root: Path
    study_uids: list[str]
    series_uids: dict[str, dict[str, list[str]]]
    truncated: Path | None
    non_images: list[Path]


def build_export(data_dir: Path, out: Path, *, layout: str = "uid", extras: bool = True, drop_last_axial: bool = True,
                 truncate: bool = True) -> BuiltExport:
    """Write an export of ``data_dir``'s test studies into ``out`` (see the module docstring)."""
    descriptions = pd.read_csv(data_dir / "test_series_descriptions.csv")
    study_ids = sorted(descriptions["study_id"].unique())
    datasets: list[pydicom.Dataset] = []
    study_uids: list[str] = []
    series_uids: dict[str, dict[str, list[str]]] = {}
    truncate_uid = None
    for position, study_id in enumerate(study_ids):
        rows = descriptions[descriptions["study_id"] == study_id]
        types: dict[str, list[str]] = {}
        for row in rows.itertuples():
            if drop_last_axial and position == len(study_ids) - 1 and row.series_description == vocab.AXIAL_T2:
                continue
            folder = data_dir / "test_images" / str(study_id) / str(row.series_id)
            series = [pydicom.dcmread(path) for path in sorted(folder.glob("*.dcm"))]
            for ds in series:
                ds.SeriesDescription = SCANNER_NAMES[row.series_description]
            types.setdefault(row.series_description, []).append(str(series[0].SeriesInstanceUID))
            datasets += series
        study_uid = str(datasets[-1].StudyInstanceUID)
        study_uids.append(study_uid)
        series_uids[study_uid] = types
        if position == 0:
            truncate_uid = types[vocab.SAGITTAL_T1][0]
            if extras:
                datasets += _localizer(datasets[-1]) + _diffusion(
                    [ds for ds in datasets if str(ds.SeriesInstanceUID) == types[vocab.AXIAL_T2][0]])
    out.mkdir(parents=True, exist_ok=True)
    paths = _write_dicomdir(datasets, out) if layout == "dicomdir" else _write_uid_folders(datasets, out)
    truncated = None
    if truncate:
        truncated = next(path for path, ds in zip(paths, datasets) if str(ds.SeriesInstanceUID) == truncate_uid)
        truncated.write_bytes(truncated.read_bytes()[: truncated.stat().st_size // 2])
    non_images = []
    if extras:
        non_images = [out / "README.TXT", out / "report.pdf", out / "SR" / "report_sr"]
        non_images[0].write_text("Exported by a PACS viewer. Patient data inside.\n")
        non_images[1].write_bytes(b"%PDF-1.4\n% not a DICOM file\n")
        non_images[2].parent.mkdir(exist_ok=True)
        _structured_report(datasets[0]).save_as(non_images[2], enforce_file_format=True)
    return BuiltExport(root=out, study_uids=study_uids, series_uids=series_uids, truncated=truncated,
                       non_images=non_images)


def _write_uid_folders(datasets: list[pydicom.Dataset], out: Path) -> list[Path]:
    paths = []
    for ds in datasets:
        path = out / str(ds.StudyInstanceUID) / str(ds.SeriesInstanceUID) / str(ds.SOPInstanceUID)
        path.parent.mkdir(parents=True, exist_ok=True)
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


def _write_dicomdir(datasets: list[pydicom.Dataset], out: Path) -> list[Path]:
    """pydicom's FileSet: ``out/DICOMDIR`` and its ``PT*/ST*/SE*/IM*`` files; the paths in ``datasets`` order."""
    file_set = FileSet()
    for ds in datasets:
        ds.StudyTime = ds.get("StudyTime") or "120000"  # a STUDY record needs it; the synthetic files lack it
        file_set.add(ds)
    file_set.write(out)
    by_uid = {str(instance.SOPInstanceUID): Path(instance.path) for instance in FileSet(out / "DICOMDIR")}
    return [by_uid[str(ds.SOPInstanceUID)] for ds in datasets]


def _copy_series(template: pydicom.Dataset, description: str) -> tuple[str, pydicom.Dataset]:
    ds = copy.deepcopy(template)  # Dataset.update would share the data elements: setting one would change both
    ds.SeriesInstanceUID = generate_uid()
    ds.SeriesDescription = description
    ds.SeriesNumber = 99
    return str(ds.SeriesInstanceUID), ds


def _localizer(template: pydicom.Dataset) -> list[pydicom.Dataset]:
    """Three orthogonal slices (sagittal, coronal, axial) of 64 x 64 pixels, ImageType ``LOCALIZER``."""
    uid, _ = _copy_series(template, LOCALIZER_DESCRIPTION)
    slices = []
    for k, orientation in enumerate([(0, 1, 0, 0, 0, -1), (1, 0, 0, 0, 0, -1), (1, 0, 0, 0, 1, 0)]):
        _, ds = _copy_series(template, LOCALIZER_DESCRIPTION)
        ds.SeriesInstanceUID = uid
        ds.SOPInstanceUID = generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.ImageType = ["ORIGINAL", "PRIMARY", "LOCALIZER"]
        ds.InstanceNumber = k + 1
        ds.ImageOrientationPatient = list(orientation)
        ds.ImagePositionPatient = [-150.0, -150.0, 150.0]
        ds.PixelSpacing = [4.0, 4.0]
        ds.Rows = ds.Columns = 64
        ds.PixelData = np.zeros((64, 64), dtype=np.int16).tobytes()
        slices.append(ds)
    return slices


def _diffusion(axial: list[pydicom.Dataset]) -> list[pydicom.Dataset]:
    """A copy of an axial series as a diffusion series (b = 1000)."""
    uid, _ = _copy_series(axial[0], DIFFUSION_DESCRIPTION)
    copies = []
    for template in axial:
        _, ds = _copy_series(template, DIFFUSION_DESCRIPTION)
        ds.SeriesInstanceUID = uid
        ds.SOPInstanceUID = generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.DiffusionBValue = 1000
        copies.append(ds)
    return copies


def _structured_report(template: pydicom.Dataset) -> pydicom.Dataset:
    """A Basic Text SR of the first study: a DICOM object without an image."""
    ds = pydicom.Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = BasicTextSRStorage
    ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = BasicTextSRStorage
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID
    ds.Modality = "SR"
    ds.StudyInstanceUID = template.StudyInstanceUID
    ds.SeriesInstanceUID = generate_uid()
    ds.PatientID = template.PatientID
    ds.ValueType = "CONTAINER"
    return ds


def copy_export(built: BuiltExport, out: Path) -> Path:
    """A copy of an export folder (to damage one without touching the other)."""
    shutil.copytree(built.root, out)
    return out
