"""Import a folder of image volumes (``.mha``, ``.nii``/``.nii.gz``, ``.nrrd``) into a data folder in the Kaggle layout.

``radiospine import-volumes`` (:mod:`radiospine.stages.import_volumes`) runs :func:`import_volumes`. What it reads:

* ``VOLUMES/<study_id>[_anything].<ext>``: one series per image file; the study id is the file name's leading
  integer. Files whose name (without its ending) ends in ``_mask`` are segmentation masks: ``X_mask.<ext>`` belongs
  to ``X_image.<ext>`` or ``X.<ext>``, on the same voxel grid.
* optionally a table of per-disc gradings in SPIDER's layout (``Patient``, ``IVD label``, one column per grading;
  IVD labels count the discs from the bottom, 1 normally L5/S1, 0 a disc below it).

What it writes into ``OUT`` (every other command reads it unchanged):

* ``{split}_images/<study_id>/<series_id>/<instance>.dcm``: each volume as one DICOM series
  (:func:`radiospine.io.write.write_volume_series`; series id ``study_id * 100 + n``, instance numbers ``1 .. n``
  in slice order), so reading the series back gives the volume's voxels and affine;
* ``{split}_series_descriptions.csv``: each series typed from its orientation (slices along x: sagittal, along z:
  axial) and, for sagittal series, its file name (a ``t1`` token: ``Sagittal T1``, else ``Sagittal T2/STIR``);
  series types a study lacks are reported missing by ``radiospine catalog`` as for any data folder;
* for ``train``: ``train.csv`` (the studies, every cell empty: image volumes carry no RSNA grades) and
  ``train_label_coordinates.csv`` with the spinal canal point of each RSNA level (L1/L2 .. L5/S1) found in a mask;
  for ``test``: the coordinates go to ``volume_import/test_label_coordinates.csv`` (the test split has none);
  with ``points="disc"`` the point of each level is the disc centre instead of the canal point (the ROI of the
  ``spider`` task's disc gradings, and what the localiser then learns to find);
* with gradings, per task of :mod:`radiospine.task` whose targets all come from gradings columns found in the
  table (``spider``): its labels table (:func:`radiospine.labels.write_task_labels`; ``train_spider.csv`` for
  ``train``, ``volume_import/test_spider.csv`` for ``test``): each RSNA level's disc graded through the target's
  value map (SPIDER's Modic type 0-3 -> change 0/1), an empty cell where a disc or its grading is missing;
* ``volume_import/discs.csv``: every disc found (thoracic and sacral ones too): its IVD label and level name, its
  centre and canal point (LPS mm and pixel), size, thickness, and the gradings of its IVD label;
* ``volume_import/verification.csv``: per study, the disc components found, the IVD labels graded, the mapping
  decision and the anomalies (counts that differ, discs cut at the border, no canal point, a small bottom disc);
* ``volume_import/manifest.json``: the inputs, the options and the counts;
* with ``previews``: ``volume_import/previews/<study_id>_<series_id>.png``, each disc's centre and canal point with
  its level and IVD label on the slice through the canal, to check the level mapping by eye.

The level mapping (``SPIDER`` numbering, :func:`map_discs_to_ivd`): discs (mask components,
:func:`radiospine.roi.mask_points.disc_points`) are counted from the bottom; the bottom-most disc is IVD 0 when the
study's gradings hold label 0 (a disc below L5/S1, a transitional vertebra) and IVD 1 (L5/S1) otherwise; each disc
above it takes the next label. IVD 1 .. 5 are L5/S1 .. L1/L2 (the RSNA levels), 6 and up thoracic (T12/L1 ...),
0 is S1/S2: kept in ``discs.csv``, not in the coordinates.
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from radiospine import vocab
from radiospine.artifacts import atomic_path, atomic_write_text, prepare_output_folder
from radiospine.errors import DataError, MissingInputError, UserError
from radiospine.geometry import slice_normal
from radiospine.io.image_file import image_file_stem, image_file_suffix, read_image_file
from radiospine.io.write import write_volume_series
from radiospine.labels import write_label_coordinates, write_task_labels
from radiospine.roi.mask_points import disc_points
from radiospine.task import TASKS, Task

log = logging.getLogger(__name__)

#: Where the importer's own tables go inside the data folder.
IMPORT_FOLDER = "volume_import"
#: Disc levels by IVD label counted from the bottom (SPIDER): 0 below L5/S1, 1 = L5/S1, 2 = L4/L5, ...
_LEVELS_FROM_BOTTOM: tuple[str, ...] = (
    "S1/S2", "L5/S1", "L4/L5", "L3/L4", "L2/L3", "L1/L2", "T12/L1",
    *(f"T{n}/T{n + 1}" for n in range(11, 0, -1)),
)
#: A bottom disc smaller than this share of the study's median disc volume is flagged (a rudimentary disc?).
SMALL_BOTTOM_DISC = 0.5
_T1_TOKEN = re.compile(r"(^|[^a-z0-9])t1([^a-z0-9]|$)")


def level_of_ivd_label(label: int) -> str:
    """SPIDER's IVD label -> level name: 1 -> ``"L5/S1"``, 5 -> ``"L1/L2"``, 6 -> ``"T12/L1"``, 0 -> ``"S1/S2"``."""
    if not 0 <= int(label) < len(_LEVELS_FROM_BOTTOM):
        raise ValueError(f"IVD label {label} is outside 0..{len(_LEVELS_FROM_BOTTOM) - 1}")
    return _LEVELS_FROM_BOTTOM[int(label)]


def rsna_level_of_ivd_label(label: int) -> str | None:
    """The RSNA level (``"l5_s1"`` ...) of an IVD label, ``None`` for thoracic and sacral discs."""
    name = level_of_ivd_label(label)
    try:
        return vocab.level_from_human(name)
    except ValueError:
        return None


# --- finding the files -------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class VolumeFile:
    """One image file to import as a series, with its mask (``None`` when it has none)."""

    study_id: int
    series_id: int
    path: Path
    mask_path: Path | None


def find_volumes(folder: str | Path) -> list[VolumeFile]:
    """The image files of ``folder`` grouped into studies (see the module docstring), in study and name order.

    Raises:
        MissingInputError: no such folder, or no image file in it.
        DataError: a file name without a leading study id, a mask without its image.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise MissingInputError(f"volume folder {folder} does not exist")
    files = sorted(p for p in folder.iterdir() if p.is_file() and image_file_suffix(p))
    if not files:
        raise MissingInputError(f"{folder} holds no image file (.mha, .mhd, .nii, .nii.gz, .nrrd); "
                                f"pass the folder that holds the volumes")
    masks = {image_file_stem(p)[: -len("_mask")]: p for p in files if image_file_stem(p).endswith("_mask")}
    images = [p for p in files if not image_file_stem(p).endswith("_mask")]
    used: set[str] = set()
    by_study: dict[int, list[tuple[Path, Path | None]]] = {}
    for path in images:
        stem = image_file_stem(path)
        match = re.match(r"^([0-9]{1,15})(?![0-9])", stem)
        if not match or int(match.group(1)) == 0:
            raise DataError(f"{path}: the file name does not start with a study id (a positive integer, e.g. "
                            f"'12_t2.mha'); rename it")
        key = stem[: -len("_image")] if stem.endswith("_image") else stem
        mask = masks.get(key)
        if mask is not None:
            used.add(key)
        by_study.setdefault(int(match.group(1)), []).append((path, mask))
    orphans = sorted(str(path) for key, path in masks.items() if key not in used)
    if orphans:
        raise DataError(f"mask(s) without an image: {', '.join(orphans[:3])}; a mask X_mask.<ext> belongs to "
                        f"X_image.<ext> or X.<ext>")
    volumes = []
    for study_id in sorted(by_study):
        for n, (path, mask) in enumerate(by_study[study_id], start=1):
            volumes.append(VolumeFile(study_id, study_id * 100 + n, path, mask))
    return volumes


def series_description(affine: np.ndarray, name: str, path: str | Path = "") -> str:
    """The series type of a stack from its slice direction and (sagittal) its file name (module docstring)."""
    axis = int(np.argmax(np.abs(slice_normal(affine))))
    if axis == 2:
        return vocab.AXIAL_T2
    if axis == 0:
        return vocab.SAGITTAL_T1 if _T1_TOKEN.search(name.lower()) else vocab.SAGITTAL_T2
    raise DataError(f"{path}: a coronal stack (slices along the patient's y axis); radiospine reads sagittal and "
                    f"axial series: leave it out of the volume folder")


# --- gradings and the level mapping ------------------------------------------------------------------------------

def load_gradings(path: str | Path) -> pd.DataFrame:
    """A per-disc gradings table in SPIDER's layout -> ``study_id``, ``ivd_label`` (int64) and the grading columns.

    Raises:
        MissingInputError: no such file. DataError: no ``Patient`` or ``IVD label`` column, a non-integer id.
    """
    path = Path(path)
    if not path.is_file():
        raise MissingInputError(f"gradings table {path} does not exist")
    table = pd.read_csv(path)
    missing = [c for c in ("Patient", "IVD label") if c not in table.columns]
    if missing:
        raise DataError(f"{path}: no column(s) {missing}; expected SPIDER's layout (Patient, IVD label, gradings)")
    for column in ("Patient", "IVD label"):
        values = pd.to_numeric(table[column], errors="coerce")
        bad = values.isna() | (values != values.round()) | (values < 0)
        if bad.any():
            line = int(np.flatnonzero(bad.to_numpy())[0]) + 2
            raise DataError(f"{path}, line {line}: {column} {table[column].iloc[line - 2]!r} is not a whole number")
        table[column] = values.astype(np.int64)
    table = table.rename(columns={"Patient": "study_id", "IVD label": "ivd_label"})
    if table.duplicated(["study_id", "ivd_label"]).any():
        rows = table.loc[table.duplicated(["study_id", "ivd_label"]), ["study_id", "ivd_label"]].values.tolist()
        raise DataError(f"{path}: (Patient, IVD label) listed more than once: {rows[:5]}")
    return table


def map_discs_to_ivd(discs: pd.DataFrame, graded: list[int]) -> tuple[np.ndarray, str, list[str]]:
    """IVD labels for discs ordered superior to inferior (``disc_points``), the decision and the anomalies found.

    Args:
        discs: :func:`radiospine.roi.mask_points.disc_points`' table (superior to inferior).
        graded: the study's graded IVD labels (empty when there are no gradings).

    Returns:
        ``(labels, decision, anomalies)``: ``labels[i]`` is disc ``i``'s IVD label.
    """
    graded = sorted({int(label) for label in graded})
    n = len(discs)
    bottom = 0 if 0 in graded else 1
    labels = bottom + np.arange(n)[::-1]
    decision = (f"bottom disc = IVD 0 (S1/S2: label 0 is graded, a disc below L5/S1); the {n - 1} above it IVD 1.."
                f"{n - 1}" if bottom == 0 else f"bottom disc = IVD 1 (L5/S1); the {n - 1} above it IVD 2..{n}")
    anomalies: list[str] = []
    if graded and graded != list(range(graded[0], graded[-1] + 1)):
        anomalies.append(f"graded IVD labels are not contiguous: {graded}")
    if graded and n != len(graded):
        anomalies.append(f"{n} disc components, {len(graded)} graded IVD labels")
    if graded:
        found = set(labels.tolist())
        without_disc = [label for label in graded if label not in found]
        ungraded = [int(label) for label in labels if label not in graded]
        if without_disc:
            anomalies.append(f"graded IVD label(s) {without_disc} have no disc in the mask")
        if ungraded:
            anomalies.append(f"disc(s) IVD {ungraded} ({', '.join(level_of_ivd_label(v) for v in ungraded)}) "
                             f"are not graded")
    if n:
        edge = [int(labels[i]) for i in np.flatnonzero(discs["touches_edge"].to_numpy())]
        if edge:
            anomalies.append(f"disc(s) IVD {edge} touch the image border (cut off?)")
        no_canal = [int(labels[i]) for i in np.flatnonzero(discs["canal_voxels"].to_numpy() == 0)]
        if no_canal:
            anomalies.append(f"no canal point at IVD {no_canal} (the canal mask does not reach the disc's plane)")
        share = float(discs["volume_mm3"].iloc[-1] / discs["volume_mm3"].median())
        if n > 2 and share < SMALL_BOTTOM_DISC:
            anomalies.append(f"bottom disc (IVD {int(labels[-1])}) is {share:.0%} of the median disc volume "
                             f"(collapsed, or a rudimentary sacral disc: check the count)")
    else:
        anomalies.append("no disc in the mask")
    return labels, decision, anomalies


# --- the import --------------------------------------------------------------------------------------------------

_OUTPUTS = ("train_images", "test_images", "train_series_descriptions.csv", "test_series_descriptions.csv",
            "train.csv", "train_label_coordinates.csv", IMPORT_FOLDER,
            *(task.labels_file for task in TASKS.values() if task.labels_file != "train.csv"))
#: Where each level's point is put: the canal point at the disc, or the disc centre.
POINTS = ("canal", "disc")


def _write_csv(frame: pd.DataFrame, path: Path) -> None:
    with atomic_path(path) as temporary:
        frame.to_csv(temporary, index=False, lineterminator="\n")


def import_volumes(volumes_dir: str | Path, out_dir: str | Path, *, gradings: str | Path | None = None,
                   split: str = "train", disc_label: int = 2, canal_label: int = 3, min_disc_mm3: float = 100.0,
                   overwrite: bool = False, previews: bool = False, points: str = "canal") -> dict:
    """Write the data folder described in the module docstring; returns the manifest (also written)."""
    if split not in ("train", "test"):
        raise UserError(f"unknown split {split!r}; expected 'train' or 'test'")
    if points not in POINTS:
        raise UserError(f"unknown points {points!r}; expected one of {', '.join(POINTS)}")
    volumes = find_volumes(volumes_dir)
    grades = load_gradings(gradings) if gradings is not None else None
    out_dir = prepare_output_folder(out_dir, _OUTPUTS, overwrite=overwrite)
    series_rows, coordinate_rows, disc_tables, checks = [], [], [], []
    for number, item in enumerate(volumes, start=1):
        volume = read_image_file(item.path, study_id=item.study_id, series_id=item.series_id)
        description = series_description(volume.affine, image_file_stem(item.path), item.path)
        write_volume_series(out_dir / f"{split}_images" / str(item.study_id) / str(item.series_id), volume.voxels,
                            volume.affine, study_id=item.study_id, series_id=item.series_id,
                            series_number=item.series_id % 100, description=description,
                            uid_root=f"radiospine-import-volumes/{item.path.name}")
        series_rows.append((item.study_id, item.series_id, description))
        log.info("%d/%d: study %s series %s (%s) from %s", number, len(volumes), item.study_id, item.series_id,
                 description, item.path.name)
        if item.mask_path is None:
            continue
        mask = read_image_file(item.mask_path, dtype=np.int32)
        if mask.shape != volume.shape or not np.allclose(mask.affine, volume.affine, atol=1e-3):
            raise DataError(f"{item.mask_path}: the mask's grid (shape {mask.shape}) is not its image's "
                            f"({item.path.name}, shape {volume.shape}); resample the mask onto the image first")
        discs = disc_points(mask.voxels, mask.affine, disc_label=disc_label, canal_label=canal_label,
                            min_disc_mm3=min_disc_mm3)
        graded = [] if grades is None else grades.loc[grades["study_id"] == item.study_id, "ivd_label"].tolist()
        labels, decision, anomalies = map_discs_to_ivd(discs, graded)
        if grades is not None and not graded:
            anomalies.insert(0, "the gradings table has no row for this study")
        discs.insert(0, "study_id", item.study_id)
        discs.insert(1, "series_id", item.series_id)
        discs.insert(3, "ivd_label", labels.astype(np.int64))
        discs.insert(4, "level", [level_of_ivd_label(v) for v in labels])
        discs.insert(5, "rsna_level", [rsna_level_of_ivd_label(v) or "" for v in labels])
        discs["centre_instance"] = np.round(discs["centre_slice"]).astype("Int64") + 1
        discs["canal_instance"] = np.round(discs["canal_slice"]).astype("Int64") + 1
        disc_tables.append(discs)
        if previews:
            draw_disc_points(volume.voxels, discs, out_dir / IMPORT_FOLDER / "previews"
                             / f"{item.study_id}_{item.series_id}.png", title=f"{item.path.name}")
        rsna = discs[(discs["rsna_level"] != "") & ((discs["canal_voxels"] > 0) | (points == "disc"))]
        for row in rsna.itertuples():
            # the point's row and column on the nearest slice (the instance it is marked on)
            point_slice, col, row_ = ((row.canal_slice, row.canal_col, row.canal_row) if points == "canal"
                                      else (row.centre_slice, row.centre_col, row.centre_row))
            slice_index = int(np.clip(round(point_slice), 0, volume.shape[0] - 1))
            coordinate_rows.append((item.study_id, item.series_id, slice_index + 1, vocab.SPINAL, row.rsna_level,
                                    float(col), float(row_)))
        checks.append(dict(
            study_id=item.study_id, series_id=item.series_id, disc_components=len(discs),
            graded_ivd_labels=" ".join(str(v) for v in sorted(graded)), decision=decision,
            levels_bottom_up=" ".join(level_of_ivd_label(v) for v in labels[::-1]),
            rsna_levels_with_points=len(rsna), anomalies="; ".join(anomalies)))
    _write_outputs(out_dir, split, series_rows, coordinate_rows, disc_tables, checks, grades)
    manifest = dict(
        volumes=str(Path(volumes_dir)), gradings=None if gradings is None else str(gradings), split=split,
        disc_label=disc_label, canal_label=canal_label, min_disc_mm3=min_disc_mm3, points=points,
        studies=len({v.study_id for v in volumes}), series=len(volumes), with_mask=sum(v.mask_path is not None
                                                                                      for v in volumes),
        discs=int(sum(len(t) for t in disc_tables)), canal_points=len(coordinate_rows),
        studies_with_anomalies=int(sum(bool(c["anomalies"]) for c in checks)))
    atomic_write_text(out_dir / IMPORT_FOLDER / "manifest.json", json.dumps(manifest, indent=2) + "\n")
    return manifest


def task_labels_of_discs(discs: pd.DataFrame, task: Task, study_ids: list[int]) -> pd.DataFrame:
    """Long task labels (:func:`radiospine.labels.load_task_labels`' columns) of ``study_ids`` from the importer's
    disc rows with their gradings: one row per study, target and level; ``<NA>`` where no graded disc is there.

    Raises:
        DataError: a grading value that is not one of the target's (naming the study, the level and the value).
    """
    rows = []
    graded = discs[discs["rsna_level"].astype(str) != ""] if len(discs) else discs
    by_key = {(int(r["study_id"]), str(r["rsna_level"])): r for _, r in graded.iterrows()}
    for study_id in study_ids:
        for target in task.targets:
            for level in task.levels:
                disc = by_key.get((int(study_id), level))
                value = None if disc is None else disc.get(target.source_column)
                grade = pd.NA
                if value is not None and not pd.isna(value):
                    try:
                        grade = target.grade_of_source(int(value))
                    except ValueError as exc:
                        raise DataError(f"gradings of study {study_id} at {vocab.level_to_human(level)}: {exc}; "
                                        f"fix the gradings table") from None
                rows.append((int(study_id), target.name, level, grade))
    return pd.DataFrame(rows, columns=["study_id", "target", "level", "grade"]).astype({"grade": "Int8"})


def draw_disc_points(voxels: np.ndarray, discs: pd.DataFrame, path: str | Path, *, title: str = "") -> Path:
    """A PNG of the slice through the canal with each disc's centre (+), canal point (x), level and IVD label.

    ``discs``: the importer's per-disc rows of one series (``disc_points`` columns plus ``level``, ``ivd_label``).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    canal_slices = discs["canal_slice"].dropna()
    index = int(round(float(canal_slices.median()))) if len(canal_slices) else voxels.shape[0] // 2
    index = int(np.clip(index, 0, voxels.shape[0] - 1))
    rows, cols = voxels.shape[1:]
    figure, axes = plt.subplots(figsize=(5.0, 5.0 * rows / cols + 0.4))
    low, high = np.percentile(voxels[index], [0.5, 99.5])
    axes.imshow(voxels[index], cmap="gray", vmin=low, vmax=high)
    axes.plot(discs["centre_col"], discs["centre_row"], "+", color="red", markersize=9, markeredgewidth=1.5)
    axes.plot(discs["canal_col"], discs["canal_row"], "x", color="lime", markersize=8, markeredgewidth=1.5)
    for row in discs.itertuples():
        axes.annotate(f"{row.level} (IVD {row.ivd_label})", (row.centre_col, row.centre_row), xytext=(-8, 4),
                      textcoords="offset points", ha="right", color="yellow", fontsize=7)
    axes.set_title(f"{title}: slice {index} (instance {index + 1})", fontsize=8)
    axes.axis("off")
    figure.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as temporary:
        figure.savefig(temporary, format="png", dpi=90)
    plt.close(figure)
    return path


def _write_outputs(out_dir: Path, split: str, series_rows: list, coordinate_rows: list,
                   disc_tables: list[pd.DataFrame], checks: list[dict], grades: pd.DataFrame | None) -> None:
    """The data folder's tables: series descriptions, labels and coordinates (module docstring), discs, checks."""
    _write_csv(pd.DataFrame(series_rows, columns=["study_id", "series_id", "series_description"]),
               out_dir / f"{split}_series_descriptions.csv")
    coordinates = pd.DataFrame(coordinate_rows, columns=["study_id", "series_id", "instance_number", "condition",
                                                         "level", "x", "y"])
    study_ids = sorted({row[0] for row in series_rows})
    if split == "train":
        labels = pd.DataFrame({"study_id": study_ids, **dict.fromkeys(vocab.TARGET_COLUMNS, "")})
        _write_csv(labels, out_dir / "train.csv")
        write_label_coordinates(coordinates, out_dir / "train_label_coordinates.csv")
    else:
        write_label_coordinates(coordinates, out_dir / IMPORT_FOLDER / "test_label_coordinates.csv")
    discs = pd.concat(disc_tables, ignore_index=True) if disc_tables else pd.DataFrame(
        columns=["study_id", "series_id", "disc_index", "ivd_label"])
    if grades is not None and len(discs):
        discs = discs.merge(grades, on=["study_id", "ivd_label"], how="left")
    _write_csv(discs, out_dir / IMPORT_FOLDER / "discs.csv")
    if grades is not None:
        for task in TASKS.values():
            if all(target.source_column in grades.columns for target in task.targets):
                path = out_dir / (task.labels_file if split == "train" else f"{IMPORT_FOLDER}/test_{task.name}.csv")
                write_task_labels(task_labels_of_discs(discs, task, study_ids), task, path)
    _write_csv(pd.DataFrame(checks, columns=["study_id", "series_id", "disc_components", "graded_ivd_labels",
                                             "decision", "levels_bottom_up", "rsna_levels_with_points",
                                             "anomalies"]),
               out_dir / IMPORT_FOLDER / "verification.csv")
