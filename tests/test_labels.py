"""train.csv (wide) <-> long labels, and the label coordinates file: parsing, validation, round trips."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from radiospine import vocab
from radiospine.labels import (
    COORDINATE_COLUMNS,
    LABEL_DTYPE,
    labels_to_long,
    load_label_coordinates,
    load_train_labels,
    long_to_wide,
    target_grid,
    write_label_coordinates,
)

N, M, S = vocab.SEVERITY_LABELS
HEADER = ",".join(("study_id", *vocab.TARGET_COLUMNS))


def label_line(study_id: object, cells: dict[int, str] | None = None, default: str = N) -> str:
    """A train.csv line: ``default`` everywhere except ``cells`` (target column index -> cell text)."""
    values = [default] * 25
    for index, value in (cells or {}).items():
        values[index] = value
    return ",".join([str(study_id), *values])


# study 4003253: spinal l4_l5 Severe, right subarticular l1_l2 empty; study 4646740: left foraminal l5_s1 Moderate
CLEAN_LINES = [
    HEADER,
    label_line(4003253, {3: S, 20: ""}),
    label_line(4646740, {9: M}),
    label_line(7143189, {}),
]


def write(path, lines, newline="\n", prefix=""):
    path.write_bytes((prefix + newline.join(lines) + newline).encode("utf-8"))
    return path


def test_load_train_labels_clean_file(tmp_path):
    wide = load_train_labels(write(tmp_path / "train.csv", CLEAN_LINES))
    assert list(wide.columns) == ["study_id", *vocab.TARGET_COLUMNS]
    assert wide["study_id"].dtype == np.int64
    assert wide["study_id"].tolist() == [4003253, 4646740, 7143189]
    assert (wide[list(vocab.TARGET_COLUMNS)].dtypes == LABEL_DTYPE).all()
    assert wide.loc[0, "spinal_canal_stenosis_l4_l5"] == S
    assert wide.loc[1, "left_neural_foraminal_narrowing_l5_s1"] == M
    # the empty cell stays missing: never "Normal/Mild"
    assert pd.isna(wide.loc[0, "right_subarticular_stenosis_l1_l2"])
    assert wide[list(vocab.TARGET_COLUMNS)].isna().sum().sum() == 1
    assert (wide.loc[2, list(vocab.TARGET_COLUMNS)] == N).all()


def test_crlf_bom_padding_and_trailing_empty_rows_parse_like_the_clean_file(tmp_path):
    clean = load_train_labels(write(tmp_path / "clean.csv", CLEAN_LINES))
    messy_lines = [*CLEAN_LINES[:2], " " + CLEAN_LINES[2].replace(M, f" {M} "), CLEAN_LINES[3],
                   "," * 25, "," * 25, ""]
    messy = load_train_labels(write(tmp_path / "messy.csv", messy_lines, newline="\r\n", prefix="\ufeff"))
    pd.testing.assert_frame_equal(messy, clean)


def test_a_column_with_only_empty_cells_is_missing_not_float(tmp_path):
    lines = [HEADER, label_line(1, {0: ""}), label_line(2, {0: ""})]
    wide = load_train_labels(write(tmp_path / "train.csv", lines))
    assert wide["spinal_canal_stenosis_l1_l2"].dtype == LABEL_DTYPE
    assert wide["spinal_canal_stenosis_l1_l2"].isna().all()


def test_missing_file_names_it(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"nothere.csv"):
        load_train_labels(tmp_path / "nothere.csv")


def test_missing_and_extra_columns_are_named(tmp_path):
    dropped = [",".join(line.split(",")[:-1]) for line in CLEAN_LINES]
    with pytest.raises(ValueError, match=r"lacks column\(s\) \['right_subarticular_stenosis_l5_s1'\]"):
        load_train_labels(write(tmp_path / "dropped.csv", dropped))
    extra = [CLEAN_LINES[0] + ",notes"] + [line + ",x" for line in CLEAN_LINES[1:]]
    with pytest.raises(ValueError, match=r"extra.csv has unexpected column\(s\) \['notes'\]"):
        load_train_labels(write(tmp_path / "extra.csv", extra))


def test_a_non_integer_study_id_names_file_line_and_value(tmp_path):
    lines = [HEADER, label_line(1), label_line("12a"), label_line(3)]
    with pytest.raises(ValueError, match=r"bad_id.csv, line 3: study_id '12a' is not"):
        load_train_labels(write(tmp_path / "bad_id.csv", lines))
    with pytest.raises(ValueError, match=r"line 2: study_id '1.5'"):
        load_train_labels(write(tmp_path / "float_id.csv", [HEADER, label_line("1.5")]))


def test_a_short_row_names_its_line_rather_than_reading_missing_labels(tmp_path):
    lines = [HEADER, label_line(1), label_line(2).rsplit(",", 3)[0]]
    with pytest.raises(ValueError, match=r"short.csv, line 3: 23 cells but the header has 26"):
        load_train_labels(write(tmp_path / "short.csv", lines))


def test_duplicate_study_ids_name_their_lines(tmp_path):
    lines = [HEADER, label_line(5), label_line(6), label_line(5)]
    with pytest.raises(ValueError, match=r"dup.csv: study id\(s\) listed more than once: 5 on lines 2, 4"):
        load_train_labels(write(tmp_path / "dup.csv", lines))


def test_unknown_label_names_the_cell(tmp_path):
    lines = [HEADER, label_line(1), label_line(2, {6: "Mild"})]
    with pytest.raises(ValueError, match=r"line 3 column left_neural_foraminal_narrowing_l2_l3: 'Mild'"):
        load_train_labels(write(tmp_path / "labels.csv", lines))


def test_labels_to_long_and_back(tmp_path):
    wide = load_train_labels(write(tmp_path / "train.csv", CLEAN_LINES))
    long = labels_to_long(wide)
    assert list(long.columns) == ["study_id", "condition", "level", "severity"]
    assert len(long) == 75
    assert long["severity"].dtype == pd.Int8Dtype()
    assert long["study_id"].dtype == np.int64
    first = long[long.study_id == 4003253].reset_index(drop=True)
    assert [vocab.target_column(c, lv) for c, lv in zip(first.condition, first.level)] == list(vocab.TARGET_COLUMNS)
    assert first.severity[3] == 2 and first.severity[0] == 0
    assert pd.isna(first.severity[20])
    assert long.severity.isna().sum() == 1
    pd.testing.assert_frame_equal(long_to_wide(long), wide)
    # row order does not matter; studies come in order of first appearance
    reversed_wide = wide.iloc[::-1].reset_index(drop=True)
    pd.testing.assert_frame_equal(long_to_wide(long.iloc[::-1]), reversed_wide)


def test_long_to_wide_fills_absent_rows_with_missing_and_rejects_bad_input():
    long = pd.DataFrame({"study_id": [9, 9], "condition": ["spinal_canal_stenosis"] * 2,
                         "level": ["l1_l2", "l2_l3"], "severity": pd.array([1, pd.NA], dtype="Int8")})
    wide = long_to_wide(long)
    assert wide.loc[0, "spinal_canal_stenosis_l1_l2"] == M
    assert wide[list(vocab.TARGET_COLUMNS)].isna().sum().sum() == 24
    with pytest.raises(ValueError, match="repeat"):
        long_to_wide(pd.concat([long, long.iloc[[0]]]))
    with pytest.raises(ValueError, match="severities"):
        long_to_wide(long.assign(severity=[3, 0]))
    with pytest.raises(ValueError, match="unknown condition"):
        long_to_wide(long.assign(condition="canal"))


def test_labels_to_long_rejects_an_unknown_cell():
    wide = pd.DataFrame([[1] + [N] * 24 + ["mild"]], columns=["study_id", *vocab.TARGET_COLUMNS])
    with pytest.raises(ValueError, match=r"study 1 column right_subarticular_stenosis_l5_s1: 'mild'"):
        labels_to_long(wide)


def test_target_grid_order_and_id_validation():
    grid = target_grid([7, 3])
    assert grid.study_id.tolist() == [7] * 25 + [3] * 25
    ids = [vocab.make_row_id(s, c, lv) for s, c, lv in zip(grid.study_id, grid.condition, grid.level)]
    assert ids == vocab.study_row_ids(7) + vocab.study_row_ids(3)
    with pytest.raises(ValueError, match="repeated"):
        target_grid([7, 7])
    with pytest.raises(ValueError, match="'x1'"):
        target_grid(["x1"])


# --- coordinates ------------------------------------------------------------------------------------

COORDINATE_LINES = [
    ",".join(COORDINATE_COLUMNS),
    "4003253,702807833,8,Spinal Canal Stenosis,L1/L2,322.8317757009346,227.9640718562874",
    "4003253,1054713880,4,Right Neural Foraminal Narrowing,L4/L5,187.96116504854368,251.7063106796117",
    "4003253,1054713880,13,Left Neural Foraminal Narrowing,L5/S1,180.0,275.5",
    "4003253,2448190387,28,Left Subarticular Stenosis,L4/L5,179.0,211.5",
]


def test_load_label_coordinates_maps_spelling_and_splits_the_condition(tmp_path):
    coordinates = load_label_coordinates(write(tmp_path / "coords.csv", COORDINATE_LINES))
    assert list(coordinates.columns) == [*COORDINATE_COLUMNS, "base_condition", "side"]
    assert coordinates.condition.tolist() == ["spinal_canal_stenosis", "right_neural_foraminal_narrowing",
                                              "left_neural_foraminal_narrowing", "left_subarticular_stenosis"]
    assert coordinates.level.tolist() == ["l1_l2", "l4_l5", "l5_s1", "l4_l5"]
    assert coordinates.base_condition.tolist() == [vocab.SPINAL, vocab.FORAMINAL, vocab.FORAMINAL,
                                                   vocab.SUBARTICULAR]
    assert coordinates.side.tolist() == [None, "right", "left", "left"]
    for column in ("study_id", "series_id", "instance_number"):
        assert coordinates[column].dtype == np.int64
    assert coordinates.x.dtype == np.float64
    assert coordinates.x[0] == 322.8317757009346 and coordinates.y[3] == 211.5


def test_coordinates_round_trip_exactly(tmp_path):
    source = write(tmp_path / "coords.csv", COORDINATE_LINES)
    coordinates = load_label_coordinates(source)
    written = write_label_coordinates(coordinates, tmp_path / "out" / "coords.csv")
    assert written.read_text() == source.read_text()  # same layout, spelling, float digits
    pd.testing.assert_frame_equal(load_label_coordinates(written), coordinates)
    messy = write(tmp_path / "messy.csv", [*COORDINATE_LINES, ",,,,,,"], newline="\r\n")
    pd.testing.assert_frame_equal(load_label_coordinates(messy), coordinates)
    assert not list((tmp_path / "out").glob(".*tmp"))


@pytest.mark.parametrize(("line", "message"), [
    ("4003253,abc,8,Spinal Canal Stenosis,L1/L2,1.0,2.0", r"line 3: series_id 'abc'"),
    ("4003253,7,-1,Spinal Canal Stenosis,L1/L2,1.0,2.0", r"line 3: instance_number '-1'"),
    ("4003253,7,8,Spinal Stenosis,L1/L2,1.0,2.0", r"line 3: unknown condition 'Spinal Stenosis'"),
    ("4003253,7,8,Spinal Canal Stenosis,L6/S1,1.0,2.0", r"line 3: unknown level 'L6/S1'"),
    ("4003253,7,8,Spinal Canal Stenosis,L1/L2,nan,2.0", r"line 3: x 'nan' is not a finite number"),
    ("4003253,7,8,Spinal Canal Stenosis,L1/L2,1.0,inf", r"line 3: y 'inf' is not a finite number"),
    ("4003253,7,8,Spinal Canal Stenosis,L1/L2,,2.0", r"line 3: x '' is not a finite number"),
])
def test_bad_coordinate_rows_name_file_line_and_value(tmp_path, line, message):
    path = write(tmp_path / "coords.csv", COORDINATE_LINES[:2] + [line])
    with pytest.raises(ValueError, match=message) as caught:
        load_label_coordinates(path)
    assert "coords.csv" in str(caught.value)


def test_write_label_coordinates_refuses_unknown_spelling(tmp_path):
    coordinates = load_label_coordinates(write(tmp_path / "coords.csv", COORDINATE_LINES))
    with pytest.raises(ValueError, match="unknown condition"):
        write_label_coordinates(coordinates.assign(condition="Spinal Canal Stenosis"), tmp_path / "x.csv")
    assert not (tmp_path / "x.csv").exists()
