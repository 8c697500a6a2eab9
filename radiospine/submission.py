"""Build, validate, read and write submissions.

Frames
------
long predictions
    ``study_id`` (int), ``condition``, ``level`` (snake_case), ``normal_mild``, ``moderate``, ``severe``:
    one row per (study, condition, level), probabilities finite and non-negative (rows need not sum to 1:
    they are renormalised when a submission is built).
submission
    ``row_id, normal_mild, moderate, severe`` (exactly these columns, in this order): 25 rows per study,
    study-major, targets in :data:`vocab.TARGET_COLUMNS` order, rows summing to 1.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd

from radiospine import vocab
from radiospine.artifacts import atomic_path
from radiospine.catalog import SPLITS, load_series_descriptions, parse_id
from radiospine.csvio import read_csv_cells, summarize_items
from radiospine.errors import SubmissionError
from radiospine.labels import normalize_study_ids, target_grid

log = logging.getLogger(__name__)

#: How far a submission row's sum may be from 1.
ROW_SUM_TOLERANCE = 1e-6
LONG_PREDICTION_COLUMNS: tuple[str, ...] = (*vocab.KEY_COLUMNS, *vocab.SEVERITIES)


def probability_problems(values: np.ndarray, row_names: Sequence[str], *,
                         row_sums: Literal["positive", "one", "any"] = "positive") -> list[str]:
    """Problems of a ``(n_rows, 3)`` probability array, each naming its rows by ``row_names``.

    Checks: every value finite, none negative, and each row's sum: more than 0 (``row_sums="positive"``, rows
    will be renormalised), 1 within :data:`ROW_SUM_TOLERANCE` (``"one"``) or anything (``"any"``).
    """
    values = np.asarray(values, dtype=np.float64)
    names = np.asarray(row_names, dtype=object)
    problems = []
    finite = np.isfinite(values).all(axis=1)
    if not finite.all():
        problems.append(f"{(~finite).sum()} row(s) hold NaN or infinite probabilities: "
                        f"{summarize_items(names[~finite])}")
    negative = finite & (values < 0).any(axis=1)
    if negative.any():
        problems.append(f"{negative.sum()} row(s) hold negative probabilities: {summarize_items(names[negative])}")
    checkable = finite & ~negative
    sums = values.sum(axis=1)
    if row_sums == "one":
        off = checkable & (np.abs(sums - 1.0) > ROW_SUM_TOLERANCE)
        if off.any():
            problems.append(f"{off.sum()} row(s) do not sum to 1 (within {ROW_SUM_TOLERANCE:g}): "
                            f"{summarize_items(names[off])}")
    elif row_sums == "positive":
        zero = checkable & (sums <= 0)
        if zero.any():
            problems.append(f"{zero.sum()} row(s) sum to zero: {summarize_items(names[zero])}")
    return problems


def normalise_probabilities(values: np.ndarray) -> np.ndarray:
    """Divide each row of a ``(n_rows, 3)`` array by its sum (rows must be finite, >= 0, sum > 0)."""
    values = np.asarray(values, dtype=np.float64)
    return values / values.sum(axis=1, keepdims=True)


def _require_columns(frame: pd.DataFrame, columns: Sequence[str], what: str) -> None:
    missing = [column for column in columns if column not in frame.columns]
    if missing:
        raise SubmissionError([f"lacks column(s) {missing}; expected {', '.join(columns)}"], what)


def _long_predictions(predictions: pd.DataFrame, what: str) -> pd.DataFrame:
    """The long-prediction columns of ``predictions`` with validated keys (int64 study ids, known
    conditions and levels, no key twice)."""
    _require_columns(predictions, LONG_PREDICTION_COLUMNS, what)
    frame = predictions[list(LONG_PREDICTION_COLUMNS)].reset_index(drop=True)
    ids = {value: parse_id(value, what="study_id", where=what) for value in pd.unique(frame["study_id"])}
    frame["study_id"] = frame["study_id"].map(ids).astype(np.int64)
    problems = []
    unknown_conditions = sorted(set(frame["condition"]) - set(vocab.CONDITIONS), key=str)
    if unknown_conditions:
        problems.append(f"unknown condition(s) {summarize_items(unknown_conditions)}")
    unknown_levels = sorted(set(frame["level"]) - set(vocab.LEVELS), key=str)
    if unknown_levels:
        problems.append(f"unknown level(s) {summarize_items(unknown_levels)}")
    if problems:
        raise SubmissionError(problems, what)
    duplicated = frame.duplicated(list(vocab.KEY_COLUMNS), keep=False)
    if duplicated.any():
        keys = frame.loc[duplicated, list(vocab.KEY_COLUMNS)].drop_duplicates()
        problem = f"{len(keys)} (study, condition, level) appear more than once: {summarize_items(_row_ids(keys))}"
        raise SubmissionError([problem], what)
    return frame


def _row_ids(keys: pd.DataFrame) -> list[str]:
    return [vocab.make_row_id(s, c, lv) for s, c, lv in zip(keys["study_id"], keys["condition"], keys["level"])]


def build_submission(predictions: pd.DataFrame, study_ids: Iterable[object]) -> pd.DataFrame:
    """Long predictions -> a submission for exactly ``study_ids`` (see the module docstring).

    Rows are renormalised to sum to 1. Predictions of other studies are left out (logged).

    Raises:
        SubmissionError: a (study, condition, level) of ``study_ids`` has no prediction (fill those from a
            prior first: :func:`fill_missing_with_prior`), a key appears twice, or probabilities are NaN,
            infinite, negative or sum to zero.
    """
    grid = target_grid(study_ids)
    frame = _long_predictions(predictions, "predictions")
    outside = ~frame["study_id"].isin(grid["study_id"])
    if outside.any():
        log.warning("build_submission: leaving out %d prediction rows of %d studies not asked for",
                    outside.sum(), frame.loc[outside, "study_id"].nunique())
    merged = grid.merge(frame, on=list(vocab.KEY_COLUMNS), how="left", indicator=True, validate="one_to_one")
    row_ids = np.asarray(_row_ids(merged), dtype=object)
    absent = (merged["_merge"] == "left_only").to_numpy()
    if absent.any():
        problem = (f"{absent.sum()} row(s) have no prediction: {summarize_items(row_ids[absent])}; "
                   f"fill them from a prior first (fill_missing_with_prior)")
        raise SubmissionError([problem], "predictions")
    values = merged[list(vocab.SEVERITIES)].to_numpy(dtype=np.float64)
    problems = probability_problems(values, row_ids)
    if problems:
        raise SubmissionError(problems, "predictions")
    submission = pd.DataFrame(normalise_probabilities(values), columns=list(vocab.SEVERITIES))
    submission.insert(0, "row_id", row_ids)
    return submission


def fill_missing_with_prior(predictions: pd.DataFrame, study_ids: Iterable[object],
                            prior: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Complete long predictions for ``study_ids`` with a prior wherever a row is absent.

    Args:
        predictions: long predictions (other columns are dropped; studies not in ``study_ids`` too).
        study_ids: the studies to complete.
        prior: ``condition, level, normal_mild, moderate, severe`` (one row per target, e.g.
            :func:`radiospine.metrics.weighted_prior`) or long predictions with ``study_id`` too
            (e.g. :func:`radiospine.metrics.weighted_prior_predictions`).

    Returns:
        ``(completed, filled)``: ``completed`` holds long predictions, 25 rows per study in
        :func:`radiospine.labels.target_grid` order; ``filled`` lists the ``study_id, condition, level``
        taken from the prior. Rows present in ``predictions`` are passed through unchanged (not validated
        or renormalised here: :func:`build_submission` does that).
    """
    grid = target_grid(study_ids)
    frame = _long_predictions(predictions, "predictions")
    prior_keys = list(vocab.KEY_COLUMNS if "study_id" in prior.columns else vocab.KEY_COLUMNS[1:])
    _require_columns(prior, [*prior_keys, *vocab.SEVERITIES], "prior")
    if prior.duplicated(prior_keys).any():
        raise SubmissionError([f"keys {prior_keys} appear more than once"], "prior")
    merged = grid.merge(frame, on=list(vocab.KEY_COLUMNS), how="left", indicator=True, validate="one_to_one")
    absent = (merged["_merge"] == "left_only").to_numpy()
    filled = grid.loc[absent].reset_index(drop=True)
    from_prior = filled.merge(prior[[*prior_keys, *vocab.SEVERITIES]], on=prior_keys, how="left", indicator=True)
    uncovered = (from_prior["_merge"] == "left_only").to_numpy()
    if uncovered.any():
        raise SubmissionError([f"the prior has no row for {summarize_items(_row_ids(filled.loc[uncovered]))}"],
                              "prior")
    merged.loc[absent, list(vocab.SEVERITIES)] = from_prior[list(vocab.SEVERITIES)].to_numpy(dtype=np.float64)
    if absent.any():
        log.info("filled %d of %d prediction rows (%d studies) from the prior", absent.sum(), len(grid),
                 filled["study_id"].nunique())
    completed = merged[list(LONG_PREDICTION_COLUMNS)].astype(dict.fromkeys(vocab.SEVERITIES, np.float64))
    return completed, filled


def _numeric_columns(frame: pd.DataFrame, row_names: np.ndarray) -> tuple[np.ndarray, list[str]]:
    """The severity columns as a ``(n_rows, 3)`` float array and problems naming cells that are text but
    not a number. Empty cells and ``NaN`` become NaN, left for :func:`probability_problems` to report."""
    columns, problems = [], []
    for name in vocab.SEVERITIES:
        raw = frame[name]
        values = pd.to_numeric(raw, errors="coerce")
        text = raw.astype(str).str.strip().str.lower()
        non_numeric = values.isna() & raw.notna() & ~text.isin(["", "nan"])
        if non_numeric.any():
            problems.append(f"column {name} holds {non_numeric.sum()} non-numeric value(s) "
                            f"{summarize_items(raw[non_numeric].tolist(), 3)} in rows "
                            f"{summarize_items(row_names[non_numeric.to_numpy()])}")
        columns.append(values.to_numpy(dtype=np.float64))
    return np.column_stack(columns), problems


def read_submission(path: str | Path) -> pd.DataFrame:
    """Read a submission CSV (exactly ``row_id,normal_mild,moderate,severe``) without judging its rows.

    Empty probability cells become NaN (for the caller's checks to report by row id).

    Raises:
        FileNotFoundError: no such file.
        ValueError / SubmissionError: other columns, or a cell that is not a number (naming line and value).
    """
    path = Path(path)
    cells = read_csv_cells(path, vocab.SUBMISSION_COLUMNS)
    line_names = np.array([f"line {line}" for line in cells.index], dtype=object)
    values, problems = _numeric_columns(cells, line_names)
    if problems:
        raise SubmissionError(problems, str(path))
    frame = pd.DataFrame(values, columns=list(vocab.SEVERITIES))
    frame.insert(0, "row_id", cells["row_id"].to_numpy(dtype=object))
    return frame


def validate_submission(frame_or_path: pd.DataFrame | str | Path,
                        expected_study_ids: Iterable[object]) -> pd.DataFrame:
    """Check a submission (a frame or a CSV file) against the studies it must cover.

    Checks: columns exactly ``row_id,normal_mild,moderate,severe``; every row id well formed, present once;
    no row missing for an expected study and no extra row; probabilities numeric, finite, non-negative,
    each row summing to 1 within :data:`ROW_SUM_TOLERANCE`.

    Returns:
        The submission (``row_id`` str, probabilities float64), index reset.

    Raises:
        SubmissionError: with ``problems`` listing everything found (rows named: first few and count).
        FileNotFoundError: a path that does not exist.
    """
    if isinstance(frame_or_path, (str, Path)):
        source = str(frame_or_path)
        frame = read_csv_cells(frame_or_path).reset_index(drop=True)
    else:
        source = "submission"
        frame = frame_or_path.reset_index(drop=True)
    expected = normalize_study_ids(expected_study_ids, what="expected study ids")
    problems = []
    columns = [str(column) for column in frame.columns]
    if columns != list(vocab.SUBMISSION_COLUMNS):
        problems.append(f"columns are {','.join(columns)}; expected exactly {','.join(vocab.SUBMISSION_COLUMNS)}")
    if "row_id" not in frame.columns:
        raise SubmissionError(problems, source)
    row_ids = frame["row_id"].astype(str).str.strip().to_numpy(dtype=object)
    well_formed = np.ones(len(row_ids), dtype=bool)
    for i, row_id in enumerate(row_ids):
        try:
            vocab.parse_row_id(row_id)
        except ValueError:
            well_formed[i] = False
    if not well_formed.all():
        problems.append(f"{(~well_formed).sum()} row id(s) are malformed: {summarize_items(row_ids[~well_formed])}")
    counts = pd.Series(row_ids).value_counts()
    repeated = counts[counts > 1]
    if len(repeated):
        problems.append(f"{len(repeated)} row id(s) appear more than once: {summarize_items(repeated.index)}")
    expected_ids = [row_id for study_id in expected for row_id in vocab.study_row_ids(study_id)]
    present = set(row_ids)
    missing = [row_id for row_id in expected_ids if row_id not in present]
    if missing:
        problems.append(f"{len(missing)} row(s) are missing: {summarize_items(missing)}")
    expected_set = set(expected_ids)
    extra = list(dict.fromkeys(row_id for row_id, ok in zip(row_ids, well_formed) if ok and row_id not in expected_set))
    if extra:
        problems.append(f"{len(extra)} row(s) are not expected (study not in the split?): {summarize_items(extra)}")
    values = None
    if all(name in frame.columns for name in vocab.SEVERITIES):
        values, numeric_problems = _numeric_columns(frame, row_ids)
        problems += numeric_problems
        problems += probability_problems(values, row_ids, row_sums="one")
    if problems:
        raise SubmissionError(problems, source)
    submission = pd.DataFrame(values, columns=list(vocab.SEVERITIES))
    submission.insert(0, "row_id", row_ids)
    return submission


def write_submission(frame: pd.DataFrame, path: str | Path,
                     expected_study_ids: Iterable[object] | None = None) -> Path:
    """Validate ``frame`` (against ``expected_study_ids``, by default the studies its row ids name) and
    write it to ``path`` atomically (a temporary file in the same folder, then ``os.replace``)."""
    if expected_study_ids is None:
        study_ids = []
        for row_id in frame["row_id"] if "row_id" in frame.columns else []:
            try:
                study_ids.append(vocab.parse_row_id(row_id)[0])
            except ValueError:
                continue  # validate_submission reports the malformed id
        expected_study_ids = list(dict.fromkeys(study_ids))
    submission = validate_submission(frame, expected_study_ids)
    with atomic_path(path) as temporary:
        submission.to_csv(temporary, index=False, lineterminator="\n")
    return Path(path)


def study_ids_of_split(data_dir: str | Path, split: str) -> np.ndarray:
    """The study ids a submission for ``split`` must cover: the ``study_id`` column of
    ``DATA/{split}_series_descriptions.csv`` (validated integers), in order of first appearance."""
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; expected one of {', '.join(SPLITS)}")
    descriptions = load_series_descriptions(Path(data_dir) / f"{split}_series_descriptions.csv")
    return pd.unique(descriptions["study_id"]).astype(np.int64)
