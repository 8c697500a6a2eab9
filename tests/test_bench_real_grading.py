"""benchmarks/real_grading.py: the grading table's rows and Markdown on a synthetic spider feature table."""

from __future__ import annotations

import numpy as np
from test_models_target import CONFIG, spider_table

from benchmarks.real_grading import COLUMNS, FEATURE_SETS, grading_table, markdown
from radiospine.task import SPIDER


def test_grading_table_per_feature_set_and_target() -> None:
    features, labels = spider_table(n_studies=24)
    # the disc extractor's columns (benchmarks' feature sets name it), noise here
    rng = np.random.default_rng(0)
    features = features.assign(disc__status="ok", disc__sagittal_t2__marrow_ratio=rng.random(len(features)),
                               disc__sagittal_t2__height_mm=rng.normal(9.0, 2.0, len(features)))
    table, seconds = grading_table(features, labels, SPIDER, CONFIG)
    assert list(table.columns) == list(COLUMNS)
    assert table[["features", "target"]].values.tolist() == [
        [name, target] for name, _ in FEATURE_SETS for target in SPIDER.target_names]
    assert set(seconds) == {f"train_{name}" for name, _ in FEATURE_SETS}
    # the synthetic table's radiomics columns measure the latent on the spinal rows; its CNN columns are axial
    # (another view), so the CNN set has only the level to go on and stays near the prior
    radiomics = table[table["features"] == "radiomics"].set_index("target")
    assert (radiomics["log_loss_reduction"] > 0.1).all() and radiomics.loc["pfirrmann_grade", "qwk"] > 0.5
    cnn = table[table["features"] == "cnn"].set_index("target")
    assert (cnn["log_loss_reduction"] < radiomics["log_loss_reduction"]).all()
    binary = table[table["scale"] == "binary"]
    assert binary["qwk"].isna().all() and np.isfinite(binary["auc"]).all()
    text = markdown(table)
    assert text.count("\n") == 2 + len(table) and "| radiomics | pfirrmann_grade | ordinal |" in text
    assert "n/a" in text  # QWK of the binary targets
