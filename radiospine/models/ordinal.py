"""Gradient-boosted classifiers for ordered severities: a cumulative (ordinal) model and a plain multiclass one.

Both follow the scikit-learn estimator contract (``__init__`` stores parameters, ``fit`` validates and sets
``classes_``, ``n_features_in_`` and ``feature_names_in_``, ``predict_proba`` columns follow ``classes_``) and
run on LightGBM or XGBoost boosters. NaN features are allowed: both libraries route missing values natively.

:class:`OrdinalGBMClassifier` fits K-1 binary boosters, booster ``k`` modelling the cumulative probability
``P(y > classes_[k])`` for sorted classes ``classes_[0] < ... < classes_[K-1]``. Independently fitted boosters
can disagree with the ordering ``P(y > c_0) >= P(y > c_1) >= ...``; :func:`cumulative_to_proba` restores it by
monotone rearrangement (sorting each row's cumulative probabilities in decreasing order, Chernozhukov,
Fernandez-Val & Galichon 2010) before differencing, so no class probability is ever negative.

:class:`MulticlassGBMClassifier` fits one softmax booster (a logistic booster when two classes are seen) and is
the baseline the ordinal model is compared against.

Both can boost from given per-row probabilities instead of a constant (``init_proba`` of :meth:`fit` and of the
prediction methods): each booster starts from the margin of those probabilities (LightGBM ``init_score``,
XGBoost ``base_margin``; :meth:`OrdinalGBMClassifier.margin_of_proba`, :meth:`MulticlassGBMClassifier.
margin_of_proba`), so its trees learn only what the features add to them, and boosters that learn nothing
predict them exactly. A model fitted so predicts only when given the same kind of probabilities again.

Boosters are saved in their libraries' own formats (:meth:`to_native` / :meth:`from_native`): LightGBM text
``model_<k>.txt`` or XGBoost JSON ``model_<k>.json`` plus ``estimator.json`` (parameters, classes, feature
names). No pickle is involved.

Exact TreeSHAP values come from the boosters themselves (LightGBM ``pred_contrib=True``, XGBoost
``pred_contribs=True``); see :meth:`shap_values`.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import lightgbm
import numpy as np
import xgboost
from scipy.special import expit, logit, softmax
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.model_selection import train_test_split
from sklearn.utils import check_random_state
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import _check_sample_weight, check_is_fitted, validate_data
from threadpoolctl import threadpool_limits

from radiospine.errors import DataError, MissingInputError

logger = logging.getLogger(__name__)

BACKENDS: tuple[str, ...] = ("lightgbm", "xgboost")
#: Feature values are taken as float32 or float64 without conversion (other types become float64): the model
#: driver passes float32 design matrices, half the memory, and the boosters bin them as they are.
_FEATURE_DTYPES = (np.float64, np.float32)

#: Init margins are clipped to +-this (a probability of about 2e-16 from 0 or 1): float64 keeps 1 - p apart from 1.
_MAX_MARGIN = 36.0

#: Version tag of the ``estimator.json`` written by :meth:`_GBMClassifierBase.to_native`.
NATIVE_FORMAT = "radiospine.gbm_classifier/1"
ESTIMATOR_FILE = "estimator.json"


def cumulative_to_proba(cumulative: np.ndarray) -> np.ndarray:
    """Cumulative probabilities -> class probabilities, made monotone first.

    ``cumulative``: (n_samples, K-1), column ``k`` an estimate of ``P(y > classes_[k])``, values in [0, 1]
    (NaN is not allowed). Each row is sorted in decreasing order (monotone rearrangement), then
    ``p_0 = 1 - c_0``, ``p_k = c_{k-1} - c_k``, ``p_{K-1} = c_{K-2}``.
    Returns (n_samples, K) probabilities: non-negative, each row summing to 1.
    """
    cumulative = np.asarray(cumulative, dtype=np.float64)
    if cumulative.ndim != 2:
        raise ValueError(f"cumulative probabilities must be 2-D (n_samples, K-1), got shape {cumulative.shape}")
    if not np.all(np.isfinite(cumulative)):
        raise ValueError("cumulative probabilities contain NaN or infinite values")
    monotone = -np.sort(-np.clip(cumulative, 0.0, 1.0), axis=1)
    n_samples = monotone.shape[0]
    bounds = np.hstack([np.ones((n_samples, 1)), monotone, np.zeros((n_samples, 1))])
    return bounds[:, :-1] - bounds[:, 1:]


# --- backends ---------------------------------------------------------------------------------------------

#: What a booster trains or stops on: ``(X, target, weight, init margin or None)``; the margin is ``(n,)`` for a
#: binary booster, ``(n, num_class)`` for a softmax one.
_Part = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray | None]
#: One booster to fit: ``(num_class, train part, early-stopping part or None)``. The boosters of one fit share
#: ``X`` and the weights of their parts (the same arrays) and differ in target and init margins.
_BoosterTask = tuple[int, _Part, "_Part | None"]


class _LightGBMBackend:
    """LightGBM boosters through ``lightgbm.train``; models saved as LightGBM text files."""

    suffix = ".txt"

    @staticmethod
    def train(estimator: _GBMClassifierBase, seed: int, tasks: list[_BoosterTask]) -> list[lightgbm.Booster]:
        X, _, w, m = tasks[0][1]
        # One binned Dataset (and one for early stopping) serves every booster of the fit: binning is the larger
        # part of a fit on a wide table, and the bins depend on the values only, not on the target.
        train_set = lightgbm.Dataset(X, label=tasks[0][1][1], weight=w, init_score=m, params={"verbosity": -1})
        valid_set = None
        boosters = []
        for num_class, (_, y, _, m), valid in tasks:
            train_set.set_label(y)
            if m is not None:
                train_set.set_init_score(m)
            valid_sets, callbacks = [], []
            if valid is not None:
                Xv, yv, wv, mv = valid
                if valid_set is None:
                    valid_set = lightgbm.Dataset(Xv, label=yv, weight=wv, init_score=mv, reference=train_set)
                valid_set.set_label(yv)
                if mv is not None:
                    valid_set.set_init_score(mv)
                valid_sets = [valid_set]
                callbacks = [lightgbm.early_stopping(estimator.early_stopping_rounds, verbose=False)]
            with threadpool_limits(limits=estimator.n_jobs, user_api="openmp"):
                booster = lightgbm.train(_LightGBMBackend.params(estimator, seed, num_class), train_set,
                                         num_boost_round=estimator.n_estimators, valid_sets=valid_sets,
                                         callbacks=callbacks)
            if valid is not None:
                # Keep only the trees up to the best validation round, so prediction and saving need no
                # bookkeeping. (lightgbm.train returns a booster rebuilt from its text, without the Datasets.)
                booster = lightgbm.Booster(model_str=booster.model_to_string(num_iteration=booster.best_iteration))
            boosters.append(booster)
        return boosters

    @staticmethod
    def params(estimator: _GBMClassifierBase, seed: int, num_class: int) -> dict[str, Any]:
        params: dict[str, Any] = {
            "objective": "binary" if num_class == 1 else "multiclass",
            "learning_rate": estimator.learning_rate,
            "num_leaves": estimator.num_leaves,
            "max_depth": estimator.max_depth,
            "min_data_in_leaf": estimator.min_child_samples,
            "min_sum_hessian_in_leaf": estimator.min_child_weight,
            "bagging_fraction": estimator.subsample,
            "bagging_freq": 1 if estimator.subsample < 1.0 else 0,
            "feature_fraction": estimator.colsample,
            "lambda_l2": estimator.reg_lambda,
            "seed": seed,
            # 0: OpenMP's thread count, limited to n_jobs below. The saved model lists its parameters, and a
            # num_threads of n_jobs would be the one byte in which the same trees differ between thread budgets.
            "num_threads": 0,
            "deterministic": True,
            "force_col_wise": True,
            "verbosity": -1,
        }
        if num_class > 1:
            params["num_class"] = num_class
        return params

    @staticmethod
    def n_rounds(booster: lightgbm.Booster) -> int:
        return booster.current_iteration()

    @staticmethod
    def margin(booster: lightgbm.Booster, X: np.ndarray, n_jobs: int, init: np.ndarray | None) -> np.ndarray:
        raw = booster.predict(X, raw_score=True, num_threads=n_jobs)
        return raw if init is None else raw + init  # LightGBM keeps no init score in its model

    @staticmethod
    def contributions(booster: lightgbm.Booster, X: np.ndarray, n_jobs: int) -> np.ndarray:
        values = booster.predict(X, pred_contrib=True, num_threads=n_jobs)
        n_outputs = booster.num_model_per_iteration()
        return values.reshape(X.shape[0], n_outputs, X.shape[1] + 1).transpose(0, 2, 1)

    @staticmethod
    def save(booster: lightgbm.Booster, path: Path) -> None:
        booster.save_model(str(path))

    @staticmethod
    def load(path: Path, n_jobs: int) -> lightgbm.Booster:
        return lightgbm.Booster(model_file=str(path))


class _XGBoostBackend:
    """XGBoost boosters through ``xgboost.train`` (hist, leaf-wise like LightGBM); models saved as JSON."""

    suffix = ".json"

    @staticmethod
    def train(estimator: _GBMClassifierBase, seed: int, tasks: list[_BoosterTask]) -> list[xgboost.Booster]:
        X, y, w, m = tasks[0][1]
        # One binned matrix (and one for early stopping) serves every booster of the fit, as for LightGBM.
        # QuantileDMatrix holds only the binned values (1 byte per value; a DMatrix also holds every value with
        # its column index, 8 bytes); the boosters are the same bit for bit (`hist` bins either the same way).
        train_matrix = xgboost.QuantileDMatrix(X, label=y, weight=w, base_margin=m, nthread=estimator.n_jobs)
        valid_matrix = None
        boosters = []
        for num_class, (_, y, _, m), valid in tasks:
            train_matrix.set_label(y)
            if m is not None:
                train_matrix.set_base_margin(m)
            evals, rounds = [], None
            if valid is not None:
                Xv, yv, wv, mv = valid
                if valid_matrix is None:
                    valid_matrix = xgboost.QuantileDMatrix(Xv, label=yv, weight=wv, base_margin=mv,
                                                           nthread=estimator.n_jobs, ref=train_matrix)
                valid_matrix.set_label(yv)
                if mv is not None:
                    valid_matrix.set_base_margin(mv)
                evals, rounds = [(valid_matrix, "validation")], estimator.early_stopping_rounds
            booster = xgboost.train(_XGBoostBackend.params(estimator, seed, num_class), train_matrix,
                                    num_boost_round=estimator.n_estimators, evals=evals,
                                    early_stopping_rounds=rounds, verbose_eval=False)
            boosters.append(booster if valid is None else booster[: booster.best_iteration + 1])
        return boosters

    @staticmethod
    def params(estimator: _GBMClassifierBase, seed: int, num_class: int) -> dict[str, Any]:
        params: dict[str, Any] = {
            "objective": "binary:logistic" if num_class == 1 else "multi:softprob",
            "eval_metric": "logloss" if num_class == 1 else "mlogloss",
            "tree_method": "hist",
            "grow_policy": "lossguide",
            "eta": estimator.learning_rate,
            "max_leaves": estimator.num_leaves,
            "max_depth": max(estimator.max_depth, 0),
            "min_child_weight": estimator.min_child_weight,
            "subsample": estimator.subsample,
            "colsample_bytree": estimator.colsample,
            "lambda": estimator.reg_lambda,
            "seed": seed,
            "nthread": estimator.n_jobs,
            "verbosity": 0,
        }
        if num_class > 1:
            params["num_class"] = num_class
        return params

    @staticmethod
    def n_rounds(booster: xgboost.Booster) -> int:
        return booster.num_boosted_rounds()

    @staticmethod
    def margin(booster: xgboost.Booster, X: np.ndarray, n_jobs: int, init: np.ndarray | None) -> np.ndarray:
        # a base margin replaces the model's base_score, as in training
        return booster.predict(xgboost.DMatrix(X, base_margin=init, nthread=n_jobs), output_margin=True)

    @staticmethod
    def contributions(booster: xgboost.Booster, X: np.ndarray, n_jobs: int) -> np.ndarray:
        values = booster.predict(xgboost.DMatrix(X, nthread=n_jobs), pred_contribs=True)
        if values.ndim == 2:
            return values[:, :, np.newaxis]
        return values.transpose(0, 2, 1)

    @staticmethod
    def save(booster: xgboost.Booster, path: Path) -> None:
        booster.save_model(str(path))

    @staticmethod
    def load(path: Path, n_jobs: int) -> xgboost.Booster:
        booster = xgboost.Booster(params={"nthread": n_jobs})
        booster.load_model(str(path))
        return booster


_BACKEND_IMPLEMENTATIONS = {"lightgbm": _LightGBMBackend, "xgboost": _XGBoostBackend}


# --- estimators -------------------------------------------------------------------------------------------


class _GBMClassifierBase(ClassifierMixin, BaseEstimator):
    """Parameters, validation, backends, SHAP and native (de)serialisation shared by both classifiers.

    Parameters
    ----------
    backend : "lightgbm" or "xgboost".
    n_estimators : maximum number of boosting rounds per booster.
    learning_rate : shrinkage per round.
    num_leaves : maximum leaves per tree (both backends grow trees leaf-wise).
    max_depth : maximum tree depth; <= 0 means no limit.
    min_child_samples : minimum rows per leaf (LightGBM ``min_data_in_leaf``; XGBoost has no row-count limit).
    min_child_weight : minimum hessian sum per leaf (LightGBM ``min_sum_hessian_in_leaf``, XGBoost
        ``min_child_weight``).
    subsample : fraction of rows drawn for each tree (without replacement).
    colsample : fraction of features drawn for each tree.
    reg_lambda : L2 penalty on leaf values.
    random_state : int, RandomState or None; seeds the boosters and the internal validation split.
    early_stopping_rounds : stop a booster when its validation log loss has not improved for this many rounds
        and keep the trees up to the best round; None trains ``n_estimators`` rounds on all rows.
    validation_fraction : share of the rows held out (stratified by class) for early stopping when ``fit`` gets
        no ``eval_set``. Rows of one group (study) may land on both sides of this split; pass ``eval_set`` for
        a grouped split.
    n_jobs : threads per booster (fitting and predicting); the models are the same bit for bit with any number
        (LightGBM ``deterministic``, XGBoost ``hist``), and it is not saved: a loaded estimator has 1.

    Rows with zero sample weight are removed before training: they carry no loss, and removing them keeps them
    out of LightGBM's row counts (``min_child_samples``) and histogram bins.
    """

    def __init__(
        self,
        backend: str = "lightgbm",
        n_estimators: int = 300,
        learning_rate: float = 0.05,
        num_leaves: int = 15,
        max_depth: int = -1,
        min_child_samples: int = 20,
        min_child_weight: float = 1e-3,
        subsample: float = 0.8,
        colsample: float = 0.8,
        reg_lambda: float = 1.0,
        random_state: int | np.random.RandomState | None = 0,
        early_stopping_rounds: int | None = None,
        validation_fraction: float = 0.15,
        n_jobs: int = 1,
    ):
        self.backend = backend
        self.n_estimators = n_estimators
        self.learning_rate = learning_rate
        self.num_leaves = num_leaves
        self.max_depth = max_depth
        self.min_child_samples = min_child_samples
        self.min_child_weight = min_child_weight
        self.subsample = subsample
        self.colsample = colsample
        self.reg_lambda = reg_lambda
        self.random_state = random_state
        self.early_stopping_rounds = early_stopping_rounds
        self.validation_fraction = validation_fraction
        self.n_jobs = n_jobs

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.allow_nan = True
        return tags

    # -- validation --------------------------------------------------------------------------------------

    def _check_params(self) -> None:
        problems = []
        if self.backend not in BACKENDS:
            problems.append(f"backend={self.backend!r} (expected one of {', '.join(BACKENDS)})")
        for name, low in (("n_estimators", 1), ("num_leaves", 2), ("min_child_samples", 1), ("n_jobs", 1)):
            value = getattr(self, name)
            if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < low:
                problems.append(f"{name}={value!r} (expected an integer >= {low})")
        if not isinstance(self.max_depth, (int, np.integer)) or isinstance(self.max_depth, bool):
            problems.append(f"max_depth={self.max_depth!r} (expected an integer; <= 0 means no limit)")
        if not self.learning_rate > 0:
            problems.append(f"learning_rate={self.learning_rate!r} (expected > 0)")
        for name in ("subsample", "colsample"):
            value = getattr(self, name)
            if not 0.0 < value <= 1.0:
                problems.append(f"{name}={value!r} (expected a fraction in (0, 1])")
        for name in ("reg_lambda", "min_child_weight"):
            if not getattr(self, name) >= 0:
                problems.append(f"{name}={getattr(self, name)!r} (expected >= 0)")
        rounds = self.early_stopping_rounds
        if rounds is not None and (not isinstance(rounds, (int, np.integer)) or isinstance(rounds, bool) or rounds < 1):
            problems.append(f"early_stopping_rounds={rounds!r} (expected None or an integer >= 1)")
        if not 0.0 < self.validation_fraction < 1.0:
            problems.append(f"validation_fraction={self.validation_fraction!r} (expected a fraction in (0, 1))")
        if problems:
            raise ValueError(f"{type(self).__name__}: invalid parameters: {'; '.join(problems)}")

    def _validate_X(self, X, *, reset: bool) -> np.ndarray:
        return validate_data(self, X, reset=reset, dtype=_FEATURE_DTYPES, ensure_all_finite="allow-nan")

    def _encode_labels(self, y: np.ndarray, what: str) -> np.ndarray:
        """Labels -> indices into ``classes_``; labels not seen in training raise ``ValueError``."""
        index = np.searchsorted(self.classes_, y)
        index = np.clip(index, 0, len(self.classes_) - 1)
        unknown = self.classes_[index] != y
        if np.any(unknown):
            raise ValueError(
                f"{what} holds labels {sorted(set(np.asarray(y)[unknown].tolist()))} that are not among the "
                f"training classes {self.classes_.tolist()}"
            )
        return index

    # -- fitting -----------------------------------------------------------------------------------------

    def fit(self, X, y, sample_weight=None, eval_set=None, init_proba=None, eval_init_proba=None):
        """Fit the boosters.

        X : (n_samples, n_features) array-like or DataFrame; NaN allowed, infinity not; float32 stays float32.
        y : (n_samples,) labels of any sortable type; ``classes_`` is their sorted unique values.
        sample_weight : (n_samples,) non-negative weights, or None for ones.
        eval_set : optional ``(X_val, y_val)`` or ``(X_val, y_val, w_val)`` used for early stopping instead of an
            internal split; needs ``early_stopping_rounds``.
        init_proba : optional (n_samples, K) probabilities of the K classes of ``y`` (columns in ``classes_``
            order, positive; rows are renormalised) to boost from: every booster starts from their margin
            (:meth:`margin_of_proba`) instead of a constant, and the fitted model needs them at prediction.
        eval_init_proba : the same for ``eval_set``'s rows; given exactly when both ``eval_set`` and
            ``init_proba`` are.
        Returns self.
        """
        self._check_params()
        X, y = validate_data(self, X, y, dtype=_FEATURE_DTYPES, ensure_all_finite="allow-nan")
        check_classification_targets(y)
        weight = _check_sample_weight(sample_weight, X, dtype=np.float64, ensure_non_negative=True)
        self.classes_ = np.unique(y)
        self.boosted_from_proba_ = init_proba is not None
        if (eval_init_proba is not None) != (init_proba is not None and eval_set is not None):
            raise ValueError("eval_init_proba is needed exactly when both eval_set and init_proba are given")
        margin = self._init_margin(init_proba, len(X), "init_proba")
        y_index = np.searchsorted(self.classes_, y)
        kept = weight > 0
        if not kept.all():  # (a boolean index copies X even when it keeps every row)
            X, y_index, weight = X[kept], y_index[kept], weight[kept]
            margin = None if margin is None else margin[kept]
        present = np.unique(y_index)
        if len(present) < 2:
            seen = self.classes_[present].tolist()
            raise ValueError(
                f"{type(self).__name__} needs at least two classes with positive sample weight; y has only one "
                f"class {seen}"
            )
        seed = int(check_random_state(self.random_state).randint(np.iinfo(np.int32).max))
        train, valid = self._early_stopping_split(X, y_index, weight, margin, eval_set, eval_init_proba, seed)
        backend = _BACKEND_IMPLEMENTATIONS[self.backend]
        self.boosters_ = backend.train(self, seed, list(self._booster_tasks(train, valid)))
        self.n_rounds_ = [backend.n_rounds(booster) for booster in self.boosters_]
        return self

    def _init_margin(self, init_proba, n_rows: int, what: str) -> np.ndarray | None:
        """Validated ``init_proba`` (n_rows, K) -> (n_rows, n_outputs) margins; None stays None."""
        if init_proba is None:
            return None
        proba = np.asarray(init_proba, dtype=np.float64)
        if proba.shape != (n_rows, len(self.classes_)):
            raise ValueError(f"{what} must have shape ({n_rows}, {len(self.classes_)}): one probability per row and "
                             f"class {self.classes_.tolist()}, got {proba.shape}")
        if not (np.all(np.isfinite(proba)) and np.all(proba > 0)):
            raise ValueError(f"{what} must hold positive, finite probabilities")
        return self.margin_of_proba(proba / proba.sum(axis=1, keepdims=True))

    def _early_stopping_split(self, X, y_index, weight, margin, eval_set, eval_init_proba, seed):
        """((X, y, w, margin) to train on, (X, y, w, margin) to stop on or None); ``y`` as indices into
        ``classes_``, ``margin`` the init margins (:meth:`_init_margin`) or None."""
        if self.early_stopping_rounds is None:
            if eval_set is not None:
                raise ValueError("eval_set is given but early_stopping_rounds is None: set early_stopping_rounds")
            return (X, y_index, weight, margin), None
        if eval_set is not None:
            if len(eval_set) not in (2, 3):
                raise ValueError("eval_set must be a tuple (X_val, y_val) or (X_val, y_val, sample_weight_val)")
            X_val = self._validate_X(eval_set[0], reset=False)
            y_val = np.asarray(eval_set[1])
            if y_val.ndim != 1 or len(y_val) != len(X_val):
                raise ValueError(f"eval_set: y_val must be 1-D with {len(X_val)} labels, got shape {y_val.shape}")
            w_val = _check_sample_weight(
                eval_set[2] if len(eval_set) == 3 else None, X_val, dtype=np.float64, ensure_non_negative=True
            )
            return (X, y_index, weight, margin), (X_val, self._encode_labels(y_val, "eval_set"), w_val,
                                                  self._init_margin(eval_init_proba, len(X_val), "eval_init_proba"))
        n_classes = len(np.unique(y_index))
        n_valid = int(np.ceil(self.validation_fraction * len(y_index)))
        counts = np.bincount(y_index)
        can_stratify = counts[counts > 0].min() >= 2 and n_classes <= n_valid <= len(y_index) - n_classes
        stratify = y_index if can_stratify else None
        if stratify is None:
            logger.warning("early stopping split of %d rows is not stratified: too few rows per class", len(y_index))
        train_rows, valid_rows = train_test_split(
            np.arange(len(y_index)), test_size=self.validation_fraction, stratify=stratify, random_state=seed
        )
        if len(np.unique(y_index[train_rows])) < 2:
            raise ValueError(
                f"{len(y_index)} rows are too few to hold out {self.validation_fraction:.0%} for early stopping "
                "and keep two classes to train on; set early_stopping_rounds=None or pass eval_set"
            )
        return tuple(
            (X[rows], y_index[rows], weight[rows], None if margin is None else margin[rows])
            for rows in (train_rows, valid_rows)
        )

    def _booster_tasks(self, train: _Part, valid: _Part | None):
        """Yield (num_class, train part, valid part or None) per booster to fit (:data:`_Part`: the booster's
        target and its column(s) of the init margins)."""
        raise NotImplementedError

    @staticmethod
    def margin_of_proba(proba: np.ndarray) -> np.ndarray:
        """(n_samples, K) class probabilities -> the (n_samples, n_outputs) margins of :meth:`raw_margin` that
        predict exactly them (the inverse of the class's link)."""
        raise NotImplementedError

    # -- prediction --------------------------------------------------------------------------------------

    def raw_margin(self, X, init_proba=None) -> np.ndarray:
        """Raw outputs (log-odds / softmax logits), shape (n_samples, n_outputs): the boosters' plus, for a model
        fitted with ``init_proba``, the margins of ``init_proba`` (n_samples, K), which it then needs.

        Ordinal: n_outputs = K-1, column ``k`` the log-odds of ``P(y > classes_[k])`` before monotone
        rearrangement. Multiclass: K softmax logits, or one log-odds of ``classes_[1]`` when K = 2.
        """
        check_is_fitted(self)
        X = self._validate_X(X, reset=False)
        if (init_proba is not None) != self.boosted_from_proba_:
            raise ValueError("this model was fitted with init_proba and predicts only with it" if
                             self.boosted_from_proba_ else "this model was fitted without init_proba; do not pass it")
        margin = self._init_margin(init_proba, X.shape[0], "init_proba")
        backend = _BACKEND_IMPLEMENTATIONS[self.backend]
        outputs = [backend.margin(booster, X, self.n_jobs, init).reshape(X.shape[0], -1)
                   for booster, init in zip(self.boosters_, self._booster_margins(margin, len(self.boosters_)))]
        return np.hstack(outputs).astype(np.float64)

    @staticmethod
    def _booster_margins(margin: np.ndarray | None, n_boosters: int) -> list[np.ndarray | None]:
        """Each booster's part of the (n_samples, n_outputs) init margins: column k of booster k when there is one
        output per booster, all columns of a single softmax booster; Nones without margins."""
        if margin is None:
            return [None] * n_boosters
        if margin.shape[1] == n_boosters:
            return [np.ascontiguousarray(margin[:, k]) for k in range(n_boosters)]
        return [margin]

    def predict(self, X, init_proba=None) -> np.ndarray:
        """The most probable class per row, shape (n_samples,), values from ``classes_``."""
        proba = self.predict_proba(X, init_proba)
        return self.classes_[np.argmax(proba, axis=1)]

    def shap_values(self, X) -> np.ndarray:
        """Exact TreeSHAP contributions to the raw margin, shape (n_samples, n_features + 1, n_outputs).

        ``[:, j, m]`` is feature ``j``'s contribution to output ``m`` of :meth:`raw_margin`; the last feature
        slot ``[:, n_features, m]`` is the bias (the booster's expected margin). Summed over axis 1 they give
        :meth:`raw_margin` (up to float32 rounding in XGBoost; without the init margins of a model fitted with
        ``init_proba``). Computed by the boosters themselves (LightGBM
        ``pred_contrib=True``, XGBoost ``pred_contribs=True``).
        """
        check_is_fitted(self)
        X = self._validate_X(X, reset=False)
        backend = _BACKEND_IMPLEMENTATIONS[self.backend]
        parts = [backend.contributions(booster, X, self.n_jobs) for booster in self.boosters_]
        return np.concatenate(parts, axis=2).astype(np.float64)

    # -- native serialisation ----------------------------------------------------------------------------

    def to_native(self, directory: str | Path) -> Path:
        """Write the boosters in their native formats plus ``estimator.json`` into ``directory`` (created).

        Files: ``model_<k>.txt`` (LightGBM text) or ``model_<k>.json`` (XGBoost JSON), one per booster, and
        ``estimator.json`` with the class name, parameters (not ``n_jobs``), classes (and their dtype),
        ``n_features_in_`` and ``feature_names_in_``. Returns the directory.
        """
        check_is_fitted(self)
        # n_jobs is how many threads fitted it, which changes nothing in the model (the file would differ by it)
        params = {name: value for name, value in self.get_params().items() if name != "n_jobs"}
        if not (params["random_state"] is None or isinstance(params["random_state"], (int, np.integer))):
            raise ValueError("to_native needs random_state to be an int or None, not a RandomState instance")
        params["random_state"] = None if params["random_state"] is None else int(params["random_state"])
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        backend = _BACKEND_IMPLEMENTATIONS[self.backend]
        files = []
        for k, booster in enumerate(self.boosters_):
            path = directory / f"model_{k}{backend.suffix}"
            backend.save(booster, path)
            files.append(path.name)
        feature_names = getattr(self, "feature_names_in_", None)
        card = {
            "format": NATIVE_FORMAT,
            "estimator": type(self).__name__,
            "params": params,
            "classes": self.classes_.tolist(),
            "classes_dtype": self.classes_.dtype.str,
            "n_features_in": int(self.n_features_in_),
            "feature_names_in": None if feature_names is None else [str(name) for name in feature_names],
            "booster_files": files,
            "n_rounds": [int(n) for n in self.n_rounds_],
            "boosted_from_proba": bool(self.boosted_from_proba_),
            "versions": {"lightgbm": lightgbm.__version__, "xgboost": xgboost.__version__},
        }
        (directory / ESTIMATOR_FILE).write_text(json.dumps(card, indent=2))
        return directory

    @classmethod
    def from_native(cls, directory: str | Path):
        """Load an estimator written by :meth:`to_native`; predictions are identical to the saved one's."""
        directory = Path(directory)
        card_path = directory / ESTIMATOR_FILE
        try:
            card = json.loads(card_path.read_text())
        except FileNotFoundError:
            raise MissingInputError(f"{card_path} does not exist: save the model with to_native() first") from None
        except json.JSONDecodeError as exc:
            raise DataError(f"{card_path} is not valid JSON ({exc}); save the model again with to_native()") from None
        if card.get("format") != NATIVE_FORMAT or card.get("estimator") != cls.__name__:
            raise DataError(
                f"{card_path} holds {card.get('estimator')!r} in format {card.get('format')!r}; "
                f"{cls.__name__}.from_native reads format {NATIVE_FORMAT!r} written by {cls.__name__}.to_native"
            )
        estimator = cls(**card["params"])
        backend = _BACKEND_IMPLEMENTATIONS[estimator.backend]
        missing = [name for name in card["booster_files"] if not (directory / name).is_file()]
        if missing:
            raise MissingInputError(f"{directory}: booster files {missing} listed in {ESTIMATOR_FILE} are missing")
        estimator.classes_ = np.array(card["classes"], dtype=np.dtype(card["classes_dtype"]))
        estimator.n_features_in_ = card["n_features_in"]
        if card["feature_names_in"] is not None:
            estimator.feature_names_in_ = np.array(card["feature_names_in"], dtype=object)
        estimator.boosters_ = [backend.load(directory / name, estimator.n_jobs) for name in card["booster_files"]]
        estimator.n_rounds_ = list(card["n_rounds"])
        estimator.boosted_from_proba_ = bool(card.get("boosted_from_proba", False))
        return estimator


class OrdinalGBMClassifier(_GBMClassifierBase):
    """Ordinal classifier from K-1 cumulative binary boosters ``P(y > classes_[k])``.

    Parameters are those of :class:`_GBMClassifierBase`. Fitted attributes: ``classes_`` (K,) sorted labels,
    ``n_features_in_``, ``feature_names_in_`` (DataFrame input only), ``boosters_`` (K-1 boosters, booster
    ``k`` for ``P(y > classes_[k])``; all sample weights are passed through), ``n_rounds_`` (boosting rounds
    kept per booster). Probabilities come from :func:`cumulative_to_proba`.
    """

    def _booster_tasks(self, train, valid):
        n_boosters = len(self.classes_) - 1
        train_margins = self._booster_margins(train[3], n_boosters)
        valid_margins = self._booster_margins(None if valid is None else valid[3], n_boosters)
        for k in range(n_boosters):
            valid_k = None if valid is None else (valid[0], (valid[1] > k).astype(np.float64), valid[2],
                                                  valid_margins[k])
            yield 1, (train[0], (train[1] > k).astype(np.float64), train[2], train_margins[k]), valid_k

    @staticmethod
    def margin_of_proba(proba: np.ndarray) -> np.ndarray:
        """(n, K) class probabilities -> (n, K-1) log-odds of ``P(y > classes_[k])``, clipped to +-36."""
        above = np.cumsum(np.asarray(proba, dtype=np.float64)[:, ::-1], axis=1)[:, ::-1][:, 1:]
        return np.clip(logit(above), -_MAX_MARGIN, _MAX_MARGIN)

    def predict_proba(self, X, init_proba=None) -> np.ndarray:
        """Class probabilities, shape (n_samples, K), columns in the order of ``classes_``; rows sum to 1.
        ``init_proba``: as for :meth:`raw_margin`."""
        return cumulative_to_proba(expit(self.raw_margin(X, init_proba)))


class MulticlassGBMClassifier(_GBMClassifierBase):
    """Plain multiclass classifier: one softmax booster (a logistic one when K = 2).

    Same parameters and fitted attributes as :class:`OrdinalGBMClassifier`, with ``boosters_`` holding a
    single booster.
    """

    def _booster_tasks(self, train, valid):
        n_classes = len(self.classes_)
        num_class = 1 if n_classes == 2 else n_classes

        def part(data):
            margin = data[3] if data[3] is None or num_class > 1 else data[3][:, 0]
            return data[0], data[1].astype(np.float64), data[2], margin

        yield num_class, part(train), None if valid is None else part(valid)

    @staticmethod
    def margin_of_proba(proba: np.ndarray) -> np.ndarray:
        """(n, K) class probabilities -> (n, K) log-probabilities (softmax logits), or for K = 2 the (n, 1)
        log-odds of ``classes_[1]``; clipped to +-36."""
        proba = np.asarray(proba, dtype=np.float64)
        margin = logit(proba[:, 1:]) if proba.shape[1] == 2 else np.log(proba)
        return np.clip(margin, -_MAX_MARGIN, _MAX_MARGIN)

    def predict_proba(self, X, init_proba=None) -> np.ndarray:
        """Class probabilities, shape (n_samples, K), columns in the order of ``classes_``; rows sum to 1.
        ``init_proba``: as for :meth:`raw_margin`."""
        margin = self.raw_margin(X, init_proba)
        if len(self.classes_) == 2:
            positive = expit(margin[:, 0])
            return np.column_stack([1.0 - positive, positive])
        return softmax(margin, axis=1)
