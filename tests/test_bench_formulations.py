"""Tests of benchmarks.bench_formulations: the ordinal-vs-multiclass comparison runs and reports its figures."""

from __future__ import annotations

import numpy as np

from benchmarks.bench_formulations import compare_formulations
from radiospine.config import GbmParams, ModelsConfig


def test_compare_formulations_reports_metric_and_time():
    gbm = GbmParams(n_estimators=10, learning_rate=0.3, min_child_samples=5, early_stopping_rounds=None)
    base = ModelsConfig(n_folds=2, gbm=gbm)
    table = compare_formulations(n_studies=16, n_features=10, n_informative=4, backends=("lightgbm",), base=base)
    assert table[["backend", "formulation"]].values.tolist() == [["lightgbm", "ordinal"], ["lightgbm", "multiclass"]]
    figures = table[["spinal", "foraminal", "subarticular", "any_severe_spinal", "score", "raw_score",
                     "weighted_log_loss"]]
    assert np.all(np.isfinite(figures.to_numpy())) and (figures.to_numpy() > 0).all()
    np.testing.assert_allclose(table["score"], table[["spinal", "foraminal", "subarticular",
                                                      "any_severe_spinal"]].mean(axis=1))
    assert (table["fit_seconds"] > 0).all() and (table["wall_seconds"] >= table["fit_seconds"]).all()
