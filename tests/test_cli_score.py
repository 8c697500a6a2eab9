"""`radiospine score` and `radiospine validate-submission` through the CLI entry point."""

from __future__ import annotations

import json
import math
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

from radiospine import vocab
from radiospine.cli import main
from radiospine.labels import load_train_labels
from radiospine.metrics import score, weighted_prior_predictions
from radiospine.submission import build_submission, write_submission

N, M, S = vocab.SEVERITY_LABELS
PART_KEYS = {"spinal", "foraminal", "subarticular", "any_severe_spinal", "score"}


@pytest.fixture()
def data(tmp_path):
    """train.csv (CRLF) for studies 101, 102, 103 (one empty cell), a prior-baseline submission for them and
    test_series_descriptions.csv naming them."""
    rng = np.random.default_rng(5)
    cells = rng.choice([N, M, S], size=(3, 25), p=[0.6, 0.25, 0.15]).astype(object)
    cells[0, :5] = [N, M, S, N, N]
    cells[1, 7] = ""
    train = pd.DataFrame(cells, columns=list(vocab.TARGET_COLUMNS))
    train.insert(0, "study_id", [101, 102, 103])
    labels_path = tmp_path / "train.csv"
    train.to_csv(labels_path, index=False, lineterminator="\r\n")
    labels = load_train_labels(labels_path)
    predictions = weighted_prior_predictions(labels, [101, 102, 103], pseudo_count=1.0)
    submission = build_submission(predictions, [101, 102, 103])
    submission_path = write_submission(submission, tmp_path / "submission.csv")
    (tmp_path / "test_series_descriptions.csv").write_text(
        "study_id,series_id,series_description\n101,1,Sagittal T1\n102,2,Axial T2\n103,3,Sagittal T2/STIR\n")
    return SimpleNamespace(folder=tmp_path, labels=labels, submission=submission, labels_path=labels_path,
                           submission_path=submission_path)


def test_score_prints_parts_then_json_last(data, capsys):
    assert main(["score", "--labels", str(data.labels_path), "--pred", str(data.submission_path)]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    result = json.loads(lines[-1])
    assert set(result) == PART_KEYS
    expected = score(data.labels, data.submission).as_dict()
    assert result == pytest.approx(expected, rel=1e-9)
    assert all(math.isfinite(value) and value > 0 for value in result.values())
    assert any(line.strip().startswith("any_severe_spinal:") for line in lines[:-1])
    assert capsys.readouterr().err == ""  # every row sums to 1: no warning


def _unnormalised(data) -> pd.DataFrame:
    """The submission with study 101's five spinal rows (labels N, M, S, N, N) set to (.1, .1, 2): rows that
    sum to 2.2 with a raw severe above 1."""
    frame = data.submission.copy()
    spinal = frame.row_id.str.startswith("101_spinal_canal_stenosis")
    frame.loc[spinal, list(vocab.SEVERITIES)] = [0.1, 0.1, 2.0]
    return frame


def test_score_warns_about_rows_that_do_not_sum_to_one_and_scores_them_as_the_leaderboard(data, capsys):
    frame = _unnormalised(data)
    path = data.folder / "unnormalised.csv"
    frame.to_csv(path, index=False)
    assert main(["score", "--labels", str(data.labels_path), "--pred", str(path)]) == 0
    captured = capsys.readouterr()
    result = json.loads(captured.out.strip().splitlines()[-1])
    assert result == pytest.approx(score(data.labels, frame).as_dict(), rel=1e-9)
    # study 101 has a Severe spinal level: its raw severe 2.0 is clipped to 1 - eps, a loss of ~0 for it
    assert "radiospine score: warning: 5 row(s) of" in captured.err
    assert "do not sum to 1 (within 1e-06): '101_spinal_canal_stenosis_l1_l2', " in captured.err
    assert "'101_spinal_canal_stenosis_l5_s1' (5 in all)" in captured.err
    assert "as the leaderboard scores them" in captured.err

    assert main(["score", "--labels", str(data.labels_path), "--pred", str(path), "--renormalise"]) == 0
    captured = capsys.readouterr()
    tolerant = json.loads(captured.out.strip().splitlines()[-1])
    assert tolerant == pytest.approx(score(data.labels, frame, renormalise=True).as_dict(), rel=1e-9)
    assert tolerant["any_severe_spinal"] != pytest.approx(result["any_severe_spinal"], rel=1e-3)
    assert "5 row(s) of" in captured.err and "not the leaderboard's score" in captured.err


@pytest.mark.parametrize(("cell", "message"), [
    ("", "2 row(s) hold NaN or infinite probabilities"),
    ("nan", "2 row(s) hold NaN or infinite probabilities"),
    ("inf", "2 row(s) hold NaN or infinite probabilities"),
    ("-0.1", "2 row(s) hold negative probabilities"),
])
def test_score_refuses_nan_infinite_and_negative_values_naming_the_rows(data, capsys, cell, message):
    lines = data.submission_path.read_text().splitlines()
    bad_rows = ("102_left_subarticular_stenosis_l2_l3", "103_spinal_canal_stenosis_l1_l2")
    for i, line in enumerate(lines):
        if line.startswith(bad_rows):
            row_id, normal_mild, _, severe = line.split(",")
            lines[i] = ",".join([row_id, normal_mild, cell, severe])
    data.submission_path.write_text("\n".join(lines) + "\n")
    for extra in ([], ["--renormalise"]):
        assert main(["score", "--labels", str(data.labels_path), "--pred", str(data.submission_path), *extra]) == 2
        captured = capsys.readouterr()
        assert captured.out == ""
        assert captured.err.startswith("radiospine score: error: predictions: " + message)
        assert all(f"'{row_id}'" in captured.err for row_id in bad_rows)


def test_score_with_a_missing_row_fails_naming_it(data, capsys):
    lines = data.submission_path.read_text().splitlines()
    kept = [line for line in lines if not line.startswith("102_spinal_canal_stenosis_l3_l4,")]
    assert len(kept) == len(lines) - 1
    data.submission_path.write_text("\n".join(kept) + "\n")
    assert main(["score", "--labels", str(data.labels_path), "--pred", str(data.submission_path)]) == 2
    captured = capsys.readouterr()
    assert "'102_spinal_canal_stenosis_l3_l4'" in captured.err
    assert "no prediction" in captured.err
    assert captured.out == ""


def test_score_with_a_missing_labels_file_fails(data, capsys):
    assert main(["score", "--labels", str(data.folder / "nope.csv"), "--pred", str(data.submission_path)]) == 2
    assert "nope.csv" in capsys.readouterr().err


def test_validate_submission_ok_and_problems(data, capsys):
    assert main(["validate-submission", str(data.submission_path), "--data", str(data.folder)]) == 0
    out = capsys.readouterr().out
    assert out.startswith("OK") and "75 rows for 3 studies" in out

    broken = data.submission[data.submission.row_id != "103_left_subarticular_stenosis_l1_l2"].copy()
    broken.loc[0, "severe"] = 0.9
    broken_path = data.folder / "broken.csv"
    broken.to_csv(broken_path, index=False)
    assert main(["validate-submission", str(broken_path), "--data", str(data.folder), "--split", "test"]) == 1
    out = capsys.readouterr().out
    assert out.startswith(f"INVALID {broken_path}: 2 problem(s)")
    assert "'103_left_subarticular_stenosis_l1_l2'" in out
    assert "do not sum to 1" in out and "'101_spinal_canal_stenosis_l1_l2'" in out


def test_validate_submission_names_a_bad_descriptions_file(data, capsys):
    (data.folder / "test_series_descriptions.csv").write_text("study_id,series_id,series_description\nabc,1,Axial T2\n")
    assert main(["validate-submission", str(data.submission_path), "--data", str(data.folder)]) == 2
    err = capsys.readouterr().err
    assert "test_series_descriptions.csv" in err and "'abc'" in err
