"""Feature-table column names: built and parsed in one place, round trip, malformed names rejected."""

from __future__ import annotations

import pytest

from radiospine.features.columns import (
    LEVEL_FEATURE,
    SIDE_FEATURE,
    Column,
    feature_column,
    is_extractor_name,
    is_status_column,
    key_column,
    parse_column,
    status_column,
)


@pytest.mark.parametrize(("text", "column"), [
    ("radiomics__sagittal_t2__original_glcm_Contrast",
     Column("feature", "radiomics", "sagittal_t2", "original_glcm_Contrast")),
    ("cnn__axial_t2__emb_007", Column("feature", "cnn", "axial_t2", "emb_007")),
    ("radiomics__axial_t2__odd__name", Column("feature", "radiomics", "axial_t2", "odd__name")),
    ("radiomics__status", Column("status", "radiomics", None, "status")),
    ("key__level", Column("key", "key", None, "level")),
    ("key__side_left", Column("key", "key", None, "side_left")),
])
def test_names_parse_into_their_parts_and_back(text, column):
    assert parse_column(text) == column and column.text == text


def test_builders_and_parser_agree():
    assert feature_column("radiomics", "sagittal_t2", "original_glcm_Contrast") == \
        "radiomics__sagittal_t2__original_glcm_Contrast"
    assert status_column("cnn") == "cnn__status" and is_status_column("cnn__status")
    assert (key_column("level"), key_column("side_left")) == (LEVEL_FEATURE, SIDE_FEATURE)
    for extractor, view, name in [("radiomics", "axial_t2", "n_slices"), ("cnn", "sagittal_t1", "emb_000"),
                                  ("radiomics", "axial_t2", "mean25d_wavelet-LH_glcm_Idm")]:
        assert parse_column(feature_column(extractor, view, name)) == Column("feature", extractor, view, name)
    assert not is_status_column("radiomics__axial_t2__status") and not is_status_column("key__status")


@pytest.mark.parametrize("text", ["plainname", "study_id", "cnn__emb_000", "__axial_t2__emb", "cnn____emb",
                                  "cnn__axial_t2__", "key__", "__status"])
def test_malformed_names_are_rejected_naming_the_forms(text):
    with pytest.raises(ValueError, match=rf"{text!r} is not a feature-table column name; expected "
                                         r"<extractor>__<view>__<name>, <extractor>__status or key__<name>"):
        parse_column(text)


@pytest.mark.parametrize(("build", "message"), [
    (lambda: feature_column("", "axial_t2", "x"), "cannot name a feature column"),
    (lambda: feature_column("cnn", "axial__t2", "x"), "without '__'"),
    (lambda: feature_column("key", "axial_t2", "x"), "not 'key'"),
    (lambda: status_column("key"), "cannot name the status column"),
    (lambda: key_column(""), "needs a name"),
])
def test_builders_refuse_names_that_would_not_parse_back(build, message):
    with pytest.raises(ValueError, match=message):
        build()


def test_extractor_names_are_snake_case_words_other_than_key():
    assert is_extractor_name("radiomics") and is_extractor_name("cnn2") and is_extractor_name("deep_net")
    assert not any(map(is_extractor_name, ["", "Radiomics", "a__b", "_a", "a_", "key", "a-b"]))
