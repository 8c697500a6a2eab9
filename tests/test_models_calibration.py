"""Tests of radiospine.models.calibration: calibrators on out-of-fold probabilities and the any-severe shift."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from models_synthetic import make_feature_table
from scipy.special import softmax
from sklearn.isotonic import IsotonicRegression

from radiospine import metrics, vocab
from radiospine.models.calibration import (
    CALIBRATORS,
    AnySevereAdjuster,
    IsotonicCalibrator,
    TemperatureScaling,
    calibrator_from_dict,
    make_calibrator,
    shift_severe_log_odds,
)

WEIGHTS = np.asarray(vocab.SEVERITY_WEIGHTS)


def _sample(n_rows: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """True probabilities (n_rows, 3) with a 1/2/4-like imbalance and labels drawn from them."""
    rng = np.random.default_rng(seed)
    logits = rng.normal(scale=1.2, size=(n_rows, 3)) + np.array([1.5, 0.0, -0.8])
    truth = softmax(logits, axis=1)
    y = np.array([rng.choice(3, p=p) for p in truth])
    return truth, y


def _loss(proba: np.ndarray, y: np.ndarray) -> float:
    return metrics.weighted_log_loss(proba[np.arange(len(y)), y], WEIGHTS[y])


def _sharpen(proba: np.ndarray, power: float) -> np.ndarray:
    powered = proba**power
    return powered / powered.sum(axis=1, keepdims=True)


@pytest.mark.parametrize("kind", ["temperature", "vector", "isotonic"])
def test_calibration_repairs_over_confident_probabilities(kind):
    truth, y = _sample(4000, seed=0)
    over_confident = _sharpen(truth, 3.0)
    fit, held_out = slice(0, 2000), slice(2000, None)
    calibrator = make_calibrator(kind).fit(over_confident[fit], y[fit], WEIGHTS[y[fit]])
    calibrated = calibrator.transform(over_confident[held_out])
    assert np.all(np.isfinite(calibrated)) and calibrated.min() >= 0
    np.testing.assert_allclose(calibrated.sum(axis=1), 1.0, atol=1e-12)
    assert _loss(calibrated, y[held_out]) < _loss(over_confident[held_out], y[held_out]) - 0.05


def test_temperature_direction_and_identity():
    truth, y = _sample(3000, seed=1)
    # Unweighted, the temperature undoes a power: softmax(log p**a / T) = p when T = a.
    assert TemperatureScaling().fit(_sharpen(truth, 3.0), y).temperature_ == pytest.approx(3.0, rel=0.15)
    assert TemperatureScaling().fit(_sharpen(truth, 0.4), y).temperature_ == pytest.approx(0.4, rel=0.15)
    assert TemperatureScaling().fit(truth, y).temperature_ == pytest.approx(1.0, rel=0.15)
    # The metric's weights favour the rarer classes, which takes the temperature up for confident input.
    assert TemperatureScaling().fit(_sharpen(truth, 3.0), y, WEIGHTS[y]).temperature_ > 2.0


@pytest.mark.parametrize("kind", sorted(CALIBRATORS))
def test_json_round_trip_and_extreme_inputs(kind):
    truth, y = _sample(600, seed=2)
    calibrator = make_calibrator(kind).fit(_sharpen(truth, 2.0), y, WEIGHTS[y])
    rebuilt = calibrator_from_dict(json.loads(json.dumps(calibrator.to_dict())))
    assert type(rebuilt) is type(calibrator)
    extreme = np.vstack([truth[:50], np.eye(3), [[0.0, 0.0, 5.0]], [[1e-300, 1.0, 0.0]]])
    np.testing.assert_array_equal(rebuilt.transform(extreme), calibrator.transform(extreme))
    out = calibrator.transform(extreme)
    assert np.all(np.isfinite(out)) and out.min() >= 0
    np.testing.assert_allclose(out.sum(axis=1), 1.0, atol=1e-12)


def test_isotonic_matches_sklearn_before_the_floor():
    truth, y = _sample(800, seed=3)
    proba = _sharpen(truth, 2.0)
    calibrator = IsotonicCalibrator(floor=0.0).fit(proba, y, WEIGHTS[y])
    expected = np.column_stack([
        IsotonicRegression(y_min=0, y_max=1, out_of_bounds="clip")
        .fit(proba[:, k], (y == k).astype(float), sample_weight=WEIGHTS[y]).predict(proba[:, k])
        for k in range(3)
    ])
    np.testing.assert_allclose(calibrator.transform(proba), expected / expected.sum(axis=1, keepdims=True))


def test_calibrator_errors():
    with pytest.raises(ValueError, match="not fitted"):
        TemperatureScaling().transform(np.eye(3))
    with pytest.raises(ValueError, match="class indices"):
        TemperatureScaling().fit(np.eye(3), np.array([0, 1, 3]))
    with pytest.raises(ValueError, match="negative"):
        TemperatureScaling().fit(-np.eye(3), np.array([0, 1, 2]))
    with pytest.raises(ValueError, match="unknown calibration 'platt'"):
        make_calibrator("platt")
    with pytest.raises(ValueError, match="not a calibrator description"):
        calibrator_from_dict({"kind": "platt"})


def test_shift_severe_log_odds():
    proba = np.array([[0.6, 0.3, 0.1], [0.0, 0.0, 1.0], [0.5, 0.5, 0.0], [2.0, 1.0, 1.0]])
    np.testing.assert_allclose(shift_severe_log_odds(proba, 0.0), proba / proba.sum(axis=1, keepdims=True),
                               atol=1e-12)
    shifted = shift_severe_log_odds(proba, 1.0)
    np.testing.assert_allclose(shifted.sum(axis=1), 1.0)
    assert shifted[0, 2] == pytest.approx(1 / (1 + 9 / np.e))  # odds 1/9 times e
    assert shifted[0, 0] / shifted[0, 1] == pytest.approx(2.0)  # the other two keep their ratio
    assert shifted[1, 2] < 1.0 and shifted[2, 2] > 0.0  # certainty is softened, never NaN
    np.testing.assert_allclose(shifted[1, :2], shifted[1, :2].mean())  # nothing to share: split evenly


@pytest.fixture(scope="module")
def prior_predictions():
    """Labels of 60 synthetic studies and their weighted-prior predictions with spinal `severe` pushed down."""
    labels = make_feature_table(n_studies=60, n_features=8, seed=4).labels
    prior = metrics.weighted_prior_predictions(labels, labels["study_id"].unique())
    spinal = prior["condition"] == vocab.SPINAL
    columns = list(vocab.SEVERITIES)
    prior.loc[spinal, columns] = shift_severe_log_odds(prior.loc[spinal, columns].to_numpy(), -2.0)
    return labels, prior


def test_any_severe_adjuster_undoes_a_shift_and_improves_the_metric(prior_predictions):
    labels, predictions = prior_predictions
    adjuster = AnySevereAdjuster().fit(predictions, labels)
    assert adjuster.shift_ > 1.0
    assert adjuster.score_after_ < adjuster.score_before_
    adjusted = adjuster.transform(predictions)
    assert metrics.score(labels, adjusted).score == pytest.approx(adjuster.score_after_)
    not_spinal = predictions["condition"] != vocab.SPINAL
    pd.testing.assert_frame_equal(adjusted[not_spinal], predictions[not_spinal])
    rebuilt = AnySevereAdjuster.from_dict(json.loads(json.dumps(adjuster.to_dict())))
    pd.testing.assert_frame_equal(rebuilt.transform(predictions), adjusted)


def test_any_severe_adjuster_is_dropped_when_it_does_not_help(prior_predictions):
    labels, predictions = prior_predictions
    adjuster = AnySevereAdjuster(min_improvement=10.0).fit(predictions, labels)
    assert adjuster.shift_ == 0.0 and adjuster.score_after_ == adjuster.score_before_
    pd.testing.assert_frame_equal(adjuster.transform(predictions), predictions)
    with pytest.raises(ValueError, match="not fitted"):
        AnySevereAdjuster().transform(predictions)
