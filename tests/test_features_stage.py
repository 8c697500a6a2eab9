"""`radiospine features` end to end on a tiny synthetic data set: catalog, ROI cutter, radiomics, CNN, both splits."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pandas as pd
import pytest

from radiospine import vocab
from radiospine.cli import main
from radiospine.config import SynthConfig
from radiospine.labels import labels_to_long, load_label_coordinates, load_train_labels
from radiospine.synth.generate import generate_dataset

QUICK = ["--set", "features.radiomics.params=radiomics/original_only.yaml",
         "--set", "features.radiomics.slice_mean=false", "--set", "features.cnn.folds=2",
         "--set", "features.cnn.epochs=1", "--set", "features.cnn.input_size=32",
         "--set", "features.cnn.widths=[8,16]", "--set", "features.cnn.embedding_size=4"]


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("synth") / "data"
    quirks = dict.fromkeys(
        ("instance_offset_rate", "reversed_order_rate", "two_stacks_rate", "missing_series_rate"), 0.0)
    generate_dataset(out, SynthConfig(train_studies=2, test_studies=1, seed=5, partial_volume_samples=1,
                                      quirks=quirks))
    return out


def features(data: Path, work: Path, split: str, *extra: str) -> int:
    return main(["features", "--data", str(data), "--split", split, "--work", str(work), "--no-progress", *QUICK,
                 *extra])


@pytest.mark.slow
def test_features_stage_on_both_splits(data: Path, tmp_path: Path, capsys) -> None:
    work = tmp_path / "work"
    assert features(data, work, "test") == 2  # the test split needs the CNN of the train split ...
    assert "radiospine features --split train" in capsys.readouterr().err
    assert features(data, work, "test", "--set", "features.cnn.enabled=false") == 2  # ... and the localiser's points
    assert "radiospine localize" in capsys.readouterr().err

    assert features(data, work, "train") == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["written"] == 2 and summary["studies_without_crops"] == 0
    table = pd.read_parquet(work / "features" / "train")
    labels = labels_to_long(load_train_labels(data / "train.csv")).dropna(subset=["severity"])
    assert len(table) == 50 and not table.duplicated(["study_id", "condition", "level"]).any()
    keys = set(zip(table.study_id, table.condition, table.level))
    assert set(zip(labels.study_id, labels.condition, labels.level)) <= keys
    assert (table["radiomics__status"] == "ok").mean() > 0.8 and (table["cnn__status"] == "ok").mean() > 0.8
    canal = table[table.condition == vocab.SPINAL]
    assert canal["radiomics__sagittal_t2__original_glcm_Contrast"].notna().all()
    assert canal["cnn__axial_t2__prob_severe"].notna().mean() > 0.5  # the canal on axial slices too
    manifest = json.loads((work / "features" / "train" / "_manifest.json").read_text())
    assert {"catalog", "roi_centres", "roi_config", "extractor:radiomics", "extractor:cnn"} <= set(manifest["inputs"])
    oof = json.loads((work / "features" / "train" / "_cnn" / "oof.json").read_text())
    assert all(int(s) not in oof["training_studies"][m] for s, m in oof["model_for_study"].items())

    assert features(data, work, "train") == 0  # nothing left to do
    assert json.loads(capsys.readouterr().out)["skipped"] == 2

    # The test split at the localiser's points (here: the true points, as a localiser would write them).
    localizer = work / "localizer"
    localizer.mkdir()
    shutil.copy(data / "truth" / "test_label_coordinates.csv", localizer / "test_coordinates.csv")
    coords = load_label_coordinates(localizer / "test_coordinates.csv")
    coords[["study_id", "condition", "level"]].drop_duplicates().assign(source="predicted").to_csv(
        localizer / "test_coordinates.provenance.csv", index=False)
    assert features(data, work, "test") == 0
    test_table = pd.read_parquet(work / "features" / "test")
    assert len(test_table) == 25 and list(test_table.columns) == list(table.columns)
    assert (test_table["cnn__status"] == "ok").mean() > 0.8  # described by the train split's full model

    assert features(data, tmp_path / "other", "test", "--set", "features.cnn.checkpoint=/nonexistent/cnn.pt") == 2
    assert "/nonexistent/cnn.pt" in capsys.readouterr().err
