"""Per-target models (radiospine.models.target_models) for the spider task on a synthetic feature table, the
K-grade ordinal GBM, and the task labels table (radiospine.labels.load_task_labels / write_task_labels)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from models_synthetic import make_feature_table
from sklearn.metrics import log_loss

from radiospine import vocab
from radiospine.config import ModelMember, ModelsConfig
from radiospine.errors import DataError
from radiospine.labels import load_task_labels, write_task_labels
from radiospine.models.ordinal import OrdinalGBMClassifier
from radiospine.models.target_models import TrainedTargetModels, study_folds, train_target_models
from radiospine.task import SPIDER

CONFIG = ModelsConfig(members=(ModelMember(backend="lightgbm", formulation="ordinal"),), n_folds=3,
                      gbm=dict(n_estimators=60, learning_rate=0.1, min_child_samples=5, colsample=1.0,
                               early_stopping_rounds=None))


def spider_table(n_studies: int = 36, seed: int = 0) -> tuple[pd.DataFrame, pd.DataFrame]:
    """A feature table (25 RSNA keys per study) and spider task labels driven by the spinal rows' latent."""
    synthetic = make_feature_table(n_studies, 10, n_informative=4, failure_fraction=0.0, seed=seed)
    spinal = (synthetic.features["condition"] == vocab.SPINAL).to_numpy()
    keys = synthetic.features.loc[spinal, ["study_id", "level"]].reset_index(drop=True)
    latent = synthetic.latent[spinal]
    pfirrmann = np.searchsorted(np.quantile(latent, [0.15, 0.3, 0.6, 0.8]), latent)
    rows = [keys.assign(target="pfirrmann_grade", grade=pfirrmann)]
    for offset, name in enumerate(SPIDER.target_names[1:]):
        rows.append(keys.assign(target=name, grade=(latent > np.quantile(latent, 0.4 + 0.1 * offset)).astype(int)))
    labels = pd.concat(rows, ignore_index=True)[["study_id", "target", "level", "grade"]]
    labels["grade"] = labels["grade"].astype("Int8")
    return synthetic.features, labels


def test_ordinal_gbm_handles_five_grades() -> None:
    features, labels = spider_table()
    spinal = features[features["condition"] == vocab.SPINAL].reset_index(drop=True)
    X = spinal.filter(like="radiomics__sagittal_t2")
    y = labels[labels["target"] == "pfirrmann_grade"]["grade"].to_numpy(np.int64)
    train = np.arange(len(y)) % 4 != 0
    model = OrdinalGBMClassifier(n_estimators=40, learning_rate=0.1, min_child_samples=5).fit(X[train], y[train])
    assert model.classes_.tolist() == [0, 1, 2, 3, 4] and len(model.boosters_) == 4
    proba = model.predict_proba(X[~train])
    assert proba.shape == ((~train).sum(), 5) and (proba >= 0).all() and np.allclose(proba.sum(axis=1), 1)
    prior = np.bincount(y[train], minlength=5) / train.sum()
    assert log_loss(y[~train], proba, labels=range(5)) < log_loss(y[~train], np.tile(prior, ((~train).sum(), 1)),
                                                                   labels=range(5))


def test_target_models_beat_the_level_prior_out_of_fold(tmp_path) -> None:
    features, labels = spider_table()
    trained = train_target_models(features, labels, SPIDER, CONFIG)
    scores = pd.DataFrame(trained.report["oof_scores"]).set_index("target")
    assert scores.index.tolist() == list(SPIDER.target_names) and (scores["n"] == 36 * 5).all()
    assert (scores["log_loss_reduction"] > 0.1).all()
    assert scores.loc["pfirrmann_grade", "qwk"] > 0.5 and np.isnan(scores.loc["pfirrmann_grade", "auc"])
    assert (scores.drop(index="pfirrmann_grade")["auc"] > 0.75).all()
    oof = trained.oof_predictions
    assert list(oof.columns) == ["study_id", "target", "level", "p0", "p1", "p2", "p3", "p4"]
    binary = oof[oof["target"] != "pfirrmann_grade"]
    assert binary[["p2", "p3", "p4"]].isna().all().all()
    assert np.allclose(binary[["p0", "p1"]].sum(axis=1), 1)
    assert np.allclose(oof.loc[oof["target"] == "pfirrmann_grade", ["p0", "p1", "p2", "p3", "p4"]].sum(axis=1), 1)
    # only the sagittal T2 columns of the spinal rows (and the level) are used
    assert all(c.startswith("radiomics__sagittal_t2__") or c == "key__level" for c in trained.models[0].feature_columns)

    trained.save(tmp_path)
    loaded = TrainedTargetModels.load(tmp_path)
    study_ids = sorted(set(features["study_id"]))
    missing = max(study_ids) + 1  # a study without features: every row from the prior
    before, _ = trained.predict(features, [*study_ids, missing])
    after, filled_after = loaded.predict(features, [*study_ids, missing])
    pd.testing.assert_frame_equal(before, after)
    assert len(before) == (len(study_ids) + 1) * 25
    assert filled_after["study_id"].unique().tolist() == [missing] and len(filled_after) == 25
    from_prior = after[after["study_id"] == missing].set_index(["target", "level"])
    model = loaded.models[0]
    assert from_prior.loc[("pfirrmann_grade", "l4_l5"), ["p0", "p1", "p2", "p3", "p4"]].tolist() == pytest.approx(
        model.prior[3].tolist())
    with pytest.raises(DataError, match="lacks 1 column"):
        loaded.predict(features.drop(columns=model.feature_columns[0]), study_ids)


def test_a_fold_with_one_grade_is_predicted_by_the_prior_and_one_grade_overall_is_an_error() -> None:
    features, labels = spider_table(n_studies=12, seed=1)
    rare = labels["target"] == "disc_herniation"
    labels.loc[rare, "grade"] = 0
    first = labels["study_id"].iloc[0]
    labels.loc[rare & (labels["study_id"] == first) & (labels["level"] == "l4_l5"), "grade"] = 1
    trained = train_target_models(features, labels, SPIDER, CONFIG)
    oof = trained.oof_predictions
    held = oof[(oof["target"] == "disc_herniation") & (oof["study_id"] == first)]
    folds = study_folds(labels["study_id"], CONFIG.n_folds, CONFIG.seed)
    n_train = int((folds != folds[first]).sum())  # the other folds' studies: grade 0 at every level
    assert held["p1"].tolist() == pytest.approx([1 / (n_train + 2)] * 5)  # (0 + 1) / (n_train + 2)
    labels.loc[rare, "grade"] = 0
    with pytest.raises(DataError, match="disc_herniation has 1 grade"):
        train_target_models(features, labels, SPIDER, CONFIG)


def test_study_folds_cover_every_study_once() -> None:
    folds = study_folds([5, 3, 3, 9, 1, 7], 3, seed=0)
    assert folds.index.tolist() == [1, 3, 5, 7, 9] and sorted(folds.unique()) == [0, 1, 2]
    with pytest.raises(DataError, match="2 labelled studies cannot be split into 3 folds"):
        study_folds([1, 2], 3, seed=0)


def test_task_labels_round_trip_and_errors(tmp_path) -> None:
    _, labels = spider_table(n_studies=3)
    labels.loc[0, "grade"] = pd.NA
    path = write_task_labels(labels, SPIDER, tmp_path / "train_spider.csv")
    header = path.read_text().splitlines()[0].split(",")
    assert header == ["study_id", *SPIDER.target_columns]
    back = load_task_labels(path, SPIDER)
    expected = labels.sort_values("study_id", kind="stable")
    merged = back.merge(expected, on=["study_id", "target", "level"], suffixes=("", "_written"))
    assert len(back) == len(labels) == len(merged)
    assert merged["grade"].astype("Float64").fillna(-1).tolist() == merged["grade_written"].astype(
        "Float64").fillna(-1).tolist()
    assert back["grade"].isna().sum() == 1
    text = path.read_text().splitlines()
    cells = text[1].split(",")
    cells[1] = "6"
    (tmp_path / "bad.csv").write_text("\n".join([text[0], ",".join(cells), *text[2:]]) + "\n")
    with pytest.raises(DataError, match="line 2 column pfirrmann_grade_l1_l2: '6' is not a pfirrmann_grade grade"):
        load_task_labels(tmp_path / "bad.csv", SPIDER)


def _sparse_target_table(seed: int = 2) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The spider table with disc_herniation replaced by a SPIDER-like sparse finding: 9 positives in 180 rows,
    all at L4/L5 and L5/S1, unrelated to the features (as far as 36 studies can tell)."""
    features, labels = spider_table(seed=seed)
    rare = (labels["target"] == "disc_herniation").to_numpy()
    low = rare & labels["level"].isin(["l4_l5", "l5_s1"]).to_numpy()
    rng = np.random.default_rng(seed)
    labels.loc[rare, "grade"] = 0
    labels.loc[rng.choice(np.flatnonzero(low), size=9, replace=False), "grade"] = 1
    return features, labels


def test_a_target_whose_boosters_learn_nothing_predicts_its_level_prior() -> None:
    features, labels = _sparse_target_table()
    frozen = CONFIG.model_copy(update={"gbm": CONFIG.gbm.model_copy(update={"min_child_samples": 1000})})
    trained = train_target_models(features, labels, SPIDER, frozen)  # no booster can split
    scores = pd.DataFrame(trained.report["oof_scores"]).set_index("target")
    np.testing.assert_allclose(scores["weighted_log_loss"], scores["prior_weighted_log_loss"], rtol=1e-12)
    predicted, _ = trained.predict(features, sorted(set(features["study_id"])))
    for model in trained.models:
        mine = predicted[predicted["target"] == model.target.name]
        expected = model.prior[pd.Index(SPIDER.levels).get_indexer(mine["level"])]
        np.testing.assert_allclose(mine[[f"p{k}" for k in range(model.target.n_grades)]], expected, rtol=1e-12)


def test_a_sparse_finding_is_not_predicted_worse_than_its_level_prior() -> None:
    features, labels = _sparse_target_table()
    spider_like = CONFIG.model_copy(update={"gbm": CONFIG.gbm.model_copy(update={
        "n_estimators": 100, "learning_rate": 0.05, "min_child_samples": 10, "colsample": 0.5})})
    trained = train_target_models(features, labels, SPIDER, spider_like)
    herniation = pd.DataFrame(trained.report["oof_scores"]).set_index("target").loc["disc_herniation"]
    assert herniation["weighted_log_loss"] <= herniation["prior_weighted_log_loss"] + 0.005
