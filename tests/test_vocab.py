"""Vocabulary: spellings, target columns and row ids."""

from __future__ import annotations

import pytest

from radiospine import vocab


def test_target_columns_are_the_25_of_train_csv() -> None:
    assert len(vocab.TARGET_COLUMNS) == 25
    assert vocab.TARGET_COLUMNS[0] == "spinal_canal_stenosis_l1_l2"
    assert vocab.TARGET_COLUMNS[-1] == "right_subarticular_stenosis_l5_s1"


@pytest.mark.parametrize("condition", vocab.CONDITIONS)
def test_condition_spellings_round_trip(condition: str) -> None:
    human = vocab.condition_to_human(condition)
    assert vocab.condition_from_human(human) == condition
    assert vocab.condition_from_human(f"  {human.upper()} ") == condition
    parts = vocab.split_condition(condition)
    assert vocab.join_condition(parts.base, parts.side) == condition


def test_human_spellings_match_the_competition_files() -> None:
    assert vocab.condition_to_human("spinal_canal_stenosis") == "Spinal Canal Stenosis"
    assert vocab.condition_to_human("left_neural_foraminal_narrowing") == "Left Neural Foraminal Narrowing"
    assert vocab.level_to_human("l5_s1") == "L5/S1"
    assert vocab.level_from_human("L4/L5") == "l4_l5"
    with pytest.raises(ValueError, match="unknown level"):
        vocab.level_from_human("L6/L7")
    with pytest.raises(ValueError, match="unknown condition"):
        vocab.condition_from_human("Spinal Stenosis")


def test_row_ids_round_trip_and_reject_malformed() -> None:
    row_id = vocab.make_row_id(4003253, "left_subarticular_stenosis", "l1_l2")
    assert row_id == "4003253_left_subarticular_stenosis_l1_l2"
    assert vocab.parse_row_id(row_id) == (4003253, "left_subarticular_stenosis", "l1_l2")
    for bad in ["abc_spinal_canal_stenosis_l1_l2", "12_spinal_canal_stenosis_l9_l9", "12", "../x_spinal"]:
        with pytest.raises(ValueError):
            vocab.parse_row_id(bad)
    assert len(set(vocab.study_row_ids(1))) == 25


def test_join_condition_validates_sides() -> None:
    with pytest.raises(ValueError, match="takes no side"):
        vocab.join_condition(vocab.SPINAL, "left")
    with pytest.raises(ValueError, match="needs a side"):
        vocab.join_condition(vocab.FORAMINAL, None)
    assert vocab.severity_index("Severe") == 2 and vocab.severity_index("moderate") == 1
    with pytest.raises(ValueError):
        vocab.severity_index("Bad")


def test_views_and_their_series() -> None:
    assert vocab.VIEWS == ("sagittal_t1", "sagittal_t2", "axial_t2")
    assert set(vocab.VIEW_OF_SERIES) == set(vocab.SERIES_DESCRIPTIONS)
    assert vocab.VIEW_OF_SERIES["Sagittal T2/STIR"] == "sagittal_t2"
    assert {vocab.VIEW_OF_SERIES[series]: series for series in vocab.SERIES_DESCRIPTIONS} == vocab.SERIES_OF_VIEW
    assert set(vocab.SERIES_OF_VIEW) == set(vocab.VIEWS)


def test_each_base_condition_is_graded_on_the_view_of_its_series() -> None:
    assert vocab.VIEW_OF_BASE_CONDITION == {"spinal_canal_stenosis": "sagittal_t2",
                                            "neural_foraminal_narrowing": "sagittal_t1",
                                            "subarticular_stenosis": "axial_t2"}


def test_key_columns_key_the_long_tables() -> None:
    from radiospine.config import FeaturesConfig
    from radiospine.labels import LONG_LABEL_COLUMNS

    assert vocab.KEY_COLUMNS == ("study_id", "condition", "level")
    assert (*vocab.KEY_COLUMNS, "severity") == LONG_LABEL_COLUMNS
    assert FeaturesConfig().views == vocab.VIEWS
