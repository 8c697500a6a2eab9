"""Ordinal vs multiclass formulation, measured: out-of-fold metric and fit time on a synthetic feature table.

Each (backend, formulation) pair is trained as the only member through :func:`train_condition_models`, with
everything else from one base config (calibration and the any-severe adjustment included), on the same
synthetic table and folds.
"""

from __future__ import annotations

import time

import numpy as np
import pandas as pd

from radiospine import metrics, vocab
from radiospine.config import ModelMember, ModelsConfig
from radiospine.models.condition_models import train_condition_models
from tests.models_synthetic import make_feature_table


def compare_formulations(
    n_studies: int = 120,
    n_features: int = 200,
    *,
    n_informative: int = 12,
    backends: tuple[str, ...] = ("lightgbm", "xgboost"),
    formulations: tuple[str, ...] = ("ordinal", "multiclass"),
    base: ModelsConfig | None = None,
    seed: int = 0,
) -> pd.DataFrame:
    """One row per (backend, formulation): the final out-of-fold metric parts and score, the score of the
    member's raw out-of-fold probabilities before calibration and adjustment (``raw_score``), the pooled
    weighted log loss of all labelled rows (``weighted_log_loss``, final probabilities), booster fit time
    summed over folds and groups (``fit_seconds``) and the whole run's wall time (``wall_seconds``).

    The table has ``25 * n_studies`` rows and ``n_features`` features (:func:`make_feature_table`); ``base``
    (default: ``ModelsConfig()``) supplies every setting but ``members``.
    """
    base = base if base is not None else ModelsConfig()
    synthetic = make_feature_table(n_studies, n_features, n_informative=n_informative, seed=seed)
    labelled = synthetic.labels["severity"].notna().to_numpy()
    severity = synthetic.labels["severity"].to_numpy(dtype=np.float64, na_value=np.nan)[labelled].astype(np.int64)
    rows = []
    for backend in backends:
        for formulation in formulations:
            member = ModelMember(backend=backend, formulation=formulation)
            config = base.model_copy(update={"members": (member,)})
            start = time.perf_counter()
            models = train_condition_models(synthetic.features, synthetic.labels, config)
            wall = time.perf_counter() - start
            oof = models.oof_predictions[list(vocab.SEVERITIES)].to_numpy()[labelled]
            pooled = metrics.weighted_log_loss(oof[np.arange(len(severity)), severity],
                                               np.asarray(vocab.SEVERITY_WEIGHTS)[severity])
            rows.append({
                "backend": backend,
                "formulation": formulation,
                **models.report["cv_scores"]["final"]["all"],
                "raw_score": models.report["cv_scores"][member.name]["all"]["score"],
                "weighted_log_loss": pooled,
                "fit_seconds": sum(sum(group.values()) for group in models.report["fit_seconds"].values()),
                "wall_seconds": wall,
            })
    return pd.DataFrame(rows)
