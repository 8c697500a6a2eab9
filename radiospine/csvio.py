"""Reading the competition's small CSV files: lenient about how a copy was saved, strict about what it holds.

Real copies of the Kaggle CSVs come with CRLF line ends, a UTF-8 byte-order mark (spreadsheet exports),
cells padded with spaces and trailing rows of empty cells (``,,,,``). :func:`read_csv_cells` reads all of
these like the clean file and keeps every row's line number in the file so that errors can name it.
"""

from __future__ import annotations

import csv
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from radiospine.errors import DataError, MissingInputError


def summarize_items(items: Iterable[object], limit: int = 5) -> str:
    """``['a', 'b', ...]`` -> ``"'a', 'b', 'c', 'd', 'e' and 7 more (12 in all)"`` for error messages."""
    items = list(items)
    shown = ", ".join(repr(item) for item in items[:limit])
    if len(items) > limit:
        return f"{shown} and {len(items) - limit} more ({len(items)} in all)"
    return f"{shown} ({len(items)} in all)"


def read_csv_cells(path: str | Path, columns: Sequence[str] | None = None) -> pd.DataFrame:
    """Read a CSV as stripped strings, one row per non-empty data line, indexed by line number.

    Args:
        path: the CSV file (header on line 1).
        columns: the exact set of columns the file must have (any order); ``None`` accepts any header.

    Returns:
        A frame of ``str`` cells (empty cells are ``""``, never NaN) whose index is the 1-based line number
        on which each row starts in the file (the header is line 1). Rows whose cells are all empty
        (blank lines, ``,,,,``) are dropped. Columns keep the file's order.

    Raises:
        MissingInputError: the file does not exist.
        DataError: the file is empty or not readable as CSV text; duplicate, missing or unexpected columns;
            a row with more or fewer cells than the header (naming its line).
    """
    path = Path(path)
    if not path.is_file():
        raise MissingInputError(f"{path} does not exist (or is not a file); check the path")
    lines, rows = [], []
    try:
        with path.open(newline="", encoding="utf-8-sig") as stream:
            reader = csv.reader(stream)
            header = [name.strip() for name in next(reader, [])]
            line = reader.line_num + 1
            for row in reader:
                cells = [cell.strip() for cell in row]
                if any(cells):
                    if len(cells) != len(header):
                        raise DataError(f"{path}, line {line}: {len(cells)} cells but the header has "
                                        f"{len(header)}; fix or remove the line")
                    lines.append(line)
                    rows.append(cells)
                line = reader.line_num + 1
    except (UnicodeDecodeError, csv.Error) as exc:
        raise DataError(f"{path} is not a readable CSV text file: {exc}") from None
    if not header:
        raise DataError(f"{path} is empty; expected a header line and data rows")
    duplicated = sorted({name for name in header if header.count(name) > 1})
    if duplicated:
        raise DataError(f"{path}: column(s) {duplicated} appear more than once in the header")
    if columns is not None:
        missing = [name for name in columns if name not in header]
        extra = [name for name in header if name not in columns]
        if missing or extra:
            problems = []
            if missing:
                problems.append(f"lacks column(s) {missing}")
            if extra:
                problems.append(f"has unexpected column(s) {extra}")
            raise DataError(f"{path} {' and '.join(problems)}; expected exactly {','.join(columns)}")
    return pd.DataFrame(rows, columns=header, index=pd.Index(lines, dtype=np.int64, name="line"), dtype=object)
