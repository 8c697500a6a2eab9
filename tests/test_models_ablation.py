"""The extractor ablation: out-of-fold scores on each extractor alone, without each, and on all."""

from __future__ import annotations

import pytest
from models_synthetic import make_feature_table

from radiospine.config import ModelsConfig
from radiospine.models.ablation import ablation_markdown, extractor_ablation
from radiospine.models.condition_models import prepare_features, train_condition_models

CONFIG = ModelsConfig.model_validate(
    {"n_folds": 3, "members": [{"backend": "lightgbm", "formulation": "ordinal"}],
     "gbm": {"n_estimators": 40, "learning_rate": 0.15, "min_child_samples": 10, "early_stopping_rounds": 8}})


@pytest.fixture(scope="module")
def synthetic():
    # The informative columns are radiomics columns; the CNN columns are noise.
    return make_feature_table(n_studies=45, n_features=14, n_informative=4, seed=11)


def test_ablation_scores_each_extractor_and_says_which_helped(synthetic):
    prepared = prepare_features(synthetic.features)
    trained = train_condition_models(prepared, synthetic.labels, CONFIG)
    record = extractor_ablation(prepared, synthetic.labels, CONFIG, all_report=trained.report)
    assert record["extractors"] == ["cnn", "radiomics"] and record["all"] == "cnn+radiomics"
    assert set(record["runs"]) == {"cnn", "radiomics", "cnn+radiomics"}
    assert record["runs"]["cnn+radiomics"]["score"] == pytest.approx(
        trained.report["cv_scores"]["final"]["all"]["score"])
    assert record["runs"]["cnn"]["n_feature_columns"] + record["runs"]["radiomics"]["n_feature_columns"] == \
        record["runs"]["cnn+radiomics"]["n_feature_columns"] == len(prepared.columns)
    # Noise-only CNN columns score far worse alone; the informative radiomics columns help.
    assert record["runs"]["cnn"]["score"] > record["runs"]["radiomics"]["score"] + 0.05
    assert record["helped"]["radiomics"] is True and record["gain"]["radiomics"] > 0.05
    assert record["gain"]["cnn"] == pytest.approx(
        record["runs"]["radiomics"]["score"] - record["runs"]["cnn+radiomics"]["score"], abs=1e-6)
    assert record["helped"]["cnn"] == (record["gain"]["cnn"] > 0)

    # The same record when the models on all extractors are trained by the ablation itself (same seeds).
    again = extractor_ablation(prepared, synthetic.labels, CONFIG)
    assert again == record

    table = ablation_markdown(record)
    assert "| cnn + radiomics (all) | 14 |" in table and "| radiomics alone | 7 |" in table
    assert "- radiomics helped" in table


def test_one_extractor_has_nothing_to_ablate(synthetic):
    prepared = prepare_features(synthetic.features, ("radiomics",))
    record = extractor_ablation(prepared, synthetic.labels, CONFIG)
    assert list(record["runs"]) == ["radiomics"] and record["gain"] == {} and record["helped"] == {}
    assert "| radiomics | 7 |" in ablation_markdown(record)
