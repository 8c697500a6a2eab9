"""The competition metric: hand-computed cases for every part, sklearn cross-checks, input errors, the prior."""

from __future__ import annotations

import inspect
import math

import numpy as np
import pandas as pd
import pytest
from scipy.special import xlogy
from sklearn.metrics import log_loss

from radiospine import vocab
from radiospine.errors import SubmissionError
from radiospine.labels import labels_to_long
from radiospine.metrics import (
    CLIP_EPSILON,
    PART_NAMES,
    MetricResult,
    score,
    unnormalised_rows,
    weighted_log_loss,
    weighted_prior,
    weighted_prior_predictions,
)

N, M, S = vocab.SEVERITY_LABELS
LN2 = math.log(2.0)
SPINAL, LEFT_FORAMEN, RIGHT_FORAMEN, LEFT_RECESS, RIGHT_RECESS = vocab.CONDITIONS


def wide_labels(studies: dict[int, dict[str, list[str | None]]]) -> pd.DataFrame:
    """``{study_id: {condition: [5 labels, l1_l2 .. l5_s1]}}``; conditions left out are all Normal/Mild."""
    rows = []
    for study_id, by_condition in studies.items():
        row = {"study_id": study_id}
        for condition in vocab.CONDITIONS:
            for level, label in zip(vocab.LEVELS, by_condition.get(condition, [N] * 5)):
                row[vocab.target_column(condition, level)] = label
        rows.append(row)
    return pd.DataFrame(rows)


def submission_frame(study_ids, probabilities_for) -> pd.DataFrame:
    """A submission whose row (study, condition, level) holds ``probabilities_for(study, condition, level)``."""
    rows = [
        (vocab.make_row_id(s, c, lv), *probabilities_for(s, c, lv))
        for s in study_ids for c in vocab.CONDITIONS for lv in vocab.LEVELS
    ]
    return pd.DataFrame(rows, columns=list(vocab.SUBMISSION_COLUMNS))


def sklearn_log_loss(y_true, probabilities, weights, labels) -> float:
    """sklearn's weighted log loss (its argument was renamed ``y_proba`` in 1.9)."""
    if "y_proba" in inspect.signature(log_loss).parameters:
        return log_loss(y_true, y_proba=probabilities, sample_weight=weights, labels=labels)
    return log_loss(y_true, probabilities, sample_weight=weights, labels=labels)


# --- the hand-computed case --------------------------------------------------------------------------

# Study 1 and study 2; None = missing label (not scored).
HAND_LABELS = {
    1: {
        SPINAL: [N, N, M, S, N],
        LEFT_FORAMEN: [N, N, N, M, S],
        RIGHT_FORAMEN: [N, N, N, N, N],
        LEFT_RECESS: [N, N, M, M, S],
        RIGHT_RECESS: [N, N, N, M, None],
    },
    2: {
        SPINAL: [N, N, N, N, None],
        RIGHT_FORAMEN: [N, N, N, N, None],
    },
}


def hand_probabilities(study_id, condition, level):
    if condition == SPINAL:
        # study 2's l5_s1 is unlabelled: its severe 0.8 must NOT enter any_severe_spinal.
        return (0.1, 0.1, 0.8) if (study_id, level) == (2, "l5_s1") else (0.5, 0.25, 0.25)
    if "foraminal" in condition:
        return (0.5, 0.25, 0.25)
    return (0.25, 0.25, 0.5)


# spinal rows: 7 Normal (w1, p .5) + 1 Moderate (w2, p .25) + 1 Severe (w4, p .25)
#   = (7 ln2 + 2*2ln2 + 4*2ln2) / (7 + 2 + 4) = 19 ln2 / 13
HAND_SPINAL = 19 * LN2 / 13
# foraminal (left+right pooled): Normal rows: study 1 left 3 + right 5, study 2 left 5 + right 4 = 17 (w1, p .5);
#   1 Moderate (w2, p .25), 1 Severe (w4, p .25): (17 ln2 + 4 ln2 + 8 ln2) / (17 + 2 + 4) = 29 ln2 / 23
HAND_FORAMINAL = 29 * LN2 / 23
# subarticular, predictions (.25, .25, .5): Normal 2 + 3 + 10 = 15 (w1, -ln .25 = 2 ln2) -> 30 ln2;
#   Moderate 2 + 1 = 3 (w2, 2 ln2) -> 12 ln2; Severe 1 (w4, -ln .5 = ln2) -> 4 ln2: 46 ln2 / (15 + 6 + 4)
HAND_SUBARTICULAR = 46 * LN2 / 25
# any_severe_spinal: study 1 label 1, prediction max severe = .25, weight 4 -> 4 * 2 ln2 = 8 ln2;
#   study 2 label 0, prediction max severe over its 4 labelled rows = .25, weight 1 -> -ln .75 = ln(4/3)
HAND_ANY_SEVERE = (8 * LN2 + math.log(4 / 3)) / 5


def test_hand_computed_parts_with_a_missing_label():
    result = score(wide_labels(HAND_LABELS), submission_frame([1, 2], hand_probabilities))
    assert isinstance(result, MetricResult)
    assert result.spinal == pytest.approx(HAND_SPINAL, rel=1e-12)  # 1.013107...
    assert result.foraminal == pytest.approx(HAND_FORAMINAL, rel=1e-12)  # 0.873959...
    assert result.subarticular == pytest.approx(HAND_SUBARTICULAR, rel=1e-12)  # 1.275329...
    assert result.any_severe_spinal == pytest.approx(HAND_ANY_SEVERE, rel=1e-12)  # 1.166572...
    mean = (HAND_SPINAL + HAND_FORAMINAL + HAND_SUBARTICULAR + HAND_ANY_SEVERE) / 4
    assert result.score == pytest.approx(mean, rel=1e-12)
    assert result.as_dict() == {
        "spinal": result.spinal, "foraminal": result.foraminal, "subarticular": result.subarticular,
        "any_severe_spinal": result.any_severe_spinal, "score": result.score,
    }


def test_long_labels_and_long_predictions_score_like_wide_and_row_ids():
    wide = wide_labels(HAND_LABELS)
    submission = submission_frame([1, 2], hand_probabilities)
    long_predictions = pd.DataFrame([
        (s, c, lv, *hand_probabilities(s, c, lv))
        for s in (2, 1) for c in vocab.CONDITIONS for lv in vocab.LEVELS
    ], columns=["study_id", "condition", "level", *vocab.SEVERITIES])
    expected = score(wide, submission)
    assert score(labels_to_long(wide), submission) == expected
    assert score(wide, long_predictions).as_dict() == pytest.approx(expected.as_dict(), rel=1e-12)


def test_a_normalised_file_scores_the_same_with_and_without_renormalising():
    labels, submission = wide_labels(HAND_LABELS), submission_frame([1, 2], hand_probabilities)
    renormalised = score(labels, submission, renormalise=True)
    assert renormalised.as_dict() == pytest.approx(score(labels, submission).as_dict(), rel=1e-12)
    assert renormalised.any_severe_spinal == pytest.approx(HAND_ANY_SEVERE, rel=1e-12)
    assert unnormalised_rows(submission) == []


def test_any_severe_spinal_takes_the_raw_severe_of_unnormalised_rows():
    labels = wide_labels(HAND_LABELS)

    def low_sums(study_id, condition, level):  # labelled spinal rows sum to .8
        if condition == SPINAL and (study_id, level) != (2, "l5_s1"):
            return (0.2, 0.2, 0.4)
        return hand_probabilities(study_id, condition, level)

    submission = submission_frame([1, 2], low_sums)
    assert len(unnormalised_rows(submission)) == 9
    result = score(labels, submission)
    # spinal: log_loss renormalises each row inside the part: (.25, .25, .5), as 22 ln2 / 13 below
    assert result.spinal == pytest.approx(22 * LN2 / 13, rel=1e-12)
    # any_severe: the RAW max severe .4: study 1 (label 1, w4) -ln .4; study 2 (label 0, w1) -ln .6
    #   (4 ln 2.5 + ln(5/3)) / 5 = 0.835202...
    assert result.any_severe_spinal == pytest.approx((4 * math.log(2.5) + math.log(5 / 3)) / 5, rel=1e-12)
    assert result.foraminal == pytest.approx(HAND_FORAMINAL, rel=1e-12)
    assert result.subarticular == pytest.approx(HAND_SUBARTICULAR, rel=1e-12)
    # --renormalise: severe .5 -> study 1: 4 * ln2, study 2: -ln .5 = ln2 -> 5 ln2 / 5 = ln2 (the old rule)
    tolerant = score(labels, submission, renormalise=True)
    assert tolerant.any_severe_spinal == pytest.approx(LN2, rel=1e-12)
    assert tolerant.spinal == pytest.approx(result.spinal, rel=1e-12)


def test_values_above_one_are_clipped_before_the_row_is_renormalised():
    labels = wide_labels(HAND_LABELS)
    tripled = submission_frame([1, 2], hand_probabilities)
    tripled[list(vocab.SEVERITIES)] *= 3.0  # (1.5, .75, .75) and (.75, .75, 1.5)
    result = score(labels, tripled)
    # (1.5, .75, .75) -> clipped (1 - eps, .75, .75) -> /2.5: (.4, .3, .3), not (.5, .25, .25)
    # spinal: 7 Normal (w1) -ln .4 + Moderate (w2) and Severe (w4) -ln .3: (7 ln 2.5 + 6 ln(10/3)) / 13
    assert result.spinal == pytest.approx((7 * math.log(2.5) + 6 * math.log(10 / 3)) / 13, rel=1e-12)
    # foraminal: 17 Normal, 1 Moderate, 1 Severe: (17 ln 2.5 + 6 ln(10/3)) / 23
    assert result.foraminal == pytest.approx((17 * math.log(2.5) + 6 * math.log(10 / 3)) / 23, rel=1e-12)
    # subarticular (.75, .75, 1.5) -> (.3, .3, .4): 15 Normal (w1) + 3 Moderate (w2) -ln .3, 1 Severe (w4) -ln .4
    assert result.subarticular == pytest.approx((21 * math.log(10 / 3) + 4 * math.log(2.5)) / 25, rel=1e-12)
    # any_severe: raw max severe .75: study 1 (label 1, w4) -ln .75, study 2 (label 0, w1) -ln .25
    assert result.any_severe_spinal == pytest.approx((4 * math.log(4 / 3) + 2 * LN2) / 5, rel=1e-12)
    # --renormalise: (1.5, .75, .75) / 3 -> the normalised file's scores
    tolerant = score(labels, tripled, renormalise=True)
    hand = (HAND_SPINAL, HAND_FORAMINAL, HAND_SUBARTICULAR, HAND_ANY_SEVERE)
    assert [getattr(tolerant, name) for name in PART_NAMES] == pytest.approx(hand, rel=1e-12)


def test_a_severe_above_one_is_clipped_in_any_severe_spinal():
    labels = wide_labels(HAND_LABELS)

    def severe_two(study_id, condition, level):  # the case: a raw severe above 1
        if condition == SPINAL and level == "l1_l2":
            return (0.1, 0.1, 2.0)
        return hand_probabilities(study_id, condition, level)

    result = score(labels, submission_frame([1, 2], severe_two))
    # max severe 2.0 -> clipped to 1 - eps: study 1 (label 1, w4) -ln(1 - eps) ~ 0; study 2 (label 0, w1)
    #   -ln(eps) = 36.043653: (0 + 36.043653) / 5 = 7.208731
    assert result.any_severe_spinal == pytest.approx(-math.log(CLIP_EPSILON) / 5, rel=1e-12)
    # --renormalise: (.0455, .0455, .909): study 1 -ln .909 (w4), study 2 -ln(1 - .909) = ln 11 (w1)
    tolerant = score(labels, submission_frame([1, 2], severe_two), renormalise=True)
    assert tolerant.any_severe_spinal == pytest.approx((4 * math.log(2.2 / 2.0) + math.log(11)) / 5, rel=1e-12)


def test_a_row_of_zeros_is_scored_as_a_third_each_and_refused_when_renormalising():
    labels = wide_labels(HAND_LABELS)
    submission = submission_frame([1, 2], hand_probabilities)
    zero_row = "1_spinal_canal_stenosis_l1_l2"  # Normal/Mild, weight 1
    submission.loc[submission.row_id == zero_row, list(vocab.SEVERITIES)] = 0.0
    assert unnormalised_rows(submission) == [zero_row]
    result = score(labels, submission)
    # (0, 0, 0) -> clipped (eps, eps, eps) -> (1/3, 1/3, 1/3): that row's ln2 becomes ln3
    assert result.spinal == pytest.approx((18 * LN2 + math.log(3)) / 13, rel=1e-12)
    assert result.any_severe_spinal == pytest.approx(HAND_ANY_SEVERE, rel=1e-12)  # max severe still .25
    with pytest.raises(SubmissionError, match=rf"1 row\(s\) sum to zero: '{zero_row}'"):
        score(labels, submission, renormalise=True)


def test_fold_without_a_severe_spinal_case():
    labels = wide_labels({7: {SPINAL: [N, M, N, N, N]}, 8: {}})

    def probabilities(study_id, condition, level):
        return (0.6, 0.2, 0.2)

    result = score(labels, submission_frame([7, 8], probabilities))
    # any_severe labels are all 0 (sklearn's log_loss would refuse one class without `labels`):
    # study 7 weight 2 (a Moderate), study 8 weight 1; both -ln(1 - .2) -> (2 + 1) * -ln .8 / 3
    assert result.any_severe_spinal == pytest.approx(-math.log(0.8), rel=1e-12)  # 0.223144
    # spinal: 9 Normal rows (w1, -ln .6) + 1 Moderate (w2, -ln .2) -> (9 ln(1/.6) + 2 ln 5) / 11
    assert result.spinal == pytest.approx((9 * -math.log(0.6) + 2 * math.log(5)) / 11, rel=1e-12)
    # all foraminal and subarticular rows Normal: -ln .6
    assert result.foraminal == pytest.approx(-math.log(0.6), rel=1e-12)
    assert result.subarticular == pytest.approx(-math.log(0.6), rel=1e-12)


def test_perfect_prediction_scores_about_zero_and_clipping_bounds_a_sure_miss():
    labels = wide_labels(HAND_LABELS)
    long = labels_to_long(labels)
    truth = {(r.study_id, r.condition, r.level): r.severity for r in long.itertuples()}

    def one_hot(study_id, condition, level):
        severity = truth[(study_id, condition, level)]
        return (1 / 3,) * 3 if pd.isna(severity) else tuple(float(k == severity) for k in range(3))

    perfect = score(labels, submission_frame([1, 2], one_hot))
    # every row (1, 0, 0) is clipped to (1 - eps, eps, eps) and renormalised: -ln((1 - eps) / (1 + eps)) ~ 2 eps
    for value in perfect.as_dict().values():
        assert 0.0 < value < 1e-14

    def sure_miss(study_id, condition, level):  # study 2's spinal l1_l2 (Normal) gets p = 0 -> clipped to eps
        if (study_id, condition, level) == (2, SPINAL, "l1_l2"):
            return (0.0, 1.0, 0.0)
        return one_hot(study_id, condition, level)

    # spinal: weight 1 * -ln(eps / (1 + eps)) = 36.043653 over the 13 spinal weight units (others ~0)
    missed = score(labels, submission_frame([1, 2], sure_miss))
    assert missed.spinal == pytest.approx(-math.log(2.220446049250313e-16) / 13, rel=1e-9)  # 2.772589...
    assert missed.foraminal < 1e-14


def test_uniform_prediction_on_a_balanced_toy_set():
    # study 1 all Normal/Mild, study 2 all Moderate, study 3 all Severe: each class equally often
    labels = wide_labels({1: {c: [N] * 5 for c in vocab.CONDITIONS},
                          2: {c: [M] * 5 for c in vocab.CONDITIONS},
                          3: {c: [S] * 5 for c in vocab.CONDITIONS}})
    result = score(labels, submission_frame([1, 2, 3], lambda *key: (1 / 3, 1 / 3, 1 / 3)))
    # condition parts: every p_true = 1/3 whatever the weights -> ln 3 = 1.098612
    for part in (result.spinal, result.foraminal, result.subarticular):
        assert part == pytest.approx(math.log(3), rel=1e-12)
    # any_severe: pred 1/3; study 1 (label 0, w1) and 2 (label 0, w2): -ln(2/3); study 3 (label 1, w4): ln 3
    #   (3 ln 1.5 + 4 ln 3) / 7 = 0.801549...
    any_severe = (3 * math.log(1.5) + 4 * math.log(3)) / 7
    assert result.any_severe_spinal == pytest.approx(any_severe, rel=1e-12)
    assert result.score == pytest.approx((3 * math.log(3) + any_severe) / 4, rel=1e-12)  # 1.024346...


def random_case(seed: int, scale: tuple[float, float]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Wide labels of 40 studies (8% missing) and a submission whose rows are Dirichlet draws times a factor
    drawn from ``scale`` ((1, 1): rows that sum to 1)."""
    rng = np.random.default_rng(seed)
    study_ids = rng.choice(10**8, size=40, replace=False) + 1
    cells = rng.choice(np.array([N, M, S, None], dtype=object), size=(40, 25), p=[0.6, 0.2, 0.12, 0.08])
    labels = pd.DataFrame(cells, columns=list(vocab.TARGET_COLUMNS))
    labels.insert(0, "study_id", study_ids)
    raw = rng.dirichlet([1.0, 1.0, 1.0], size=40 * 25) * rng.uniform(*scale, size=(40 * 25, 1))
    submission = pd.DataFrame(raw, columns=list(vocab.SEVERITIES))
    submission.insert(0, "row_id", [rid for s in study_ids for rid in vocab.study_row_ids(s)])
    return labels, submission


def test_parts_match_sklearn_log_loss_on_random_normalised_rows():
    labels, submission = random_case(7, (1.0, 1.0))
    result = score(labels, submission)

    long = labels_to_long(labels)
    long["row_id"] = [vocab.make_row_id(s, c, lv) for s, c, lv in zip(long.study_id, long.condition, long.level)]
    scored = long[long.severity.notna()].merge(submission, on="row_id")
    probabilities = scored[list(vocab.SEVERITIES)].to_numpy()
    y = scored.severity.to_numpy(dtype=int)
    weights = np.array([1.0, 2.0, 4.0])[y]
    for part, word in (("spinal", "spinal"), ("foraminal", "foraminal"), ("subarticular", "subarticular")):
        rows = scored.condition.str.contains(word).to_numpy()
        expected = sklearn_log_loss(y[rows], probabilities[rows], weights[rows], labels=[0, 1, 2])
        assert getattr(result, part) == pytest.approx(expected, rel=1e-10)
    spinal = scored.condition.eq(SPINAL).to_numpy()
    per_study = pd.DataFrame({"study": scored.study_id[spinal], "label": y[spinal] == 2,
                              "pred": probabilities[spinal, 2], "w": weights[spinal]}).groupby("study").max()
    expected_any = sklearn_log_loss(per_study.label.astype(int), per_study.pred, per_study.w, labels=[0, 1])
    assert result.any_severe_spinal == pytest.approx(expected_any, rel=1e-10)


def log_loss_1_2(y_true, y_pred, sample_weight) -> float:
    """scikit-learn 1.2.2's ``log_loss`` (the competition's), step by step; later versions stopped renormalising
    and refuse values above 1, so the installed sklearn cannot check unnormalised rows: clip to [eps, 1 - eps],
    a 1-D prediction and label become two columns, each row is divided by its sum, weighted mean of
    ``-sum(y * ln p)``."""
    eps = np.finfo(np.float64).eps
    y_pred = np.clip(np.asarray(y_pred, dtype=np.float64), eps, 1 - eps)
    y_true = np.asarray(y_true, dtype=np.float64)
    if y_pred.ndim == 1:
        y_pred, y_true = np.column_stack([1 - y_pred, y_pred]), np.column_stack([1 - y_true, y_true])
    y_pred = y_pred / y_pred.sum(axis=1, keepdims=True)
    return float(np.average(-xlogy(y_true, y_pred).sum(axis=1), weights=sample_weight))


def leaderboard_score(labels: pd.DataFrame, submission: pd.DataFrame) -> float:
    """The competition's scoring steps: a solution of the scored rows (one-hot columns, weight 2 ** severity),
    the submission aligned to it by row_id, a log loss per condition, and the any-severe part from per-study
    maxima of the solution's ``severe``, its weights and the submission's raw ``severe``."""
    long = labels_to_long(labels)
    long = long[long.severity.notna()]
    severity = long.severity.to_numpy(dtype=int)
    solution = pd.DataFrame(np.eye(3)[severity], columns=list(vocab.SEVERITIES))
    solution["sample_weight"] = 2.0 ** severity
    solution["row_id"] = [vocab.make_row_id(s, c, lv) for s, c, lv in zip(long.study_id, long.condition, long.level)]
    predicted = submission.set_index("row_id").loc[solution.row_id, list(vocab.SEVERITIES)].reset_index(drop=True)
    study = solution.row_id.str.split("_").str[0]
    condition = solution.row_id.map(lambda row_id: next(c for c in ("spinal", "foraminal", "subarticular")
                                                        if c in row_id))
    losses = []
    for name in ("spinal", "foraminal", "subarticular"):
        rows = condition == name
        losses.append(log_loss_1_2(solution.loc[rows, list(vocab.SEVERITIES)].to_numpy(),
                                   predicted.loc[rows].to_numpy(), solution.loc[rows, "sample_weight"].to_numpy()))
    spinal = condition == "spinal"
    labels_any = solution[spinal].groupby(study[spinal])["severe"].max()
    weights_any = solution[spinal].groupby(study[spinal])["sample_weight"].max()
    predictions_any = predicted[spinal].groupby(study[spinal])["severe"].max()
    losses.append(log_loss_1_2(labels_any.to_numpy(), predictions_any.to_numpy(), weights_any.to_numpy()))
    return float(np.mean(losses))


@pytest.mark.parametrize(("seed", "scale"), [(7, (1.0, 1.0)), (11, (0.5, 3.0)), (13, (0.01, 1.2))])
def test_score_matches_the_competition_code_on_random_unnormalised_rows(seed, scale):
    labels, submission = random_case(seed, scale)
    submission.loc[[4, 60], list(vocab.SEVERITIES)] = 0.0  # rows of zeros are scored too
    assert score(labels, submission).score == pytest.approx(leaderboard_score(labels, submission), rel=1e-12)


def test_weighted_log_loss_is_the_weighted_mean_of_negative_logs():
    # (1 * -ln .5 + 3 * -ln .25) / 4 = (ln2 + 6 ln2) / 4 = 7 ln2 / 4
    assert weighted_log_loss(np.array([0.5, 0.25]), np.array([1.0, 3.0])) == pytest.approx(7 * LN2 / 4)
    assert weighted_log_loss(np.array([0.0]), np.array([1.0])) == pytest.approx(-math.log(CLIP_EPSILON))
    # sklearn's eps="auto" for float64 (scikit-learn 1.2 and later; 1e-15 before)
    assert CLIP_EPSILON == np.finfo(np.float64).eps == 2.220446049250313e-16


# --- invalid predictions ------------------------------------------------------------------------------

def test_missing_labelled_row_raises_naming_it_but_an_unlabelled_row_may_be_absent():
    labels = wide_labels(HAND_LABELS)
    submission = submission_frame([1, 2], hand_probabilities)
    # study 2 spinal l5_s1 is unlabelled: dropping it is fine
    unlabelled = "2_spinal_canal_stenosis_l5_s1"
    score(labels, submission[submission.row_id != unlabelled])
    missing = "1_left_subarticular_stenosis_l3_l4"
    with pytest.raises(SubmissionError, match=rf"1 labelled row\(s\) have no prediction: '{missing}' \(1 in all\)"):
        score(labels, submission[submission.row_id != missing])
    many_missing = r"24 labelled row\(s\) have no prediction: .* and 19 more \(24 in all\)"
    with pytest.raises(SubmissionError, match=many_missing) as caught:
        score(labels, submission[~submission.row_id.str.startswith("1_")])
    assert "'1_spinal_canal_stenosis_l1_l2'" in str(caught.value)
    assert isinstance(caught.value, ValueError)


@pytest.mark.parametrize(("value", "message"), [
    (np.nan, "hold NaN or infinite"),
    (np.inf, "hold NaN or infinite"),
    (-0.1, "hold negative probabilities"),
])
def test_bad_values_raise_naming_the_rows(value, message):
    submission = submission_frame([1, 2], hand_probabilities)
    submission.loc[[3, 30], "moderate"] = value
    with pytest.raises(SubmissionError, match=message) as caught:
        score(wide_labels(HAND_LABELS), submission)
    text = str(caught.value)
    assert f"2 row(s) {message}" in text
    assert submission.row_id[3] in text and submission.row_id[30] in text


def test_duplicate_rows_raise():
    submission = submission_frame([1, 2], hand_probabilities)
    doubled = pd.concat([submission, submission.iloc[[7]]])
    with pytest.raises(SubmissionError, match=rf"more than once: '{submission.row_id[7]}'"):
        score(wide_labels(HAND_LABELS), doubled)


def test_labels_without_a_part_are_refused():
    labels = wide_labels({1: {c: [None] * 5 for c in vocab.CONDITIONS if "subarticular" in c}})
    with pytest.raises(ValueError, match="no labelled subarticular row"):
        score(labels, submission_frame([1], hand_probabilities))


# --- the reference prior -------------------------------------------------------------------------------

def test_weighted_prior_by_hand():
    # spinal l1_l2 over 4 studies: N, N, M, S -> counts (2, 1, 1) * weights (1, 2, 4) = (2, 2, 4) -> /8
    # left foraminal l1_l2: N, M, missing, missing -> (1, 1, 0) * w = (1, 2, 0) -> /3
    labels = wide_labels({
        1: {SPINAL: [N] * 5, LEFT_FORAMEN: [N] * 5},
        2: {SPINAL: [N] * 5, LEFT_FORAMEN: [M, N, N, N, N]},
        3: {SPINAL: [M, N, N, N, N], LEFT_FORAMEN: [None, N, N, N, N]},
        4: {SPINAL: [S, N, N, N, N], LEFT_FORAMEN: [None, N, N, N, N]},
    })
    prior = weighted_prior(labels).set_index(["condition", "level"])
    assert list(prior.columns) == list(vocab.SEVERITIES) and len(prior) == 25
    assert prior.loc[(SPINAL, "l1_l2")].tolist() == pytest.approx([0.25, 0.25, 0.5])
    assert prior.loc[(LEFT_FORAMEN, "l1_l2")].tolist() == pytest.approx([1 / 3, 2 / 3, 0.0])
    assert prior.loc[(SPINAL, "l2_l3")].tolist() == pytest.approx([1.0, 0.0, 0.0])
    # pseudo count 1: spinal l1_l2 (3, 2, 2) * w = (3, 4, 8) -> /15
    smoothed = weighted_prior(labels, pseudo_count=1.0).set_index(["condition", "level"])
    assert smoothed.loc[(SPINAL, "l1_l2")].tolist() == pytest.approx([3 / 15, 4 / 15, 8 / 15])

    predictions = weighted_prior_predictions(labels, [9, 8])
    assert list(predictions.columns) == ["study_id", "condition", "level", *vocab.SEVERITIES]
    assert predictions.study_id.tolist() == [9] * 25 + [8] * 25
    row = predictions[(predictions.study_id == 8) & (predictions.condition == SPINAL)
                      & (predictions.level == "l1_l2")]
    assert row[list(vocab.SEVERITIES)].to_numpy().ravel().tolist() == pytest.approx([0.25, 0.25, 0.5])


def test_weighted_prior_needs_labels_or_a_pseudo_count():
    labels = wide_labels({1: {RIGHT_RECESS: [None, N, N, N, N]}})
    with pytest.raises(ValueError, match="right_subarticular_stenosis_l1_l2"):
        weighted_prior(labels)
    smoothed = weighted_prior(labels, pseudo_count=0.5).set_index(["condition", "level"])
    # (.5, .5, .5) * (1, 2, 4) -> /3.5
    assert smoothed.loc[(RIGHT_RECESS, "l1_l2")].tolist() == pytest.approx([1 / 7, 2 / 7, 4 / 7])
    with pytest.raises(ValueError, match="pseudo_count"):
        weighted_prior(labels, pseudo_count=-1)


def test_reweighted_prior_beats_plain_frequency_on_its_own_labels():
    rng = np.random.default_rng(3)
    cells = rng.choice(np.array([N, M, S], dtype=object), size=(60, 25), p=[0.75, 0.15, 0.1])
    labels = pd.DataFrame(cells, columns=list(vocab.TARGET_COLUMNS))
    labels.insert(0, "study_id", np.arange(1, 61))
    reweighted = weighted_prior_predictions(labels, labels.study_id, pseudo_count=1.0)
    frequency = reweighted.copy()
    frequency[list(vocab.SEVERITIES)] /= np.array(vocab.SEVERITY_WEIGHTS)  # undo the 1/2/4 reweighting
    better, worse = score(labels, reweighted), score(labels, frequency)
    for part in ("spinal", "foraminal", "subarticular"):
        assert getattr(better, part) < getattr(worse, part)


# --- per-target metrics (radiospine.task) ---------------------------------------------------------------------

def test_quadratic_weighted_kappa_by_hand_and_as_sklearn():
    from sklearn.metrics import cohen_kappa_score

    from radiospine.metrics import quadratic_weighted_kappa

    true, predicted = np.array([0, 1, 2, 3, 4]), np.array([0, 2, 2, 3, 3])
    # observed: (1,2) and (4,3) off by one, weight 1/16 each -> 2/16; expected: sum_ij t_i p_j (i-j)^2 / (5 * 16)
    # with t = (1,1,1,1,1), p = (1,0,2,2,0): (30 + 2 * 10 + 2 * 15) / 80 = 1 -> kappa = 1 - 0.125 / 1
    assert quadratic_weighted_kappa(true, predicted, 5) == pytest.approx(0.875)
    rng = np.random.default_rng(0)
    true, predicted = rng.integers(0, 5, 200), rng.integers(0, 5, 200)
    assert quadratic_weighted_kappa(true, predicted, 5) == pytest.approx(
        cohen_kappa_score(true, predicted, weights="quadratic"))
    assert quadratic_weighted_kappa(true, true, 5) == pytest.approx(1.0)
    assert quadratic_weighted_kappa(np.zeros(4), np.zeros(4), 5) == 0.0  # undefined: one grade everywhere


def test_target_metrics_binary_by_hand():
    from radiospine.metrics import target_metrics
    from radiospine.task import SPIDER

    p1 = np.array([0.2, 0.8, 0.4, 0.6])
    figures = target_metrics(np.array([0, 1, 1, 0]), np.column_stack([1 - p1, p1]),
                             SPIDER.target("disc_bulging"))
    assert figures["weighted_log_loss"] == pytest.approx(-(2 * math.log(0.8) + 2 * math.log(0.4)) / 4)
    assert figures["auc"] == pytest.approx(0.75)  # 3 of the 4 (positive, negative) pairs ranked right
    assert figures["accuracy"] == pytest.approx(0.5) and math.isnan(figures["qwk"])


def test_target_metrics_ordinal_weights_the_true_grade():
    from radiospine.metrics import target_metrics
    from radiospine.task import RSNA2024

    proba = np.array([[0.7, 0.2, 0.1], [0.2, 0.5, 0.3], [0.1, 0.3, 0.6]])
    figures = target_metrics(np.array([0, 1, 2]), proba, RSNA2024.target(SPINAL))
    expected = -(1 * math.log(0.7) + 2 * math.log(0.5) + 4 * math.log(0.6)) / 7
    assert figures["weighted_log_loss"] == pytest.approx(expected)
    assert figures["qwk"] == pytest.approx(1.0) and figures["accuracy"] == 1.0 and math.isnan(figures["auc"])
    with pytest.raises(ValueError, match="probabilities of shape"):
        target_metrics(np.array([0, 1]), proba, RSNA2024.target(SPINAL))


def test_level_prior_by_hand():
    from radiospine.metrics import level_prior
    from radiospine.task import RSNA2024, SPIDER

    prior = level_prior(np.array(["l1_l2"] * 3 + ["l2_l3"]), np.array([0, 0, 1, 1]),
                        SPIDER.target("disc_narrowing"), ["l1_l2", "l2_l3"], pseudo_count=1.0)
    np.testing.assert_allclose(prior, [[3 / 5, 2 / 5], [1 / 3, 2 / 3]])
    weighted = level_prior(np.array(["l1_l2"] * 2), np.array([0, 2]), RSNA2024.target(SPINAL), ["l1_l2"],
                           pseudo_count=0.0)
    np.testing.assert_allclose(weighted, [[1 / 5, 0.0, 4 / 5]])  # counts (1, 0, 1) x weights (1, 2, 4)
    with pytest.raises(ValueError, match="disc_narrowing_l2_l3"):
        level_prior(np.array(["l1_l2"]), np.array([0]), SPIDER.target("disc_narrowing"), ["l1_l2", "l2_l3"],
                    pseudo_count=0.0)


def test_score_targets_against_the_in_sample_prior():
    from radiospine.metrics import score_targets
    from radiospine.task import SPIDER

    labels = pd.DataFrame({"study_id": [1, 1, 2, 2, 3], "target": ["disc_bulging"] * 4 + ["pfirrmann_grade"],
                           "level": ["l1_l2", "l2_l3", "l1_l2", "l2_l3", "l1_l2"],
                           "grade": pd.array([0, 1, 1, pd.NA, 3], dtype="Int8")})
    predictions = labels[["study_id", "target", "level"]].assign(
        p0=[0.9, 0.1, 0.2, 0.5, 0.1], p1=[0.1, 0.9, 0.8, 0.5, 0.1], p2=[np.nan] * 4 + [0.1],
        p3=[np.nan] * 4 + [0.6], p4=[np.nan] * 4 + [0.1])
    table = score_targets(labels, predictions, SPIDER).set_index("target")
    assert table.index.tolist() == ["pfirrmann_grade", "disc_bulging"]  # task order, labelled targets only
    bulging = table.loc["disc_bulging"]
    assert bulging["n"] == 3 and bulging["auc"] == 1.0 and bulging["accuracy"] == 1.0
    assert bulging["weighted_log_loss"] == pytest.approx(-(math.log(0.9) * 2 + math.log(0.8)) / 3)
    # in-sample prior with pseudo count 1: l1_l2 has grades (0, 1) -> (1/2, 1/2); l2_l3 grade 1 -> (1/3, 2/3)
    assert bulging["prior_weighted_log_loss"] == pytest.approx(-(2 * math.log(0.5) + math.log(2 / 3)) / 3)
    assert bulging["log_loss_reduction"] == pytest.approx(
        1 - bulging["weighted_log_loss"] / bulging["prior_weighted_log_loss"])
    assert table.loc["pfirrmann_grade", "qwk"] == 0.0  # one row: kappa undefined
    with pytest.raises(SubmissionError, match="1_disc_bulging_l2_l3"):
        score_targets(labels, predictions.drop(index=1), SPIDER)
