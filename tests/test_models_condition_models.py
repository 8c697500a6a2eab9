"""Tests of radiospine.models.condition_models: groups, training driver, predictions, model card, save/load."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from models_synthetic import FAILURE_REASON, make_feature_table

from radiospine import metrics, vocab
from radiospine.config import ModelsConfig, config_hash, load_config
from radiospine.features import store as store_module
from radiospine.features.columns import LEVEL_FEATURE, SIDE_FEATURE, is_status_column, parse_column, status_column
from radiospine.models import condition_models
from radiospine.models.condition_models import (
    MODEL_CARD,
    TrainedModels,
    model_groups,
    prepare_features,
    prepare_stored_features,
    train_condition_models,
)

PROBABILITIES = list(vocab.SEVERITIES)


def feature_columns_of(features: pd.DataFrame) -> list[str]:
    """The feature columns of a synthetic feature table (not its keys, not its status columns)."""
    return [c for c in features.columns
            if c not in ("study_id", "condition", "level") and parse_column(c).kind == "feature"]


def _config(**overrides) -> ModelsConfig:
    tree = {"n_folds": 3,
            "gbm": {"n_estimators": 40, "learning_rate": 0.15, "min_child_samples": 10, "early_stopping_rounds": 8}}
    return ModelsConfig.model_validate({**tree, **overrides})


@pytest.fixture(scope="module")
def synthetic():
    return make_feature_table(n_studies=45, n_features=14, seed=7)


@pytest.fixture(scope="module")
def trained(synthetic):
    return train_condition_models(synthetic.features, synthetic.labels, _config())


def _assert_valid(predictions: pd.DataFrame, n_rows: int) -> None:
    assert list(predictions.columns) == ["study_id", "condition", "level", *PROBABILITIES]
    values = predictions[PROBABILITIES].to_numpy()
    assert values.shape == (n_rows, 3) and np.all(np.isfinite(values)) and values.min() >= 0
    np.testing.assert_allclose(values.sum(axis=1), 1.0, atol=1e-9)


@pytest.mark.parametrize(("share_sides", "share_levels", "n_groups"),
                         [(True, True, 3), (False, True, 5), (True, False, 15), (False, False, 25)])
def test_model_groups_follow_the_switches(share_sides, share_levels, n_groups):
    groups = model_groups(vocab.CONDITIONS, share_sides, share_levels)
    assert len(groups) == n_groups
    grid = pd.DataFrame([(c, lv) for c in vocab.CONDITIONS for lv in vocab.LEVELS], columns=["condition", "level"])
    coverage = np.sum([group.rows(grid) for group in groups], axis=0)
    assert np.all(coverage == 1)  # every target in exactly one group
    for group in groups:
        assert (LEVEL_FEATURE in group.key_features) == share_levels
        assert (SIDE_FEATURE in group.key_features) == (share_sides and group.base != vocab.SPINAL)
    assert {g.name for g in model_groups(vocab.CONDITIONS, False, False)} >= {
        "spinal_canal_stenosis.l1_l2", "left_subarticular_stenosis.l5_s1"}


def test_default_config_holds_the_models_section():
    config = load_config()
    assert config.models == ModelsConfig()
    assert [m.name for m in config.models.members] == ["lightgbm_ordinal", "xgboost_ordinal"]
    with pytest.raises(ValueError, match="distinct"):
        ModelsConfig.model_validate({"members": [{"backend": "lightgbm", "formulation": "ordinal"}] * 2})


def test_training_beats_the_prior_and_reports_every_stage(trained, synthetic):
    report = trained.report
    stages = ["lightgbm_ordinal", "xgboost_ordinal", "blend", "calibrated", "final"]
    assert list(report["cv_scores"]) == stages
    for stage in stages:
        assert set(report["cv_scores"][stage]) == {"0", "1", "2", "all"}
        assert set(report["cv_scores"][stage]["all"]) == {*metrics.PART_NAMES, "score"}
    final = report["cv_scores"]["final"]["all"]["score"]
    assert final < report["weighted_prior_in_sample"]["score"] - 0.1
    assert final <= report["cv_scores"]["blend"]["all"]["score"] + 1e-9
    for weights in trained.blend_weights.values():
        assert sum(weights.values()) == pytest.approx(1.0)
    for base, entry in report["calibration"].items():
        assert entry["kept"] in ("none", "temperature") and trained.calibrators[base].kind == entry["kept"]
    assert metrics.score(synthetic.labels, trained.oof_predictions).score == pytest.approx(final)


def test_predictions_valid_for_failed_and_nan_rows(trained, synthetic):
    features = synthetic.features.copy()
    feature_columns = feature_columns_of(features)
    features.loc[:9, feature_columns] = np.nan
    features.loc[10:19, feature_columns] = 1e12
    predictions = trained.predict(features)
    _assert_valid(predictions, len(features))
    pd.testing.assert_frame_equal(predictions[["study_id", "condition", "level"]],
                                  features[["study_id", "condition", "level"]].astype({"study_id": np.int64}))


def test_failed_extractions_are_counted_and_partial_failures_keep_their_features(trained, synthetic):
    assert trained.report["failed_extraction_rows"] == {
        extractor: int((synthetic.features[status_column(extractor)] != "ok").sum())
        for extractor in ("cnn", "radiomics")
    }
    features = synthetic.features.iloc[:50].copy()
    # A status naming one failed view of several leaves the row's other features in use.
    features["radiomics__status"] = f"axial_t2: {FAILURE_REASON}; sagittal_t2: ok"
    prepared = prepare_features(features)
    radiomics = [c for c in prepared.columns if parse_column(c).extractor == "radiomics"]
    np.testing.assert_array_equal(prepared.block(np.ones(len(features), dtype=bool), radiomics),
                                  features[radiomics].to_numpy(np.float32))
    assert prepared.failed_rows["radiomics"] == 50
    pd.testing.assert_frame_equal(trained.predict(features), trained.predict(synthetic.features.iloc[:50]))


def test_save_load_round_trip_and_model_card(trained, synthetic, tmp_path):
    card_path = trained.save(tmp_path / "models")
    assert card_path.name == MODEL_CARD
    files = [p for p in (tmp_path / "models").rglob("*") if p.is_file()]
    assert not [p for p in files if p.suffix in (".pkl", ".pickle", ".joblib")]
    assert {p.suffix for p in files} == {".json", ".txt", ".csv"}
    loaded = TrainedModels.load(tmp_path / "models")
    pd.testing.assert_frame_equal(loaded.predict(synthetic.features), trained.predict(synthetic.features))
    # the RSNA task's boosters start from their libraries' constant, not from a prior (per-target models do)
    assert not any(estimator.boosted_from_proba_ for models in (trained, loaded) for group in models.groups
                   for estimator in group.members.values())
    card = json.loads(card_path.read_text())
    assert card["classes"] == PROBABILITIES
    assert card["config_hash"] == config_hash(trained.config)
    assert {"lightgbm", "scikit-learn", "radiospine"} <= set(card["versions"])
    assert {"xgboost", "xgboost-cpu"} & set(card["versions"])
    spinal = next(g for g in card["groups"] if g["name"] == vocab.SPINAL)
    assert spinal["feature_columns"][-1] == LEVEL_FEATURE and SIDE_FEATURE not in spinal["feature_columns"]
    assert set(spinal["members"]) == {"lightgbm_ordinal", "xgboost_ordinal"}
    assert set(card["calibration"]) == set(card["blend_weights"]) == set(vocab.BASE_CONDITIONS)
    assert card["report"]["cv_scores"]["final"]["all"]["score"] == trained.report["cv_scores"]["final"]["all"][
        "score"]
    pd.testing.assert_frame_equal(loaded.oof_predictions, trained.oof_predictions, check_dtype=False)


def test_load_errors_name_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match=MODEL_CARD):
        TrainedModels.load(tmp_path)
    (tmp_path / MODEL_CARD).write_text(json.dumps({"format": "other"}))
    with pytest.raises(ValueError, match="format 'other'"):
        TrainedModels.load(tmp_path)


def test_predict_needs_the_training_columns_and_conditions(trained, synthetic):
    with pytest.raises(ValueError, match=r"lacks column.*cnn__axial_t2__emb_000"):
        trained.predict(synthetic.features.drop(columns=["cnn__axial_t2__emb_000"]))


def test_per_side_per_level_models_with_a_multiclass_member():
    # Levels alike and more severe rows, so that every level's model sees all three classes in every fold.
    synthetic = make_feature_table(n_studies=60, n_features=8, class_fractions=(0.6, 0.25, 0.15), level_effect=0.0,
                                   seed=8)
    config = _config(share_sides=False, share_levels=False, calibration="vector", any_severe_adjustment=False,
                     members=[{"backend": "lightgbm", "formulation": "multiclass"}],
                     gbm={"n_estimators": 15, "learning_rate": 0.3, "min_child_samples": 5,
                          "early_stopping_rounds": None})
    models = train_condition_models(synthetic.features, synthetic.labels, config)
    assert len(models.groups) == 25 and models.any_severe is None
    assert all(group.feature_columns[-1].startswith("cnn__") for group in models.groups)  # no key features
    _assert_valid(models.predict(synthetic.features), len(synthetic.features))
    only_spinal = synthetic.features[synthetic.features["condition"] == vocab.SPINAL].reset_index(drop=True)
    _assert_valid(models.predict(only_spinal), len(only_spinal))


def test_a_level_model_without_a_class_says_how_to_fix_it(synthetic):
    with pytest.raises(ValueError, match=r"spinal_canal_stenosis\.l1_l2.*one class.*share_levels"):
        train_condition_models(synthetic.features, synthetic.labels, _config(share_levels=False))


def test_leaves_too_large_for_the_data_are_warned_about(synthetic, caplog):
    """Regression: the default min_child_samples (160) suits hundreds of studies; on a small set the trees
    cannot split, which must be said rather than silently giving the prior."""
    with caplog.at_level("WARNING", logger="radiospine.models.condition_models"):
        train_condition_models(synthetic.features, synthetic.labels,
                               _config(gbm={"n_estimators": 5, "min_child_samples": 160}))
    warned = [r.getMessage() for r in caplog.records if "cannot split" in r.getMessage()]
    assert len(warned) == 3 and all("min_child_samples (160)" in message for message in warned)
    caplog.clear()
    with caplog.at_level("WARNING", logger="radiospine.models.condition_models"):
        train_condition_models(synthetic.features, synthetic.labels, _config())
    assert not [r for r in caplog.records if "cannot split" in r.getMessage()]


def test_training_needs_every_base_condition(synthetic):
    spinal = synthetic.features[synthetic.features["condition"] == vocab.SPINAL]
    with pytest.raises(ValueError, match="no labelled feature rows for"):
        train_condition_models(spinal, synthetic.labels, _config())


@pytest.mark.parametrize(("mutate", "message"), [
    (lambda f: f.drop(columns=["level"]), "lacks key column"),
    (lambda f: f.assign(study_id=f["study_id"].astype(str).str.cat(["x"] * len(f))), "not integers"),
    (lambda f: f.assign(condition="spinal canal"), "unknown condition"),
    (lambda f: pd.concat([f, f.iloc[:1]]), "repeats"),
    (lambda f: f.assign(cnn__axial_t2__emb_000="high"), "not numeric"),
    (lambda f: f.drop(columns=["cnn__status"]), "no cnn__status column"),
    (lambda f: f.assign(key__level=1.0), "reserved"),
    (lambda f: f.assign(cnn__emb_000=1.0), "'cnn__emb_000' is not a feature-table column name"),
    (lambda f: f[["study_id", "condition", "level"]], "no feature column"),
])
def test_prepare_features_rejects_bad_tables(synthetic, mutate, message):
    with pytest.raises(ValueError, match=message):
        prepare_features(mutate(synthetic.features.iloc[:30].copy()))


def test_prepare_features_selects_extractors(synthetic):
    prepared = prepare_features(synthetic.features, extractors=("cnn",))
    assert prepared.columns and all(c.startswith("cnn__") for c in prepared.columns)
    assert list(prepared.keys.columns) == ["study_id", "condition", "level"]
    with pytest.raises(ValueError, match="absent from the feature table"):
        prepare_features(synthetic.features, extractors=("deep",))


def test_predict_studies_fills_undescribed_and_absent_rows_from_the_prior(trained, synthetic):
    """Rows without any extracted feature, and studies without feature rows, take the prior; the rest the models."""
    from radiospine.metrics import weighted_prior

    features = synthetic.features.copy()
    feature_columns = feature_columns_of(features)
    study_ids = sorted(features["study_id"].unique())
    first, absent = study_ids[0], study_ids[-1]
    features.loc[features["study_id"] == first, feature_columns] = np.nan
    features = features[features["study_id"] != absent]
    prior = weighted_prior(synthetic.labels, pseudo_count=1.0)
    predictions, filled = trained.predict_studies(features, study_ids, prior)
    _assert_valid(predictions, 25 * len(study_ids))
    assert set(filled["study_id"]) == {first, absent} and len(filled) == 50
    from_prior = predictions[predictions["study_id"].isin([first, absent])]
    np.testing.assert_allclose(from_prior[PROBABILITIES].to_numpy(),
                               np.tile(prior[PROBABILITIES].to_numpy(), (2, 1)))
    modelled = predictions[predictions["study_id"] == study_ids[1]].reset_index(drop=True)
    direct = trained.predict(features[features["study_id"] == study_ids[1]]).reset_index(drop=True)
    pd.testing.assert_frame_equal(modelled[PROBABILITIES], direct[PROBABILITIES])


def test_predicting_a_stored_table_chunk_by_chunk_equals_predicting_it_whole(trained, synthetic, tmp_path,
                                                                              monkeypatch):
    """predict reads the stored feature table a few studies at a time (memory bounded whatever the number of
    studies), with the same predictions and filled rows (statuses included) as the whole table at once."""
    from radiospine.metrics import weighted_prior

    features = synthetic.features.copy()
    feature_columns = feature_columns_of(features)
    study_ids = sorted(int(s) for s in features["study_id"].unique())
    first, absent = study_ids[0], study_ids[-1]
    features.loc[features["study_id"] == first, feature_columns] = np.nan
    features = features[features["study_id"] != absent].reset_index(drop=True)
    strings = {c for c in features.columns if is_status_column(c)} | {"condition", "level"}
    store = store_module.FeatureStore(tmp_path / "features")
    store.open(config=_config(), inputs={}, schema=store_module.table_schema(list(features.columns), strings))
    for study_id, rows in features.groupby("study_id"):
        store.write_study(study_id, rows)
    prior = weighted_prior(synthetic.labels, pseudo_count=1.0)
    whole, whole_filled = trained.predict_studies(store.read(), study_ids, prior)

    read_sizes = []
    read_features = store_module.read_features

    def recording_read(root, ids=None):
        table = read_features(root, ids)
        read_sizes.append(table["study_id"].nunique())
        return table

    monkeypatch.setattr(condition_models, "read_features", recording_read)  # the name predict_stored_studies calls
    chunked, filled = trained.predict_stored_studies(store.root, study_ids, prior, chunk_studies=4)
    assert max(read_sizes) <= 4 and len(read_sizes) == -(-len(study_ids) // 4)
    pd.testing.assert_frame_equal(chunked, whole)  # bit for bit
    pd.testing.assert_frame_equal(filled[["study_id", "condition", "level"]], whole_filled)
    status = status_column(feature_columns[0].split("__")[0])
    assert filled.loc[filled["study_id"] == absent, status].isna().all()  # no feature row: no status
    assert filled.loc[filled["study_id"] == first, status].notna().all()


def test_training_from_the_store_equals_training_on_the_table(synthetic, tmp_path):
    """train-gbm trains on the stored table (prepare_stored_features: the values are read a model group at a time,
    from the compacted file or from the shards) and gets the models of training on the table read whole."""
    features = synthetic.features
    strings = {c for c in features.columns if is_status_column(c)} | {"condition", "level"}
    store = store_module.FeatureStore(tmp_path / "features")
    store.open(config=_config(), inputs={}, schema=store_module.table_schema(list(features.columns), strings))
    for study_id, rows in features.groupby("study_id"):
        store.write_study(study_id, rows)
    on_table = train_condition_models(store.read(), synthetic.labels, _config())
    assert store.compact()
    from_compacted = train_condition_models(prepare_stored_features(store.root), synthetic.labels, _config())
    store.compact_path.unlink()
    from_shards = train_condition_models(prepare_stored_features(store.root), synthetic.labels, _config())
    for again in (from_compacted, from_shards):
        pd.testing.assert_frame_equal(again.oof_predictions, on_table.oof_predictions, check_exact=True)
        assert again.report["failed_extraction_rows"] == on_table.report["failed_extraction_rows"]
        assert [g.feature_columns for g in again.groups] == [g.feature_columns for g in on_table.groups]


def test_design_matrices_are_float32_in_the_trained_column_order(trained, synthetic):
    for group_model, rows, X in trained.design_matrices(synthetic.features):
        assert X.dtype == np.float32 and X.flags.c_contiguous
        assert X.shape == (rows.sum(), len(group_model.feature_columns))
        extractor_columns = [c for c in group_model.feature_columns if parse_column(c).kind != "key"]
        np.testing.assert_array_equal(X[:, :len(extractor_columns)],
                                      synthetic.features.loc[rows, extractor_columns].to_numpy(np.float32))


def _with_cnn_head(synthetic, seed: int = 3) -> pd.DataFrame:
    """The synthetic table plus the CNN's nine probability columns: on each row's own view (that of its base
    condition) an informative head (most of its mass on the true severity), on the other views noise; 5% of rows
    without probabilities (no crop)."""
    from radiospine.features.columns import CNN_PROBABILITY_FEATURES, feature_column

    rng = np.random.default_rng(seed)
    features = synthetic.features.copy()
    truth = features[list(vocab.KEY_COLUMNS)].merge(synthetic.labels, how="left")["severity"]
    truth = truth.fillna(0).to_numpy(dtype=int)
    base = features["condition"].map(lambda c: vocab.split_condition(c).base)
    for view in vocab.VIEWS:
        own = (base.map(vocab.VIEW_OF_BASE_CONDITION) == view).to_numpy()
        noise = rng.dirichlet(np.ones(3), size=len(features))
        informative = 0.5 * np.eye(3)[truth] + 0.5 * noise
        values = np.where(own[:, None], informative, noise)
        values[rng.random(len(features)) < 0.05] = np.nan
        for j, name in enumerate(CNN_PROBABILITY_FEATURES):
            features[feature_column("cnn", view, name)] = values[:, j]
    return features


def test_cnn_head_proba_reads_each_rows_own_view_and_falls_back_to_the_boosters_where_it_has_none(synthetic):
    from radiospine.features.columns import feature_column

    features = _with_cnn_head(synthetic)
    prepared = prepare_features(features)
    rows = np.ones(len(features), dtype=bool)
    gbm = np.full((len(features), 3), 1 / 3)
    head = condition_models.cnn_head_proba(prepared, rows, gbm)
    np.testing.assert_allclose(head.sum(axis=1), 1.0)
    foramen = features["condition"].str.contains("foraminal").to_numpy()
    own = features[[feature_column("cnn", "sagittal_t1", f"prob_{s}") for s in vocab.SEVERITIES]].to_numpy()
    cut = foramen & np.isfinite(own).all(axis=1)
    np.testing.assert_allclose(head[cut], own[cut] / own[cut].sum(axis=1, keepdims=True), rtol=1e-6)
    np.testing.assert_array_equal(head[foramen & ~np.isfinite(own).all(axis=1)], 1 / 3)
    assert condition_models.cnn_head_proba(prepare_features(synthetic.features), rows, gbm) is None


def test_the_cnn_head_is_a_blend_member_chosen_out_of_fold_and_saved_models_predict_the_same(synthetic, tmp_path):
    features = _with_cnn_head(synthetic)
    # boosters of 3 rounds learn little of the head's columns, so the head itself is worth blending
    weak = {"gbm": {"n_estimators": 3, "learning_rate": 0.15, "min_child_samples": 10, "early_stopping_rounds": None}}
    trained = train_condition_models(features, synthetic.labels, _config(**weak))
    weights = trained.blend_weights
    assert all(condition_models.CNN_HEAD_MEMBER in w for w in weights.values())
    assert min(w[condition_models.CNN_HEAD_MEMBER] for w in weights.values()) > 0
    assert "cnn_head" in trained.report["cv_scores"]
    in_memory = trained.predict(features)
    _assert_valid(in_memory, len(features))
    trained.save(tmp_path / "models")
    loaded = TrainedModels.load(tmp_path / "models")
    pd.testing.assert_frame_equal(loaded.predict(features), in_memory)
    # the head's weight was chosen on the same out-of-fold rows: taking it never scores worse there
    without = train_condition_models(features, synthetic.labels, _config(cnn_head_blend=False, **weak))
    assert all(condition_models.CNN_HEAD_MEMBER not in w for w in without.blend_weights.values())
    assert trained.report["cv_scores"]["blend"]["all"]["score"] <= without.report["cv_scores"]["blend"]["all"]["score"]
    cnn_probabilities = [c for c in features.columns if "__prob_" in c]
    with pytest.raises(condition_models.DataError, match=r"lacks column.*cnn__sagittal_t1__prob_normal_mild"):
        trained.predict(features.drop(columns=cnn_probabilities))


def test_the_cnn_head_is_blended_without_stacking_its_columns_when_models_extractors_leaves_the_cnn_out(synthetic):
    features = _with_cnn_head(synthetic)
    weak = {"gbm": {"n_estimators": 3, "learning_rate": 0.15, "min_child_samples": 10, "early_stopping_rounds": None}}
    trained = train_condition_models(features, synthetic.labels, _config(extractors=["radiomics"], **weak))
    assert all(parse_column(c).extractor in ("radiomics", "key") for g in trained.groups for c in g.feature_columns)
    assert min(w[condition_models.CNN_HEAD_MEMBER] for w in trained.blend_weights.values()) > 0
    _assert_valid(trained.predict(features), len(features))
    cnn_probabilities = [c for c in features.columns if "__prob_" in c]
    with pytest.raises(condition_models.DataError, match="no CNN probability columns"):
        trained.predict(features.drop(columns=cnn_probabilities))


def test_the_ablations_runs_without_the_cnn_do_not_blend_its_head(synthetic):
    from radiospine.models.ablation import extractor_ablation

    features = _with_cnn_head(synthetic)
    config = _config()
    record = extractor_ablation(prepare_features(features), synthetic.labels, config)
    radiomics_alone = train_condition_models(features, synthetic.labels,
                                             _config(extractors=["radiomics"], cnn_head_blend=False))
    assert record["runs"]["radiomics"]["score"] == pytest.approx(
        radiomics_alone.report["cv_scores"]["final"]["all"]["score"], abs=1e-6)
