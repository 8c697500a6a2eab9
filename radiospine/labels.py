"""Labels: ``train.csv`` (wide) <-> long labels, and the label coordinates file.

The frames this module reads and writes
---------------------------------------
wide labels (as ``train.csv``)
    ``study_id`` int64, then the 25 :data:`vocab.TARGET_COLUMNS` (:data:`LABEL_DTYPE`: pandas' default
    string dtype) holding ``"Normal/Mild"``, ``"Moderate"``, ``"Severe"`` or NaN. A missing cell means
    "not graded": it is never read as Normal/Mild, and the metric does not score it.
long labels
    One row per (study, condition, level), 25 per study, study-major in ``TARGET_COLUMNS`` order:
    ``study_id`` int64, ``condition``, ``level`` (snake_case), ``severity`` (pandas nullable ``Int8``:
    0 normal_mild, 1 moderate, 2 severe, ``<NA>`` missing).
task labels (another task's table, :mod:`radiospine.task`, e.g. ``train_spider.csv``)
    ``study_id`` and one column ``<target>_<level>`` per :meth:`Task.target_columns` holding a grade as the
    target spells it (``"3"``, ``"0"``/``"1"``) or an empty cell; read as long task labels: ``study_id`` int64,
    ``target``, ``level``, ``grade`` (nullable ``Int8`` index ``0 .. K-1``, ``<NA>`` missing), one row per study,
    target and level, study-major in ``target_columns`` order (:data:`TASK_LABEL_COLUMNS`).
label coordinates (``train_label_coordinates.csv``)
    ``study_id``, ``series_id``, ``instance_number`` int64, ``condition``, ``level`` (snake_case),
    ``x``, ``y`` float64 (pixel column and row in that instance's image), plus ``base_condition`` and
    ``side`` (``"left"`` / ``"right"``, ``None`` for the spinal canal). The file spells condition and level
    the human way (``"Spinal Canal Stenosis"``, ``"L1/L2"``); :func:`write_label_coordinates` writes it back.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import numpy as np
import pandas as pd

from radiospine import vocab
from radiospine.artifacts import atomic_path
from radiospine.catalog import parse_id
from radiospine.csvio import read_csv_cells, summarize_items
from radiospine.errors import DataError
from radiospine.task import Task

#: The columns of ``train.csv``, in the real file's order.
TRAIN_LABEL_COLUMNS: tuple[str, ...] = ("study_id", *vocab.TARGET_COLUMNS)
#: The columns of long labels.
LONG_LABEL_COLUMNS: tuple[str, ...] = (*vocab.KEY_COLUMNS, "severity")
#: The columns of long task labels (:func:`load_task_labels`).
TASK_LABEL_COLUMNS: tuple[str, ...] = ("study_id", "target", "level", "grade")
#: The columns of ``train_label_coordinates.csv``, in the real file's order.
COORDINATE_COLUMNS: tuple[str, ...] = ("study_id", "series_id", "instance_number", "condition", "level", "x", "y")

#: The dtype of wide label columns: pandas' default for strings with NaN as missing (``str`` in pandas 3,
#: ``object`` before), also for a column whose cells are all missing.
LABEL_DTYPE = pd.Series(["Normal/Mild", np.nan]).dtype

_GRID_CONDITIONS, _GRID_LEVELS = (np.array(parts) for parts in zip(*map(vocab.split_target_column,
                                                                        vocab.TARGET_COLUMNS)))
#: Both spellings of a severity (``"Normal/Mild"`` and ``"normal_mild"``) -> its index.
_SEVERITY_CODES: dict[str, int] = {
    **{label: i for i, label in enumerate(vocab.SEVERITY_LABELS)},
    **{name: i for i, name in enumerate(vocab.SEVERITIES)},
}


def normalize_study_ids(study_ids: Iterable[object], *, what: str = "study ids") -> np.ndarray:
    """Study ids as a ``(n_studies,)`` int64 array in the given order; non-integers and repeats raise."""
    values = list(study_ids)
    ids = [parse_id(value, what="study_id", where=what) for value in values]
    array = np.asarray(ids, dtype=np.int64)
    unique, counts = np.unique(array, return_counts=True)
    if (counts > 1).any():
        raise DataError(f"{what}: study id(s) repeated: {summarize_items(unique[counts > 1].tolist())}")
    return array


def target_grid(study_ids: Iterable[object]) -> pd.DataFrame:
    """Every target of the given studies: ``study_id`` (int64), ``condition``, ``level``.

    25 rows per study, study-major in the order given, targets in :data:`vocab.TARGET_COLUMNS` order
    (the order of a submission's rows).
    """
    ids = normalize_study_ids(study_ids)
    n_targets = len(vocab.TARGET_COLUMNS)
    return pd.DataFrame({
        "study_id": np.repeat(ids, n_targets),
        "condition": np.tile(_GRID_CONDITIONS, len(ids)),
        "level": np.tile(_GRID_LEVELS, len(ids)),
    })


# --- train.csv --------------------------------------------------------------------------------------

def load_train_labels(path: str | Path) -> pd.DataFrame:
    """Read ``train.csv`` into wide labels (see the module docstring).

    CRLF line ends, a byte-order mark, padded cells and trailing all-empty rows read like the clean file.

    Raises:
        FileNotFoundError: no such file.
        ValueError: missing or unexpected columns, a study id that is not an integer (naming file, line and
            value), a study listed twice, or a cell that is not a known label (naming line, column, value).
    """
    path = Path(path)
    cells = read_csv_cells(path, TRAIN_LABEL_COLUMNS)
    study_ids = np.array([parse_id(value, what="study_id", where=f"{path}, line {line}")
                          for line, value in cells["study_id"].items()], dtype=np.int64)
    repeated_mask = pd.Series(study_ids).duplicated(keep=False).to_numpy()
    if repeated_mask.any():
        repeated = pd.Series(cells.index[repeated_mask], index=study_ids[repeated_mask]).groupby(level=0).agg(list)
        described = [f"{study_id} on lines {', '.join(map(str, lines))}" for study_id, lines in repeated.items()]
        raise DataError(f"{path}: study id(s) listed more than once: {'; '.join(described[:5])}"
                        f"{f' and {len(described) - 5} more' if len(described) > 5 else ''}; "
                        f"keep one row per study")
    unknown = sorted(
        (line, column_index, value)
        for column_index, column in enumerate(vocab.TARGET_COLUMNS)
        for line, value in cells[column].items()
        if value != "" and value not in vocab.SEVERITY_LABELS
    )
    if unknown:
        described = [f"line {line} column {vocab.TARGET_COLUMNS[column_index]}: {value!r}"
                     for line, column_index, value in unknown]
        raise DataError(f"{path}: {len(unknown)} cell(s) hold an unknown label ({'; '.join(described[:5])}"
                        f"{' ...' if len(described) > 5 else ''}); expected "
                        f"{', '.join(map(repr, vocab.SEVERITY_LABELS))} or an empty cell")
    labels = cells[list(vocab.TARGET_COLUMNS)].reset_index(drop=True)
    wide = labels.where(labels != "", np.nan).astype(object).astype(LABEL_DTYPE)
    wide.insert(0, "study_id", study_ids)
    return wide


def load_task_labels(path: str | Path, task: Task) -> pd.DataFrame:
    """Read a task's labels table into long task labels (see the module docstring).

    Raises:
        MissingInputError: no such file.
        DataError: missing or unexpected columns, a study id that is not an integer or listed twice, a cell that
            is not one of its target's grades (naming the line, column and value).
    """
    path = Path(path)
    cells = read_csv_cells(path, ("study_id", *task.target_columns))
    study_ids = np.array([parse_id(value, what="study_id", where=f"{path}, line {line}")
                          for line, value in cells["study_id"].items()], dtype=np.int64)
    if len(set(study_ids.tolist())) != len(study_ids):
        raise DataError(f"{path}: study id(s) listed more than once: "
                        f"{summarize_items(sorted(pd.Series(study_ids)[pd.Series(study_ids).duplicated()]))}; "
                        f"keep one row per study")
    columns, grades = [], []
    for target in task.targets:
        for level in task.levels:
            column = f"{target.name}_{level}"
            bad = [(line, value) for line, value in cells[column].items() if value and value not in target.grades]
            if bad:
                raise DataError(f"{path}, line {bad[0][0]} column {column}: {bad[0][1]!r} is not a {target.name} "
                                f"grade; expected one of {', '.join(target.grades)} or an empty cell")
            columns.append((target.name, level))
            grades.append([target.grade_index(value) if value else -1 for value in cells[column]])
    grade = np.asarray(grades, dtype=np.int64).T.ravel()  # (studies * columns,), study-major
    n_columns = len(columns)
    return pd.DataFrame({
        "study_id": np.repeat(study_ids, n_columns),
        "target": np.tile([name for name, _ in columns], len(study_ids)),
        "level": np.tile([level for _, level in columns], len(study_ids)),
        "grade": pd.array(np.where(grade < 0, pd.NA, grade).tolist(), dtype="Int8"),
    })


def write_task_labels(long: pd.DataFrame, task: Task, path: str | Path) -> Path:
    """Long task labels (any row order; absent keys are empty cells) -> the task's labels table at ``path``."""
    path = Path(path)
    cells = pd.DataFrame(index=pd.Index(sorted(set(long["study_id"].astype(np.int64))), name="study_id"),
                         columns=list(task.target_columns), dtype=object).fillna("")
    for row in long.itertuples(index=False):
        if not pd.isna(row.grade):
            cells.loc[int(row.study_id), f"{row.target}_{row.level}"] = task.target(row.target).grades[int(row.grade)]
    with atomic_path(path) as temporary:
        cells.reset_index().to_csv(temporary, index=False, lineterminator="\n")
    return path


def labels_to_long(wide: pd.DataFrame) -> pd.DataFrame:
    """Wide labels -> long labels (see the module docstring). Cells may use either severity spelling."""
    missing = [column for column in TRAIN_LABEL_COLUMNS if column not in wide.columns]
    if missing:
        raise ValueError(f"wide labels lack column(s) {summarize_items(missing)}")
    long = target_grid(wide["study_id"])
    cells = pd.Series(wide[list(vocab.TARGET_COLUMNS)].to_numpy(dtype=object).ravel())
    codes = cells.map(_SEVERITY_CODES)
    unknown = codes.isna() & cells.notna()
    if unknown.any():
        described = [f"study {long.study_id[i]} column {vocab.target_column(long.condition[i], long.level[i])}: "
                     f"{cells[i]!r}" for i in np.flatnonzero(unknown)]
        raise ValueError(f"{len(described)} label cell(s) are unknown ({'; '.join(described[:5])}); expected "
                         f"{', '.join(map(repr, vocab.SEVERITY_LABELS))} or missing")
    long["severity"] = codes.astype("Int8")
    return long


def long_to_wide(long: pd.DataFrame) -> pd.DataFrame:
    """Long labels -> wide labels: the inverse of :func:`labels_to_long`.

    Studies keep their order of first appearance; a (study, condition, level) with no row is missing.
    """
    missing = [column for column in LONG_LABEL_COLUMNS if column not in long.columns]
    if missing:
        raise ValueError(f"long labels lack column(s) {summarize_items(missing)}")
    unknown_conditions = sorted(set(long["condition"]) - set(vocab.CONDITIONS), key=str)
    unknown_levels = sorted(set(long["level"]) - set(vocab.LEVELS), key=str)
    if unknown_conditions or unknown_levels:
        raise ValueError(f"long labels hold unknown condition(s) {unknown_conditions} / level(s) {unknown_levels}")
    severity = pd.Series(long["severity"]).reset_index(drop=True)
    labelled = severity.notna()
    if not severity[labelled].isin(range(len(vocab.SEVERITIES))).all():
        bad = severity[labelled & ~severity.isin(range(len(vocab.SEVERITIES)))]
        raise ValueError(f"long labels hold severities {summarize_items(bad.unique().tolist())}; "
                         f"expected 0, 1, 2 or <NA>")
    keys = long[list(vocab.KEY_COLUMNS)].reset_index(drop=True)
    duplicated = keys.duplicated(keep=False)
    if duplicated.any():
        rows = keys[duplicated].drop_duplicates().itertuples(index=False)
        raise ValueError(f"long labels repeat (study, condition, level) {summarize_items(tuple(r) for r in rows)}")
    study_ids = normalize_study_ids(pd.unique(keys["study_id"]))
    study_position = pd.Index(study_ids).get_indexer(keys["study_id"].astype(np.int64))
    column_position = pd.Index(vocab.TARGET_COLUMNS).get_indexer(
        [vocab.target_column(c, lv) for c, lv in zip(keys["condition"], keys["level"])])
    grid = np.full((len(study_ids), len(vocab.TARGET_COLUMNS)), np.nan, dtype=object)
    label_names = np.array(vocab.SEVERITY_LABELS, dtype=object)
    rows = labelled.to_numpy()
    grid[study_position[rows], column_position[rows]] = label_names[severity[rows].to_numpy(dtype=np.int64)]
    wide = pd.DataFrame(grid, columns=list(vocab.TARGET_COLUMNS), dtype=object).astype(LABEL_DTYPE)
    wide.insert(0, "study_id", study_ids)
    return wide


# --- train_label_coordinates.csv ------------------------------------------------------------------

def _from_human(cells: pd.Series, convert, path: Path) -> np.ndarray:
    """Map each distinct human spelling once; the first unknown one raises naming its line."""
    mapping: dict[str, str] = {}
    for value in pd.unique(cells):
        try:
            mapping[value] = convert(value)
        except ValueError as exc:
            line = cells.index[cells == value][0]
            count = int((cells == value).sum())
            raise DataError(f"{path}, line {line}: {exc} ({count} row(s) hold this value)") from None
    return cells.map(mapping).to_numpy()


def _finite_floats(cells: pd.Series, column: str, path: Path) -> np.ndarray:
    values = pd.to_numeric(cells, errors="coerce").to_numpy(dtype=np.float64)
    bad = ~np.isfinite(values)
    if bad.any():
        lines = cells.index[bad]
        raise DataError(f"{path}, line {lines[0]}: {column} {cells[lines[0]]!r} is not a finite number "
                        f"({bad.sum()} such cell(s), lines {summarize_items(lines.tolist())})")
    return values


def load_label_coordinates(path: str | Path) -> pd.DataFrame:
    """Read ``train_label_coordinates.csv`` (see the module docstring for the frame).

    Raises:
        FileNotFoundError: no such file.
        ValueError: missing or unexpected columns, an id that is not an integer, an unknown condition or
            level, an x or y that is not a finite number; the message names the file, line and value.
    """
    path = Path(path)
    cells = read_csv_cells(path, COORDINATE_COLUMNS)
    frame = pd.DataFrame(index=range(len(cells)))
    for column in ("study_id", "series_id", "instance_number"):
        frame[column] = np.array([parse_id(value, what=column, where=f"{path}, line {line}")
                                  for line, value in cells[column].items()], dtype=np.int64)
    frame["condition"] = _from_human(cells["condition"], vocab.condition_from_human, path)
    frame["level"] = _from_human(cells["level"], vocab.level_from_human, path)
    for column in ("x", "y"):
        frame[column] = _finite_floats(cells[column], column, path)
    parts = {condition: vocab.split_condition(condition) for condition in vocab.CONDITIONS}
    frame["base_condition"] = frame["condition"].map(lambda condition: parts[condition].base)
    frame["side"] = pd.Series([parts[condition].side for condition in frame["condition"]], dtype=object)
    return frame


def write_label_coordinates(coordinates: pd.DataFrame, path: str | Path) -> Path:
    """Write coordinates (as read by :func:`load_label_coordinates`) in the real file's layout and spelling.

    Only :data:`COORDINATE_COLUMNS` are written, in that order; the write is atomic. Reading the file back
    gives an equal frame (floats are written with full precision).
    """
    missing = [column for column in COORDINATE_COLUMNS if column not in coordinates.columns]
    if missing:
        raise ValueError(f"coordinates lack column(s) {summarize_items(missing)}; cannot write {path}")
    out = pd.DataFrame({
        "study_id": coordinates["study_id"].astype(np.int64),
        "series_id": coordinates["series_id"].astype(np.int64),
        "instance_number": coordinates["instance_number"].astype(np.int64),
        "condition": [vocab.condition_to_human(c) for c in coordinates["condition"]],
        "level": [vocab.level_to_human(lv) for lv in coordinates["level"]],
        "x": coordinates["x"].astype(np.float64),
        "y": coordinates["y"].astype(np.float64),
    })
    if not np.isfinite(out[["x", "y"]].to_numpy()).all():
        raise ValueError(f"coordinates hold non-finite x or y; cannot write {path}")
    with atomic_path(path) as temporary:
        out.to_csv(temporary, index=False, lineterminator="\n")
    return Path(path)
