"""Building, completing, validating and writing submissions."""

from __future__ import annotations

import os

import numpy as np
import pandas as pd
import pytest

from radiospine import vocab
from radiospine.errors import SubmissionError
from radiospine.labels import target_grid
from radiospine.submission import (
    build_submission,
    fill_missing_with_prior,
    read_submission,
    study_ids_of_split,
    validate_submission,
    write_submission,
)

SEVERITIES = list(vocab.SEVERITIES)


def long_predictions(study_ids, seed=0, scale=1.0) -> pd.DataFrame:
    """Random long predictions (rows summing to ``scale``) for every target of ``study_ids``."""
    grid = target_grid(study_ids)
    values = np.random.default_rng(seed).dirichlet([2.0, 1.0, 1.0], size=len(grid)) * scale
    return pd.concat([grid, pd.DataFrame(values, columns=SEVERITIES)], axis=1)


def valid_submission(study_ids) -> pd.DataFrame:
    return build_submission(long_predictions(study_ids), study_ids)


# --- build_submission ---------------------------------------------------------------------------------

def test_build_submission_orders_renormalises_and_ignores_input_order():
    predictions = long_predictions([30, 10], scale=3.0)  # rows sum to 3
    submission = build_submission(predictions.sample(frac=1.0, random_state=1), [30, 10])
    assert list(submission.columns) == list(vocab.SUBMISSION_COLUMNS)
    assert submission.row_id.tolist() == vocab.study_row_ids(30) + vocab.study_row_ids(10)
    assert np.allclose(submission[SEVERITIES].sum(axis=1), 1.0, atol=1e-12)
    assert np.allclose(submission[SEVERITIES].to_numpy(), predictions[SEVERITIES].to_numpy() / 3.0)
    # only the studies asked for, in the order asked for
    only_ten = build_submission(predictions, [10])
    assert only_ten.row_id.tolist() == vocab.study_row_ids(10)


def test_build_submission_names_a_missing_row_and_points_to_the_prior():
    predictions = long_predictions([1, 2])
    gone = (predictions.study_id == 2) & (predictions.condition == "left_subarticular_stenosis") \
        & (predictions.level == "l4_l5")
    with pytest.raises(SubmissionError, match=r"1 row\(s\) have no prediction: '2_left_subarticular_stenosis_l4_l5'"
                                              r" \(1 in all\); fill them from a prior first"):
        build_submission(predictions[~gone], [1, 2])
    with pytest.raises(SubmissionError, match=r"'3_spinal_canal_stenosis_l1_l2'.* and 20 more \(25 in all\)"):
        build_submission(predictions, [1, 2, 3])


def test_build_submission_refuses_duplicates_bad_values_and_unknown_keys():
    predictions = long_predictions([1])
    with pytest.raises(SubmissionError, match=r"appear more than once: '1_spinal_canal_stenosis_l1_l2'"):
        build_submission(pd.concat([predictions, predictions.iloc[[0]]]), [1])
    broken = predictions.copy()
    broken.loc[4, "severe"] = np.nan
    broken.loc[6, SEVERITIES] = 0.0
    with pytest.raises(SubmissionError) as caught:
        build_submission(broken, [1])
    assert len(caught.value.problems) == 2
    assert "NaN or infinite probabilities: '1_spinal_canal_stenosis_l5_s1'" in caught.value.problems[0]
    assert "sum to zero: '1_left_neural_foraminal_narrowing_l2_l3'" in caught.value.problems[1]
    with pytest.raises(SubmissionError, match="unknown level"):
        build_submission(predictions.assign(level="L1/L2"), [1])
    with pytest.raises(SubmissionError, match=r"lacks column\(s\) \['severe'\]"):
        build_submission(predictions.drop(columns="severe"), [1])


# --- fill_missing_with_prior --------------------------------------------------------------------------

def test_fill_missing_with_a_per_target_prior():
    predictions = long_predictions([1, 2])
    kept = predictions[~((predictions.study_id == 2) & (predictions.condition == "spinal_canal_stenosis"))]
    prior = target_grid([0]).drop(columns="study_id")
    prior[SEVERITIES] = [0.7, 0.2, 0.1]
    completed, filled = fill_missing_with_prior(kept, [2, 1, 3], prior)
    assert completed.study_id.tolist() == [2] * 25 + [1] * 25 + [3] * 25
    assert list(filled.columns) == ["study_id", "condition", "level"]
    assert len(filled) == 5 + 25  # study 2's spinal rows and all of study 3
    assert set(filled.study_id) == {2, 3}
    from_prior = completed.merge(filled, on=["study_id", "condition", "level"])
    assert np.allclose(from_prior[SEVERITIES].to_numpy(), [0.7, 0.2, 0.1])
    # rows that were there pass through unchanged
    passed = completed.merge(kept, on=["study_id", "condition", "level"], suffixes=("", "_given"))
    assert len(passed) == 45
    assert np.array_equal(passed[SEVERITIES].to_numpy(), passed[[f"{s}_given" for s in SEVERITIES]].to_numpy())
    assert len(build_submission(completed, [2, 1, 3])) == 75


def test_fill_missing_with_a_per_study_prior_and_a_prior_that_lacks_rows():
    prior = long_predictions([5], seed=3)
    completed, filled = fill_missing_with_prior(long_predictions([4]).iloc[:0], [5], prior)
    assert len(filled) == 25
    assert np.array_equal(completed[SEVERITIES].to_numpy(), prior[SEVERITIES].to_numpy())
    with pytest.raises(SubmissionError, match=r"prior: the prior has no row for '6_spinal_canal_stenosis_l1_l2'"):
        fill_missing_with_prior(long_predictions([5]), [5, 6], prior)


# --- validate_submission ------------------------------------------------------------------------------

def test_a_valid_submission_passes_as_frame_and_as_crlf_file(tmp_path):
    submission = valid_submission([11, 12])
    result = validate_submission(submission, [12, 11])
    assert len(result) == 50
    path = tmp_path / "submission.csv"
    path.write_bytes(submission.to_csv(index=False, lineterminator="\r\n").encode())
    result = validate_submission(path, [11, 12])
    assert np.allclose(result[SEVERITIES].to_numpy(), submission[SEVERITIES].to_numpy())


def test_every_problem_is_listed():
    submission = valid_submission([11, 12])
    submission = submission[submission.row_id != "12_right_subarticular_stenosis_l5_s1"]  # missing
    extra = submission.iloc[[0]].assign(row_id="13_spinal_canal_stenosis_l1_l2")  # study not expected
    malformed = submission.iloc[[0]].assign(row_id="11_spinal_l1_l2")
    duplicate = submission.iloc[[1]]
    bad = pd.concat([submission, extra, malformed, duplicate], ignore_index=True)
    bad.loc[2, "moderate"] = -0.2
    bad.loc[3, "severe"] = np.inf
    bad.loc[5, "severe"] += 0.01  # row sums to 1.01
    with pytest.raises(SubmissionError) as caught:
        validate_submission(bad, [11, 12])
    problems = caught.value.problems
    expected_fragments = [
        "1 row id(s) are malformed: '11_spinal_l1_l2'",
        "1 row id(s) appear more than once: '11_spinal_canal_stenosis_l2_l3'",
        "1 row(s) are missing: '12_right_subarticular_stenosis_l5_s1'",
        "1 row(s) are not expected (study not in the split?): '13_spinal_canal_stenosis_l1_l2'",
        "1 row(s) hold NaN or infinite probabilities: '11_spinal_canal_stenosis_l4_l5'",
        "1 row(s) hold negative probabilities: '11_spinal_canal_stenosis_l3_l4'",
        "1 row(s) do not sum to 1 (within 1e-06): '11_left_neural_foraminal_narrowing_l1_l2'",
    ]
    assert len(problems) == len(expected_fragments)
    for fragment in expected_fragments:
        assert any(fragment in problem for problem in problems), (fragment, problems)


def test_columns_must_be_exact_and_values_numeric(tmp_path):
    submission = valid_submission([11])
    with pytest.raises(SubmissionError, match="columns are row_id,moderate,normal_mild,severe; expected exactly"):
        validate_submission(submission[["row_id", "moderate", "normal_mild", "severe"]], [11])
    with pytest.raises(SubmissionError, match="columns are row_id,normal_mild,moderate; expected exactly"):
        validate_submission(submission.drop(columns="severe"), [11])
    path = tmp_path / "text.csv"
    lines = submission.to_csv(index=False).splitlines()
    lines[3] = lines[3].rsplit(",", 1)[0] + ",high"
    lines[4] = lines[4].rsplit(",", 1)[0] + ","
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(SubmissionError) as caught:
        validate_submission(path, [11])
    text = str(caught.value)
    assert str(path) in text
    assert "column severe holds 1 non-numeric value(s) 'high' (1 in all) in rows '11_spinal_canal_stenosis_l3_l4'" \
        in text
    assert "2 row(s) hold NaN or infinite probabilities" in text
    with pytest.raises(SubmissionError, match=r"line 4"):
        read_submission(path)
    with pytest.raises(FileNotFoundError, match=r"absent.csv"):
        validate_submission(tmp_path / "absent.csv", [11])


# --- write_submission ---------------------------------------------------------------------------------

def test_write_submission_round_trips_and_validates_first(tmp_path):
    submission = valid_submission([21, 22])
    path = write_submission(submission, tmp_path / "out" / "submission.csv")
    assert path.read_text().splitlines()[0] == "row_id,normal_mild,moderate,severe"
    back = read_submission(path)
    pd.testing.assert_frame_equal(back, submission, check_dtype=False)
    assert back[SEVERITIES].to_numpy().tobytes() == submission[SEVERITIES].to_numpy().tobytes()
    incomplete = submission.iloc[:-1]
    with pytest.raises(SubmissionError, match="'22_right_subarticular_stenosis_l5_s1'"):
        write_submission(incomplete, path, expected_study_ids=[21, 22])
    # by default the studies named by its row ids: an incomplete study is still caught
    with pytest.raises(SubmissionError, match="1 row\\(s\\) are missing"):
        write_submission(incomplete, path)
    assert read_submission(path).equals(back)


def test_write_submission_is_atomic(tmp_path, monkeypatch):
    path = write_submission(valid_submission([21]), tmp_path / "submission.csv")
    before = path.read_bytes()

    def failing_replace(source, target):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", failing_replace)
    with pytest.raises(OSError, match="disk full"):
        write_submission(valid_submission([22]), path)
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["submission.csv"]  # no temp file left behind


# --- the studies a split must cover -------------------------------------------------------------------

def test_study_ids_of_split(tmp_path):
    (tmp_path / "test_series_descriptions.csv").write_text(
        "study_id,series_id,series_description\r\n44,1,Sagittal T1\r\n44,2,Axial T2\r\n7,3,Axial T2\r\n")
    assert study_ids_of_split(tmp_path, "test").tolist() == [44, 7]
    (tmp_path / "train_series_descriptions.csv").write_text(
        "study_id,series_id,series_description\n44,1,Sagittal T1\n4x,2,Axial T2\n")
    with pytest.raises(ValueError, match=r"train_series_descriptions.csv.*'4x'"):
        study_ids_of_split(tmp_path, "train")
    with pytest.raises(ValueError, match="unknown split"):
        study_ids_of_split(tmp_path, "valid")
