"""A PACS or CD export -> studies, typed series, picked series, and a data folder in the Kaggle layout.

:func:`read_export` takes what :func:`radiospine.io.export.scan_export` found (every file's header, the skipped
files with their reasons) and:

1. groups the MR images by StudyInstanceUID and SeriesInstanceUID; studies are numbered 1, 2, ... in the order of
   (StudyDate, StudyInstanceUID), series 1, 2, ... in the order of (SeriesNumber, SeriesInstanceUID). These small
   integers are the ids everything downstream sees (file names, pages): no patient name or id is used;
2. lays each series out as ``DATA/test_images/<study>/<series>/<k>.dcm`` (symbolic links to the export's files,
   ``k`` counting the files: the reader takes instance numbers from the headers), reads its headers
   (:func:`radiospine.io.headers.read_series_headers`: damaged or truncated files are skipped and recorded) and
   types it (:func:`classify_series`: localisers, diffusion, coronal and axial T1 series are recognised and not
   used; the rest through the catalog's own typing, :func:`radiospine.catalog.series_type`);
3. picks the series of each view (:func:`pick_series`) and writes ``DATA/test_series_descriptions.csv`` with the
   picked series only (the others' folders are removed), so the result is an ordinary data folder for
   ``localize``, the feature stage and the models.

The series table of each study says, for every series, its type, why, whether it was picked and why; the skipped
table lists every file that is not used, with the reason.
"""

from __future__ import annotations

import logging
import os
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from radiospine import vocab
from radiospine.catalog import series_dir, series_type, slice_axis
from radiospine.errors import DicomReadError
from radiospine.io.export import ExportImage, ExportScan, scan_export
from radiospine.io.headers import read_series_headers
from radiospine.io.stacks import SeriesStack

log = logging.getLogger(__name__)

SPLIT = "test"
#: Series types that are read but never used for grading.
LOCALIZER, DIFFUSION, CORONAL, AXIAL_T1, UNKNOWN, UNREADABLE = (
    "localizer", "diffusion", "coronal", "axial T1", "unknown", "unreadable")
#: Text in a series description or sequence name that marks a localiser (scout) or a diffusion series.
_LOCALIZER_WORDS = ("localizer", "localiser", "scout", "survey", "loc ", "3-plane", "3 plane", "tri-pilot", "pilot")
_DIFFUSION_WORDS = ("dwi", "diff", "adc", "trace", "ep2d_d", "b1000", "b800", "b500")
#: A series whose largest stack has fewer slices is not used for a view (a localiser, a single reformat).
MIN_SLICES = 3

SERIES_COLUMNS = ["study_id", "series_id", "series_number", "series_uid", "description", "n_files", "n_slices",
                  "n_stacks", "type", "type_reason", "picked", "pick_reason"]
SKIPPED_COLUMNS = ["study_id", "kind", "path", "reason"]


@dataclass(frozen=True)
class ExportStudy:
    """One study of an export.

    Attributes:
        study_id: its number in this export (1, 2, ...).
        study_uid, study_date, study_description: from the headers.
        series: :data:`SERIES_COLUMNS`, one row per series of the study.
        missing_views: the series types (:data:`radiospine.vocab.SERIES_DESCRIPTIONS`) no series was picked for.
    """

    study_id: int
    study_uid: str
    study_date: str
    study_description: str
    series: pd.DataFrame
    missing_views: tuple[str, ...]

    @property
    def gradable(self) -> bool:
        """True when at least one series was picked."""
        return bool(self.series["picked"].any())


@dataclass(frozen=True)
class Export:
    """An export read into a data folder: ``data_dir`` (Kaggle layout, split ``test``), its studies, and every
    entry not used (:data:`SKIPPED_COLUMNS`; ``study_id`` is 0 for files that belong to no study)."""

    root: Path
    data_dir: Path
    studies: list[ExportStudy]
    skipped: pd.DataFrame
    dicomdir: Path | None

    @property
    def gradable_study_ids(self) -> list[int]:
        return [study.study_id for study in self.studies if study.gradable]


def read_export(root: str | Path, data_dir: str | Path) -> Export:
    """Read the export under ``root`` and lay its picked series out in ``data_dir`` (replaced if it exists).

    Never raises on the content of the export: every file is either used or listed in ``Export.skipped``.
    """
    scan = scan_export(root)
    data_dir = Path(data_dir)
    if data_dir.exists():
        shutil.rmtree(data_dir)
    (data_dir / f"{SPLIT}_images").mkdir(parents=True)
    skipped = [(0, entry.kind, str(entry.path), entry.reason) for entry in scan.skipped]
    studies = []
    for study_id, images in enumerate(_studies(scan), start=1):
        study, study_skipped = _read_study(study_id, images, data_dir)
        studies.append(study)
        skipped += study_skipped
    descriptions = pd.concat([s.series.loc[s.series["picked"], ["study_id", "series_id", "type"]] for s in studies]
                             or [pd.DataFrame(columns=["study_id", "series_id", "type"])], ignore_index=True)
    descriptions.rename(columns={"type": "series_description"}).to_csv(
        data_dir / f"{SPLIT}_series_descriptions.csv", index=False)
    return Export(root=Path(root), data_dir=data_dir, studies=studies,
                  skipped=pd.DataFrame(skipped, columns=SKIPPED_COLUMNS), dicomdir=scan.dicomdir)


def _studies(scan: ExportScan) -> list[list[ExportImage]]:
    by_study: dict[str, list[ExportImage]] = {}
    for image in scan.images:
        by_study.setdefault(image.study_uid, []).append(image)
    return [by_study[uid] for uid in sorted(by_study, key=lambda uid: (by_study[uid][0].study_date, uid))]


def _read_study(study_id: int, images: list[ExportImage], data_dir: Path
                ) -> tuple[ExportStudy, list[tuple[int, str, str, str]]]:
    by_series: dict[str, list[ExportImage]] = {}
    for image in images:
        by_series.setdefault(image.series_uid, []).append(image)
    order = sorted(by_series, key=lambda uid: (by_series[uid][0].series_number is None,
                                               by_series[uid][0].series_number or 0, uid))
    rows, stacks_of, skipped = [], {}, []
    for series_id, uid in enumerate(order, start=1):
        files = sorted(by_series[uid], key=lambda image: str(image.path))
        folder = series_dir(data_dir, SPLIT, study_id, series_id)
        folder.mkdir(parents=True)
        for k, image in enumerate(files, start=1):
            _link(image.path, folder / f"{k}.dcm")
        first = files[0]
        try:
            stacks = read_series_headers(folder, study_id=study_id, series_id=series_id)
        except DicomReadError as exc:
            stacks = []
            kind, reason = UNREADABLE, str(exc)
            skipped += [(study_id, "unreadable_series", str(image.path), str(exc)) for image in files]
        else:
            kind, reason = classify_series(first, stacks)
            skipped += [(study_id, "damaged_file", str(_origin(s.path)), s.reason.replace(str(s.path), "the file"))
                        for s in stacks[0].skipped_files]
        stacks_of[series_id] = stacks
        rows.append(dict(study_id=study_id, series_id=series_id, series_number=first.series_number, series_uid=uid,
                         description=first.series_description, n_files=len(files),
                         n_slices=max((len(s.slices) for s in stacks), default=0), n_stacks=len(stacks), type=kind,
                         type_reason=reason, picked=False, pick_reason=""))
    series = pd.DataFrame(rows, columns=SERIES_COLUMNS)
    series = pick_series(series)
    for row in series.itertuples():
        if not row.picked:
            shutil.rmtree(series_dir(data_dir, SPLIT, study_id, row.series_id))
    picked_types = set(series.loc[series["picked"], "type"])
    missing = tuple(t for t in vocab.SERIES_DESCRIPTIONS if t not in picked_types)
    return ExportStudy(study_id=study_id, study_uid=first.study_uid, study_date=first.study_date,
                       study_description=first.study_description, series=series, missing_views=missing), skipped


def classify_series(first: ExportImage, stacks: Sequence[SeriesStack]) -> tuple[str, str]:
    """``(type, reason)`` of a series from its first file's tags and its stacks.

    The type is a :data:`radiospine.vocab.SERIES_DESCRIPTIONS` entry, or one of :data:`LOCALIZER`,
    :data:`DIFFUSION`, :data:`CORONAL`, :data:`AXIAL_T1`, :data:`UNKNOWN` (not used for grading).
    """
    stack = max(stacks, key=lambda s: len(s.slices))
    text = f" {first.series_description} {first.sequence_name} ".lower()
    if "LOCALIZER" in first.image_type or any(word in text for word in _LOCALIZER_WORDS):
        return LOCALIZER, "a localiser (ImageType or description)"
    if len(stack.slices) < MIN_SLICES:
        return LOCALIZER, f"{len(stack.slices)} parallel slice(s): a localiser or a single reformat"
    if (first.diffusion_b_value or 0) > 0 or any(word in text for word in _DIFFUSION_WORDS):
        return DIFFUSION, "diffusion weighted (b-value or description)"
    axis = slice_axis(stack)
    if axis == 1:
        return CORONAL, "coronal slices"
    if axis == 2 and stack.description not in vocab.SERIES_DESCRIPTIONS:
        tr = first.repetition_time_ms
        if "t1" in text or (tr is not None and tr < 1200 and "t2" not in text):
            return AXIAL_T1, f"axial, T1 weighted ({'description' if 't1' in text else f'TR {tr:g} ms'})"
    kind = series_type(stack)
    if not kind:
        return UNKNOWN, "neither axial nor sagittal, or a sagittal series without T1/T2 in its description or TR"
    if stack.description == kind:
        return kind, "its SeriesDescription"
    plane = "axial" if axis == 2 else "sagittal"
    if kind == vocab.AXIAL_T2:
        return kind, "axial slices, not T1"
    weighting = "description" if any(w in text for w in ("t1", "t2", "stir")) else \
        f"TR {first.repetition_time_ms:g} ms"
    return kind, f"{plane} slices, {weighting}"


def pick_series(series: pd.DataFrame) -> pd.DataFrame:
    """Mark the series each view uses (``picked``, ``pick_reason``) in one study's :data:`SERIES_COLUMNS` table.

    Sagittal T1 and Sagittal T2/STIR: one series each, the one with the most slices in one stack (then a T2 before a
    STIR, then the lowest series number). Axial T2: every axial T2 series, since a level's slice is chosen across
    them (exports often hold one stack per disc, or a stack through the lower discs and another through the upper).
    """
    series = series.copy()
    for view in (vocab.SAGITTAL_T1, vocab.SAGITTAL_T2):
        candidates = series[series["type"] == view]
        if candidates.empty:
            continue
        stir = candidates["description"].str.lower().str.contains("stir|tirm", regex=True)
        ranked = candidates.assign(_stir=stir).sort_values(["n_slices", "_stir", "series_id"],
                                                           ascending=[False, True, True])
        best = ranked.index[0]
        series.loc[best, "picked"] = True
        series.loc[best, "pick_reason"] = ("the only " + view + " series" if len(candidates) == 1 else
                                           f"the most slices ({series.loc[best, 'n_slices']}) of {len(candidates)} "
                                           f"{view} series")
        for other in ranked.index[1:]:
            series.loc[other, "pick_reason"] = f"another {view} series has more slices or is T2 rather than STIR"
    axial = series["type"] == vocab.AXIAL_T2
    series.loc[axial, "picked"] = True
    series.loc[axial, "pick_reason"] = ("the only Axial T2 series" if axial.sum() == 1 else
                                        f"all {int(axial.sum())} Axial T2 series: each level takes its nearest slice")
    unused = ~series["type"].isin(vocab.SERIES_DESCRIPTIONS)
    series.loc[unused, "pick_reason"] = "not used for grading: " + series.loc[unused, "type"]
    return series


def _link(source: Path, target: Path) -> None:
    """``target`` pointing at ``source`` (a symbolic link; a copy where links cannot be made)."""
    try:
        os.symlink(Path(source).resolve(), target)
    except OSError:
        shutil.copyfile(source, target)


def _origin(path: Path) -> Path:
    """The export file behind a laid-out file (the link's target)."""
    return Path(os.path.realpath(path))
