"""Scan a data folder in the Kaggle layout into tables of studies, series and instances.

Layout (docs/design.md section 1)::

    DATA/{split}_series_descriptions.csv     study_id,series_id,series_description
    DATA/{split}_images/<study_id>/<series_id>/<instance_number>.dcm

Study and series ids are integers everywhere: a folder or CSV value that is not (``../etc``, ``12a``)
is rejected with an error naming it, and paths are only ever built from validated integers.

A series found on disk but missing from the descriptions CSV, or described with an unknown string, gets its
description inferred from its DICOM headers (the SeriesDescription tag when it names a known type, else the
orientation: axial vs sagittal, and for sagittal series the repetition/echo times: T1 vs T2) and is flagged
``description_inferred=True``. A series the CSV lists but the disk lacks is recorded as missing.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd

from radiospine import vocab
from radiospine.csvio import read_csv_cells
from radiospine.errors import CatalogError, DicomReadError
from radiospine.geometry import slice_step_vector, unit
from radiospine.hashing import short_hash
from radiospine.io.stacks import SeriesStack

log = logging.getLogger(__name__)

Split = Literal["train", "test"]
SPLITS: tuple[str, ...] = ("train", "test")

SERIES_COLUMNS = ["study_id", "series_id", "series_description", "description_inferred", "n_instances", "on_disk",
                  "path"]
INSTANCE_COLUMNS = ["study_id", "series_id", "instance_number", "path"]

#: A sagittal series without T1/T2 in its description is T1 below this repetition time (ms), else T2.
T1_MAX_REPETITION_MS = 1200.0

_INTEGER_ID = re.compile(r"^[0-9]{1,18}$")


def parse_id(value: object, *, what: str, where: str) -> int:
    """A study/series/instance id as a positive ``int``; anything else raises naming ``where``."""
    text = str(value).strip()
    whole_number = isinstance(value, (int, np.integer)) and not isinstance(value, bool)
    if whole_number or (isinstance(value, float) and float(value).is_integer()):
        text = str(int(value))
    if not _INTEGER_ID.match(text):
        raise CatalogError(f"{where}: {what} {value!r} is not a positive integer id; "
                           f"Kaggle ids are digits only (rename or remove it)")
    return int(text)


def series_dir(data_dir: Path, split: str, study_id: int, series_id: int) -> Path:
    """``DATA/{split}_images/<study_id>/<series_id>``, built from validated integers only."""
    if split not in SPLITS:
        raise CatalogError(f"unknown split {split!r}; expected 'train' or 'test'")
    return Path(data_dir) / f"{split}_images" / str(int(study_id)) / str(int(series_id))


def load_series_descriptions(path: Path) -> pd.DataFrame:
    """``{split}_series_descriptions.csv`` -> study_id, series_id (int64), series_description (str)."""
    path = Path(path)
    if not path.is_file():
        raise CatalogError(f"{path} does not exist; every split needs its series descriptions CSV "
                           f"(study_id,series_id,series_description)")
    try:
        cells = read_csv_cells(path, columns=("study_id", "series_id", "series_description"))
    except ValueError as exc:
        raise CatalogError(str(exc)) from None
    frame = pd.DataFrame({
        column: [parse_id(value, what=column, where=f"{path} line {line}") for line, value in cells[column].items()]
        for column in ("study_id", "series_id")
    }, dtype="int64")
    frame["series_description"] = cells["series_description"].to_numpy(dtype=str)
    duplicated = frame.duplicated(["study_id", "series_id"], keep=False)
    if duplicated.any():
        rows = frame.loc[duplicated, ["study_id", "series_id"]].drop_duplicates().head(5).values.tolist()
        raise CatalogError(f"{path} lists the same series more than once: {rows}")
    return frame


def infer_description(series_path: Path, study_id: int, series_id: int) -> str:
    """Guess ``Sagittal T1`` / ``Sagittal T2/STIR`` / ``Axial T2`` from a series' headers ("" if unknown)."""
    from radiospine.io.headers import read_series_headers

    try:
        stacks = read_series_headers(series_path, study_id=study_id, series_id=series_id)
    except DicomReadError as exc:
        log.warning("cannot infer the type of %s: %s", series_path, exc)
        return ""
    return series_type(stacks[0]) if stacks else ""


def slice_axis(stack: SeriesStack) -> int:
    """The patient axis a stack's slices step along: 0 x (sagittal), 1 y (coronal), 2 z (axial)."""
    return int(np.argmax(np.abs(unit(slice_step_vector(stack.affine)))))


def series_type(stack: SeriesStack) -> str:
    """A stack's series type from its headers: the SeriesDescription when it names a known type, else the
    orientation (axial: ``Axial T2``; sagittal: ``t1``/``t2``/``stir`` in the description, then the repetition
    time: under 1200 ms T1, else T2); ``""`` when none applies (coronal, a sagittal series without either)."""
    if stack.description in vocab.SERIES_DESCRIPTIONS:
        return stack.description
    axis = slice_axis(stack)
    if axis == 2:
        return vocab.AXIAL_T2
    if axis == 0:
        text = stack.description.lower()
        if "t1" in text:
            return vocab.SAGITTAL_T1
        if "t2" in text or "stir" in text:
            return vocab.SAGITTAL_T2
        tr = stack.repetition_time_ms
        if tr is not None:
            return vocab.SAGITTAL_T1 if tr < T1_MAX_REPETITION_MS else vocab.SAGITTAL_T2
    return ""


@dataclass(frozen=True)
class Catalog:
    """What a data folder holds for one split.

    Attributes:
        data_dir, split: where it was scanned.
        studies: study_id, n_series, n_<type> per series type, missing_types (";"-joined).
        series: ``SERIES_COLUMNS``: one row per series on disk or in the CSV.
        instances: ``INSTANCE_COLUMNS``: one row per ``.dcm`` file (instance number from the file name).
        problems: what was skipped and why (kind, path, message).
    """

    data_dir: Path
    split: str
    studies: pd.DataFrame
    series: pd.DataFrame
    instances: pd.DataFrame
    problems: pd.DataFrame

    @property
    def study_ids(self) -> list[int]:
        return self.studies["study_id"].tolist()

    def series_of(self, study_id: int, description: str | None = None) -> pd.DataFrame:
        """The on-disk series of a study (optionally of one type), largest first."""
        rows = self.series[(self.series["study_id"] == int(study_id)) & self.series["on_disk"]]
        if description is not None:
            rows = rows[rows["series_description"] == description]
        return rows.sort_values(["n_instances", "series_id"], ascending=[False, True])

    def subset(self, study_ids: Sequence[int]) -> Catalog:
        """The same catalog restricted to ``study_ids`` (what a worker process needs for a few studies)."""
        ids = [int(study_id) for study_id in study_ids]
        return replace(self, studies=self.studies[self.studies["study_id"].isin(ids)],
                       series=self.series[self.series["study_id"].isin(ids)],
                       instances=self.instances[self.instances["study_id"].isin(ids)])

    def content_hash(self) -> str:
        """A hash of the catalog's ids, descriptions and file names: it changes when the data does."""
        return short_hash(
            pd.util.hash_pandas_object(
                self.series[["study_id", "series_id", "series_description", "n_instances"]], index=False).values,
            pd.util.hash_pandas_object(
                self.instances[["study_id", "series_id", "instance_number"]], index=False).values)


def scan(data_dir: str | Path, split: str, *, study_ids: list[int] | None = None) -> Catalog:
    """Scan ``data_dir`` for ``split``; ``study_ids`` limits the scan to those studies."""
    data_dir = Path(data_dir)
    if split not in SPLITS:
        raise CatalogError(f"unknown split {split!r}; expected 'train' or 'test'")
    if not data_dir.is_dir():
        raise CatalogError(f"data folder {data_dir} does not exist")
    descriptions = load_series_descriptions(data_dir / f"{split}_series_descriptions.csv")
    images_dir = data_dir / f"{split}_images"
    if not images_dir.is_dir():
        raise CatalogError(f"{images_dir} does not exist; expected {split}_images/<study_id>/<series_id>/*.dcm")
    wanted = None if study_ids is None else {int(s) for s in study_ids}

    problems: list[tuple[str, str, str]] = []
    series_rows: list[dict] = []
    instance_rows: list[tuple[int, int, int, str]] = []
    known = {(r.study_id, r.series_id): r.series_description for r in descriptions.itertuples()}
    seen: set[tuple[int, int]] = set()

    for study_path in sorted(images_dir.iterdir()):
        if not study_path.is_dir():
            continue
        try:
            study_id = parse_id(study_path.name, what="study folder", where=str(study_path))
        except CatalogError as exc:
            problems.append(("bad_study_folder", str(study_path), str(exc)))
            log.warning("%s", exc)
            continue
        if wanted is not None and study_id not in wanted:
            continue
        for series_path in sorted(study_path.iterdir()):
            if not series_path.is_dir():
                continue
            try:
                series_id = parse_id(series_path.name, what="series folder", where=str(series_path))
            except CatalogError as exc:
                problems.append(("bad_series_folder", str(series_path), str(exc)))
                log.warning("%s", exc)
                continue
            n_instances = 0
            for dcm in series_path.glob("*.dcm"):
                try:
                    instance = parse_id(dcm.stem, what="instance file name", where=str(dcm))
                except CatalogError as exc:
                    problems.append(("bad_instance_name", str(dcm), str(exc)))
                    continue
                instance_rows.append((study_id, series_id, instance, str(dcm)))
                n_instances += 1
            description = known.get((study_id, series_id), "")
            inferred = description not in vocab.SERIES_DESCRIPTIONS
            if inferred and n_instances:
                guess = infer_description(series_path, study_id, series_id)
                reason = "not in the descriptions CSV" if (study_id, series_id) not in known else \
                    f"unknown description {description!r}"
                log.warning("study %s series %s: %s; inferred %r from headers", study_id, series_id, reason,
                            guess or "nothing")
                problems.append(("description_inferred", str(series_path), f"{reason}; inferred {guess!r}"))
                description = guess
            seen.add((study_id, series_id))
            series_rows.append(dict(study_id=study_id, series_id=series_id, series_description=description,
                                    description_inferred=inferred, n_instances=n_instances,
                                    on_disk=n_instances > 0, path=str(series_path)))
            if n_instances == 0:
                problems.append(("empty_series", str(series_path), "no .dcm files"))

    for row in descriptions.itertuples():
        if (row.study_id, row.series_id) in seen or (wanted is not None and row.study_id not in wanted):
            continue
        path = series_dir(data_dir, split, row.study_id, row.series_id)
        problems.append(("missing_series", str(path), "listed in the descriptions CSV but not on disk"))
        series_rows.append(dict(study_id=row.study_id, series_id=row.series_id,
                                series_description=row.series_description, description_inferred=False,
                                n_instances=0, on_disk=False, path=str(path)))

    series = pd.DataFrame(series_rows, columns=SERIES_COLUMNS).sort_values(["study_id", "series_id"])
    series = series.astype({"study_id": "int64", "series_id": "int64", "n_instances": "int64"}).reset_index(drop=True)
    instances = pd.DataFrame(instance_rows, columns=INSTANCE_COLUMNS).sort_values(
        ["study_id", "series_id", "instance_number"]).reset_index(drop=True)
    instances = instances.astype({"study_id": "int64", "series_id": "int64", "instance_number": "int64"})
    return Catalog(data_dir=data_dir, split=split, studies=_summarise_studies(series), series=series,
                   instances=instances,
                   problems=pd.DataFrame(problems, columns=["kind", "path", "message"]))


def _summarise_studies(series: pd.DataFrame) -> pd.DataFrame:
    rows = []
    for study_id, group in series.groupby("study_id", sort=True):
        present = group[group["on_disk"]]
        counts = {f"n_{_type_key(d)}": int((present["series_description"] == d).sum())
                  for d in vocab.SERIES_DESCRIPTIONS}
        missing = [d for d in vocab.SERIES_DESCRIPTIONS if counts[f"n_{_type_key(d)}"] == 0]
        rows.append(dict(study_id=int(study_id), n_series=len(present), **counts, missing_types=";".join(missing)))
    columns = ["study_id", "n_series", *[f"n_{_type_key(d)}" for d in vocab.SERIES_DESCRIPTIONS], "missing_types"]
    return pd.DataFrame(rows, columns=columns)


def _type_key(description: str) -> str:
    """``"Sagittal T2/STIR"`` -> ``"sagittal_t2_stir"`` (a column-name-safe key)."""
    return re.sub(r"[^a-z0-9]+", "_", description.lower()).strip("_")
