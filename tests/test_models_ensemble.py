"""Tests of radiospine.models.ensemble: simplex grids and out-of-fold blend weights."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.special import softmax

from radiospine import metrics, vocab
from radiospine.models.ensemble import blend, fit_blend_weights, simplex_grid

WEIGHTS = np.asarray(vocab.SEVERITY_WEIGHTS)


def test_simplex_grid():
    np.testing.assert_allclose(simplex_grid(2, 0.5), [[0.0, 1.0], [0.5, 0.5], [1.0, 0.0]])
    grid = simplex_grid(3, 0.05)
    assert grid.shape == (231, 3)
    assert grid.min() >= 0
    np.testing.assert_allclose(grid.sum(axis=1), 1.0)
    assert len(np.unique(grid.round(9), axis=0)) == 231
    for vertex in np.eye(3):
        assert (np.abs(grid - vertex).sum(axis=1) < 1e-12).any()
    np.testing.assert_allclose(simplex_grid(1, 0.1), [[1.0]])
    with pytest.raises(ValueError, match="whole number"):
        simplex_grid(2, 0.3)


def _members(seed: int):
    """Labels, the true probabilities and three members: informative A, complementary informative B, noise."""
    rng = np.random.default_rng(seed)
    n_rows = 3000
    signal_a, signal_b = rng.normal(size=(2, n_rows, 3))
    truth = softmax(1.5 * (signal_a + signal_b) + np.array([1.5, 0.0, -0.8]), axis=1)
    y = np.array([rng.choice(3, p=p) for p in truth])
    member_a = softmax(1.5 * signal_a + np.array([1.5, 0.0, -0.8]), axis=1)
    member_b = softmax(1.5 * signal_b + np.array([1.5, 0.0, -0.8]), axis=1)
    noise = softmax(rng.normal(scale=2.0, size=(n_rows, 3)), axis=1)
    return y, truth, member_a, member_b, noise


def _loss(proba, y):
    return metrics.weighted_log_loss(proba[np.arange(len(y)), y], WEIGHTS[y])


def test_blend_weights_favour_informative_members_and_never_lose():
    y, _, member_a, member_b, noise = _members(0)
    weights = fit_blend_weights([member_a, member_b, noise], y, WEIGHTS[y])
    assert weights.shape == (3,) and weights.sum() == pytest.approx(1.0) and weights.min() >= 0
    assert weights[2] <= 0.1 and 0.2 < weights[0] < 0.8 and 0.2 < weights[1] < 0.8
    blended = blend([member_a, member_b, noise], weights)
    np.testing.assert_allclose(blended.sum(axis=1), 1.0)
    assert _loss(blended, y) <= min(_loss(m, y) for m in (member_a, member_b, noise))


def test_blend_weights_pick_the_true_probabilities_over_noise():
    y, truth, _, _, noise = _members(1)
    assert fit_blend_weights([noise, truth], y, np.ones(len(y)), step=0.1)[1] >= 0.9


def test_blend_validates_inputs():
    proba = np.full((4, 3), 1 / 3)
    with pytest.raises(ValueError, match="summing to 1"):
        blend([proba, proba], [0.7, 0.7])
    with pytest.raises(ValueError, match="NaN"):
        blend([proba, np.full((4, 3), np.nan)], [0.5, 0.5])
    with pytest.raises(ValueError, match="no member"):
        blend([], [])
