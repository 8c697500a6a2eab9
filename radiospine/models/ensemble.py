"""Blending the probability sets of several models with convex weights chosen out of fold.

A blend is ``sum_m w_m * P_m`` over members' probabilities ``P_m`` (n_rows, K) with ``w_m >= 0`` and
``sum_m w_m = 1``, so blended rows stay probabilities. The weights minimise the weighted log loss
(:func:`radiospine.metrics.weighted_log_loss`) over a regular grid on the simplex, which for 2-3 members
(21 and 231 points at step 0.05) is exact enough and has no local minima to worry about.
"""

from __future__ import annotations

from collections.abc import Sequence
from itertools import combinations

import numpy as np

from radiospine import metrics

#: More grid points than this means too many members or too fine a step for a grid search.
MAX_GRID_POINTS = 200_000


def simplex_grid(n_members: int, step: float) -> np.ndarray:
    """All weight vectors with entries in multiples of ``step`` (1/step an integer) summing to 1.

    Returns (n_points, n_members), float64; the pure members (one weight 1) are among the points.
    """
    if n_members < 1:
        raise ValueError(f"n_members must be >= 1, got {n_members}")
    divisions = round(1.0 / step)
    if divisions < 1 or not np.isclose(divisions * step, 1.0):
        raise ValueError(f"step must divide 1 into a whole number of parts (e.g. 0.05), got {step}")
    # Stars and bars: choose n_members - 1 bar positions among divisions + n_members - 1 slots.
    slots = divisions + n_members - 1
    points = []
    for bars in combinations(range(slots), n_members - 1):
        edges = np.array((-1, *bars, slots))
        points.append(np.diff(edges) - 1)
        if len(points) > MAX_GRID_POINTS:
            raise ValueError(f"a simplex grid of {n_members} members at step {step} has more than "
                             f"{MAX_GRID_POINTS} points; use a coarser step or fewer members")
    return np.asarray(points, dtype=np.float64) / divisions


def _stack(probas: Sequence[np.ndarray]) -> np.ndarray:
    """Members' probabilities -> (n_members, n_rows, K), each validated."""
    if len(probas) == 0:
        raise ValueError("no member probabilities to blend")
    stacked = np.stack([np.asarray(p, dtype=np.float64) for p in probas])
    if stacked.ndim != 3:
        raise ValueError(f"every member's probabilities must be (n_rows, K) of one shape, got {stacked.shape[1:]}")
    if not np.all(np.isfinite(stacked)) or (stacked < 0).any():
        raise ValueError("member probabilities hold NaN, infinite or negative values")
    return stacked


def blend(probas: Sequence[np.ndarray], weights: Sequence[float]) -> np.ndarray:
    """``sum_m weights[m] * probas[m]``: (n_rows, K) from ``n_members`` arrays (n_rows, K)."""
    stacked = _stack(probas)
    weights = np.asarray(weights, dtype=np.float64)
    if weights.shape != (len(stacked),) or (weights < 0).any() or not np.isclose(weights.sum(), 1.0):
        raise ValueError(f"weights must be {len(stacked)} non-negative numbers summing to 1, got {weights.tolist()}")
    return np.tensordot(weights, stacked, axes=1)


def fit_blend_weights(
    probas: Sequence[np.ndarray], y: np.ndarray, sample_weight: np.ndarray, step: float = 0.05
) -> np.ndarray:
    """Convex weights (n_members,) minimising the weighted log loss of the blend on the grid.

    ``probas``: members' out-of-fold probabilities, each (n_rows, K) with rows summing to 1; ``y``: (n_rows,)
    true class indices; ``sample_weight``: (n_rows,) row weights (the metric's 1/2/4). Ties go to the first
    grid point in stars-and-bars order.
    """
    stacked = _stack(probas)
    y = np.asarray(y, dtype=np.int64)
    if y.shape != (stacked.shape[1],):
        raise ValueError(f"y must have shape ({stacked.shape[1]},), got {y.shape}")
    true_class = stacked[:, np.arange(len(y)), y]  # (n_members, n_rows)
    grid = simplex_grid(len(stacked), step)
    losses = [metrics.weighted_log_loss(point @ true_class, sample_weight) for point in grid]
    return grid[int(np.argmin(losses))]
