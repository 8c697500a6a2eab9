"""Models on the feature table: ordinal GBM estimators (sklearn API), calibration, blending, grouped CV and the
per-condition training driver.

* :mod:`radiospine.models.ordinal`: ``OrdinalGBMClassifier`` / ``MulticlassGBMClassifier`` (LightGBM or XGBoost),
  native save/load, exact TreeSHAP.
* :mod:`radiospine.models.calibration`: temperature / vector / isotonic calibrators, ``AnySevereAdjuster``.
* :mod:`radiospine.models.ensemble`: convex blend weights chosen out of fold.
* :mod:`radiospine.models.cv`: study-grouped stratified folds, out-of-fold predictions, metric per fold.
* :mod:`radiospine.models.condition_models`: ``train_condition_models`` -> ``TrainedModels`` (predict, save, load).

Synthetic feature tables live with the tests (``tests/models_synthetic.py``), the ordinal-vs-multiclass
measurement with the benchmarks (``benchmarks/bench_formulations.py``).
"""
