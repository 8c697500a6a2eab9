"""Calibration of class probabilities fitted on out-of-fold predictions, and the any-severe-spinal adjustment.

Calibrators map probabilities ``(n_rows, K)`` to probabilities ``(n_rows, K)``; all share the interface
``fit(proba, y, sample_weight) -> self``, ``transform(proba)``, ``to_dict()`` and are rebuilt from that dict by
:func:`calibrator_from_dict` (JSON-ready, no pickle). ``y`` holds class indices ``0..K-1`` (columns of
``proba``); ``sample_weight`` is typically the metric's 1/2/4 weight of each row's true class, so the fit
minimises the metric's weighted log loss.

* :class:`IdentityCalibrator` (``"none"``): leaves probabilities as they are.
* :class:`TemperatureScaling` (``"temperature"``): ``softmax(log p / T)``, one parameter.
* :class:`VectorScaling` (``"vector"``): ``softmax(a * log p + b)``, ``a`` and ``b`` per class (``b_0 = 0``).
* :class:`IsotonicCalibrator` (``"isotonic"``): one isotonic regression of ``1[y = k]`` on ``p_k`` per class,
  floored and renormalised per row.

:class:`AnySevereAdjuster` tunes one number for the metric's ``any_severe_spinal`` part: a shift of the log-odds
of ``severe`` on spinal canal rows (the other two classes keep their ratio), chosen by the full metric.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, ClassVar

import numpy as np
import pandas as pd
from scipy.optimize import minimize, minimize_scalar
from scipy.special import expit, log_softmax, logit, softmax
from sklearn.isotonic import IsotonicRegression

from radiospine import metrics, vocab
from radiospine.submission import normalise_probabilities, probability_problems

#: Probabilities are clipped to at least this before taking logs.
LOG_FLOOR = 1e-15
_SEVERE = vocab.SEVERITIES.index("severe")


def check_proba(proba: np.ndarray, what: str = "probabilities") -> np.ndarray:
    """Validate ``(n_rows, K)`` probabilities (finite, >= 0, rows summing to > 0) and renormalise each row.

    Problems raise ``ValueError`` naming the offending row indices.
    """
    proba = np.asarray(proba, dtype=np.float64)
    if proba.ndim != 2 or proba.shape[1] < 2:
        raise ValueError(f"{what} must be 2-D (n_rows, n_classes >= 2), got shape {proba.shape}")
    problems = probability_problems(proba, np.arange(len(proba)))
    if problems:
        raise ValueError(f"{what}: {'; '.join(problems)}")
    return normalise_probabilities(proba)


def _check_targets(proba: np.ndarray, y, sample_weight) -> tuple[np.ndarray, np.ndarray]:
    y = np.asarray(y)
    if y.shape != (len(proba),):
        raise ValueError(f"y must have shape ({len(proba)},), got {y.shape}")
    if not np.issubdtype(y.dtype, np.integer) or y.min(initial=0) < 0 or y.max(initial=0) >= proba.shape[1]:
        raise ValueError(f"y must hold class indices 0..{proba.shape[1] - 1}")
    weight = np.ones(len(y)) if sample_weight is None else np.asarray(sample_weight, dtype=np.float64)
    if weight.shape != y.shape or not np.all(np.isfinite(weight)) or (weight < 0).any() or weight.sum() <= 0:
        raise ValueError("sample_weight must be finite, non-negative, of y's shape, with a positive sum")
    return y.astype(np.int64), weight


class Calibrator(ABC):
    """Maps probabilities (n_rows, K) to calibrated probabilities (n_rows, K); see the module docstring."""

    kind: ClassVar[str]

    @abstractmethod
    def fit(self, proba: np.ndarray, y: np.ndarray, sample_weight: np.ndarray | None = None) -> Calibrator:
        """Fit on probabilities (n_rows, K), true class indices (n_rows,) and row weights (n_rows,)."""

    @abstractmethod
    def transform(self, proba: np.ndarray) -> np.ndarray:
        """Calibrated probabilities (n_rows, K): finite, non-negative, rows summing to 1."""

    @abstractmethod
    def _params(self) -> dict[str, Any]:
        """The fitted parameters as JSON-ready values."""

    @classmethod
    @abstractmethod
    def _from_params(cls, params: dict[str, Any]) -> Calibrator:
        """Rebuild a fitted calibrator from :meth:`_params`."""

    def to_dict(self) -> dict[str, Any]:
        """``{"kind": ..., "params": {...}}``; :func:`calibrator_from_dict` rebuilds the calibrator."""
        return {"kind": self.kind, "params": self._params()}

    def _require_fitted(self, *attributes: str) -> None:
        if any(getattr(self, name, None) is None for name in attributes):
            raise ValueError(f"{type(self).__name__} is not fitted: call fit() first")


class IdentityCalibrator(Calibrator):
    """No calibration: ``transform`` only renormalises rows."""

    kind = "none"

    def fit(self, proba, y, sample_weight=None) -> IdentityCalibrator:
        _check_targets(check_proba(proba), y, sample_weight)
        return self

    def transform(self, proba):
        return check_proba(proba)

    def _params(self):
        return {}

    @classmethod
    def _from_params(cls, params):
        return cls()


class TemperatureScaling(Calibrator):
    """``p' = softmax(log p / T)``; ``T > 1`` softens over-confident probabilities, ``T < 1`` sharpens.

    ``T`` minimises the weighted log loss over ``[1 / max_temperature, max_temperature]``.
    """

    kind = "temperature"

    def __init__(self, max_temperature: float = 20.0):
        self.max_temperature = max_temperature
        self.temperature_: float | None = None

    def fit(self, proba, y, sample_weight=None) -> TemperatureScaling:
        log_proba = np.log(np.maximum(check_proba(proba), LOG_FLOOR))
        y, weight = _check_targets(log_proba, y, sample_weight)
        bound = np.log(self.max_temperature)
        rows = np.arange(len(y))
        result = minimize_scalar(
            lambda log_t: metrics.weighted_log_loss(softmax(log_proba / np.exp(log_t), axis=1)[rows, y], weight),
            bounds=(-bound, bound),
            method="bounded",
            options={"xatol": 1e-6},
        )
        self.temperature_ = float(np.exp(result.x))
        return self

    def transform(self, proba):
        self._require_fitted("temperature_")
        return softmax(np.log(np.maximum(check_proba(proba), LOG_FLOOR)) / self.temperature_, axis=1)

    def _params(self):
        self._require_fitted("temperature_")
        return {"temperature": self.temperature_, "max_temperature": self.max_temperature}

    @classmethod
    def _from_params(cls, params):
        calibrator = cls(max_temperature=params["max_temperature"])
        calibrator.temperature_ = float(params["temperature"])
        return calibrator


class VectorScaling(Calibrator):
    """``p' = softmax(a * log p + b)`` with per-class scale ``a`` (K,) and offset ``b`` (K,), ``b_0 = 0``.

    Fitted by L-BFGS on the weighted log loss (analytic gradient) plus ``l2 * (|a - 1|^2 + |b|^2)``, starting
    from the identity (``a = 1``, ``b = 0``).
    """

    kind = "vector"

    def __init__(self, l2: float = 1e-4):
        self.l2 = l2
        self.scale_: np.ndarray | None = None
        self.offset_: np.ndarray | None = None

    def fit(self, proba, y, sample_weight=None) -> VectorScaling:
        log_proba = np.log(np.maximum(check_proba(proba), LOG_FLOOR))
        y, weight = _check_targets(log_proba, y, sample_weight)
        n_classes = log_proba.shape[1]
        onehot = np.eye(n_classes)[y]
        share = weight / weight.sum()

        def objective(theta: np.ndarray) -> tuple[float, np.ndarray]:
            scale, offset = theta[:n_classes], np.concatenate([[0.0], theta[n_classes:]])
            log_q = log_softmax(scale * log_proba + offset, axis=1)
            loss = -np.sum(share * log_q[np.arange(len(y)), y])
            residual = share[:, None] * (np.exp(log_q) - onehot)  # d loss / d logits
            gradient = np.concatenate([(residual * log_proba).sum(axis=0), residual.sum(axis=0)[1:]])
            penalty = theta - np.concatenate([np.ones(n_classes), np.zeros(n_classes - 1)])
            return loss + self.l2 * np.sum(penalty**2), gradient + 2.0 * self.l2 * penalty

        start = np.concatenate([np.ones(n_classes), np.zeros(n_classes - 1)])
        result = minimize(objective, start, jac=True, method="L-BFGS-B")
        self.scale_ = result.x[:n_classes].copy()
        self.offset_ = np.concatenate([[0.0], result.x[n_classes:]])
        return self

    def transform(self, proba):
        self._require_fitted("scale_", "offset_")
        proba = check_proba(proba)
        if proba.shape[1] != len(self.scale_):
            raise ValueError(f"VectorScaling was fitted on {len(self.scale_)} classes, got {proba.shape[1]}")
        return softmax(self.scale_ * np.log(np.maximum(proba, LOG_FLOOR)) + self.offset_, axis=1)

    def _params(self):
        self._require_fitted("scale_", "offset_")
        return {"scale": self.scale_.tolist(), "offset": self.offset_.tolist(), "l2": self.l2}

    @classmethod
    def _from_params(cls, params):
        calibrator = cls(l2=params["l2"])
        calibrator.scale_ = np.asarray(params["scale"], dtype=np.float64)
        calibrator.offset_ = np.asarray(params["offset"], dtype=np.float64)
        return calibrator


class IsotonicCalibrator(Calibrator):
    """Per class ``k``, a weighted isotonic regression of ``1[y = k]`` on ``p_k`` (sklearn), evaluated by
    linear interpolation between its thresholds (as ``IsotonicRegression.predict`` does, clipped at the ends);
    each value is floored at ``floor`` (an isotonic step can reach 0, and the log loss of a 0 is unbounded) and
    rows are renormalised.
    """

    kind = "isotonic"

    def __init__(self, floor: float = 1e-4):
        self.floor = floor
        self.thresholds_: list[tuple[np.ndarray, np.ndarray]] | None = None

    def fit(self, proba, y, sample_weight=None) -> IsotonicCalibrator:
        proba = check_proba(proba)
        y, weight = _check_targets(proba, y, sample_weight)
        self.thresholds_ = []
        for k in range(proba.shape[1]):
            regression = IsotonicRegression(y_min=0.0, y_max=1.0, out_of_bounds="clip")
            regression.fit(proba[:, k], (y == k).astype(np.float64), sample_weight=weight)
            self.thresholds_.append((regression.X_thresholds_.copy(), regression.y_thresholds_.copy()))
        return self

    def transform(self, proba):
        self._require_fitted("thresholds_")
        proba = check_proba(proba)
        if proba.shape[1] != len(self.thresholds_):
            raise ValueError(f"IsotonicCalibrator was fitted on {len(self.thresholds_)} classes, got {proba.shape[1]}")
        mapped = np.column_stack([np.interp(proba[:, k], x, y) for k, (x, y) in enumerate(self.thresholds_)])
        mapped = np.maximum(mapped, self.floor)
        return mapped / mapped.sum(axis=1, keepdims=True)

    def _params(self):
        self._require_fitted("thresholds_")
        return {"floor": self.floor, "thresholds": [[x.tolist(), y.tolist()] for x, y in self.thresholds_]}

    @classmethod
    def _from_params(cls, params):
        calibrator = cls(floor=params["floor"])
        calibrator.thresholds_ = [(np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64))
                                  for x, y in params["thresholds"]]
        return calibrator


CALIBRATORS: dict[str, type[Calibrator]] = {
    cls.kind: cls for cls in (IdentityCalibrator, TemperatureScaling, VectorScaling, IsotonicCalibrator)
}


def make_calibrator(kind: str) -> Calibrator:
    """A new, unfitted calibrator of ``kind`` (one of :data:`CALIBRATORS`) with default settings."""
    if kind not in CALIBRATORS:
        raise ValueError(f"unknown calibration {kind!r}; expected one of {', '.join(CALIBRATORS)}")
    return CALIBRATORS[kind]()


def calibrator_from_dict(data: dict[str, Any]) -> Calibrator:
    """Rebuild a fitted calibrator from :meth:`Calibrator.to_dict`."""
    if not isinstance(data, dict) or data.get("kind") not in CALIBRATORS or "params" not in data:
        raise ValueError(f"not a calibrator description (expected kind in {list(CALIBRATORS)} and params): {data!r}")
    return CALIBRATORS[data["kind"]]._from_params(data["params"])


# --- any_severe_spinal -------------------------------------------------------------------------------------


def shift_severe_log_odds(proba: np.ndarray, shift: float) -> np.ndarray:
    """Add ``shift`` to the log-odds of ``severe`` (column 2) in (n_rows, 3) probabilities.

    The other two columns are rescaled to keep their ratio; rows are renormalised first and come out
    summing to 1. ``shift > 0`` raises ``severe``.
    """
    proba = check_proba(proba)
    if proba.shape[1] != len(vocab.SEVERITIES):
        raise ValueError(f"expected {len(vocab.SEVERITIES)} columns {vocab.SEVERITIES}, got {proba.shape[1]}")
    severe = np.clip(proba[:, _SEVERE], LOG_FLOOR, 1.0 - LOG_FLOOR)
    shifted = expit(logit(severe) + shift)
    others = [k for k in range(proba.shape[1]) if k != _SEVERE]
    rest = proba[:, others]
    rest_sum = rest.sum(axis=1, keepdims=True)
    share = np.divide(rest, rest_sum, out=np.full_like(rest, 1.0 / len(others)), where=rest_sum > 0)
    out = np.empty_like(proba)
    out[:, _SEVERE] = shifted
    out[:, others] = share * (1.0 - shifted)[:, None]
    return out


class AnySevereAdjuster:
    """One log-odds shift of ``severe`` on spinal canal rows, tuned on out-of-fold predictions for the
    metric's ``any_severe_spinal`` part (which takes, per study, the largest ``severe`` over the 5 levels).

    ``fit`` searches ``shift`` in ``[-max_shift, max_shift]`` minimising :func:`radiospine.metrics.score`
    (the full metric: the shift also moves the ``spinal`` part) and keeps it only if it lowers the score by
    more than ``min_improvement``; otherwise ``shift_`` is 0 and :meth:`transform` changes nothing.
    Fitted attributes: ``shift_``, ``score_before_``, ``score_after_`` (the score with the kept shift).
    """

    def __init__(self, max_shift: float = 3.0, min_improvement: float = 1e-4):
        self.max_shift = max_shift
        self.min_improvement = min_improvement
        self.shift_: float | None = None
        self.score_before_: float | None = None
        self.score_after_: float | None = None

    def fit(self, predictions: pd.DataFrame, labels: pd.DataFrame) -> AnySevereAdjuster:
        """``predictions``: long predictions (study_id, condition, level, normal_mild, moderate, severe) covering
        every labelled row; ``labels``: long or wide labels (:mod:`radiospine.labels`)."""
        self.score_before_ = metrics.score(labels, predictions).score
        result = minimize_scalar(
            lambda shift: metrics.score(labels, self._shifted(predictions, shift)).score,
            bounds=(-self.max_shift, self.max_shift),
            method="bounded",
            options={"xatol": 1e-3},
        )
        improved = self.score_before_ - float(result.fun) > self.min_improvement
        self.shift_ = float(result.x) if improved else 0.0
        self.score_after_ = float(result.fun) if improved else self.score_before_
        return self

    def transform(self, predictions: pd.DataFrame) -> pd.DataFrame:
        """A copy of long predictions with the spinal rows' ``severe`` log-odds shifted by ``shift_``."""
        if self.shift_ is None:
            raise ValueError("AnySevereAdjuster is not fitted: call fit() first")
        return self._shifted(predictions, self.shift_)

    @staticmethod
    def _shifted(predictions: pd.DataFrame, shift: float) -> pd.DataFrame:
        columns = list(vocab.SEVERITIES)
        spinal = (predictions["condition"] == vocab.SPINAL).to_numpy()
        out = predictions.copy()
        if shift != 0.0 and spinal.any():
            out.loc[spinal, columns] = shift_severe_log_odds(predictions.loc[spinal, columns].to_numpy(), shift)
        return out

    def to_dict(self) -> dict[str, Any]:
        if self.shift_ is None:
            raise ValueError("AnySevereAdjuster is not fitted: call fit() first")
        return {
            "shift": self.shift_,
            "max_shift": self.max_shift,
            "min_improvement": self.min_improvement,
            "score_before": self.score_before_,
            "score_after": self.score_after_,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> AnySevereAdjuster:
        adjuster = cls(max_shift=data["max_shift"], min_improvement=data["min_improvement"])
        adjuster.shift_ = float(data["shift"])
        adjuster.score_before_ = data["score_before"]
        adjuster.score_after_ = data["score_after"]
        return adjuster
