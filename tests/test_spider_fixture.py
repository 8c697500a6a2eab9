"""Real MRI: two SPIDER patients (tests/data/spider, CC BY 4.0, see its README) through volume import, point
derivation, ROI cutting, radiomics and localiser inference."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from radiospine import vocab
from radiospine.catalog import scan
from radiospine.cli import main
from radiospine.config import CONFIG_DIR, RoiConfig
from radiospine.io.decode import read_volume
from radiospine.io.image_file import read_image_file
from radiospine.labels import load_label_coordinates
from radiospine.roi.cut import crops_for_study
from radiospine.roi.localizer.model import load_localizer
from radiospine.roi.mask_points import disc_points
from radiospine.task import SPIDER

FIXTURE = Path(__file__).parent / "data" / "spider"
GRADINGS = FIXTURE / "radiological_gradings.csv"
#: Checked by eye on the mid-sagittal slices (README.md of the fixture): discs top to bottom.
EXPECTED_LEVELS = {7: ["L1/L2", "L2/L3", "L3/L4", "L4/L5", "L5/S1"],
                   107: ["L1/L2", "L2/L3", "L3/L4", "L4/L5", "L5/S1", "S1/S2"]}
#: SPIDER's IVD labels of those discs (counted from the bottom; 0 below L5/S1).
EXPECTED_IVD_LABELS = {7: [5, 4, 3, 2, 1], 107: [5, 4, 3, 2, 1, 0]}
#: Disc centres (row, column) on the crop, read off the pictures: top and bottom disc.
EXPECTED_CENTRES_ROW_COL = {7: [(38, 67), (356, 73)], 107: [(35, 85), (385, 126)]}


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("spider") / "data"
    assert main(["import-volumes", "--volumes", str(FIXTURE), "--gradings", str(GRADINGS), "--out", str(out),
                 "--previews"]) == 0
    return out


def test_the_fixture_is_small_and_attributed() -> None:
    size = sum(p.stat().st_size for p in FIXTURE.iterdir())
    assert size < 10e6
    readme = (FIXTURE / "README.md").read_text()
    assert "CC BY 4.0" in readme and "van der Graaf" in readme


def test_import_writes_a_data_folder_the_catalog_reads(data_dir: Path) -> None:
    catalog = scan(data_dir, "train")
    assert catalog.study_ids == [7, 107]
    assert catalog.series["series_description"].tolist() == [vocab.SAGITTAL_T2] * 2
    assert catalog.problems.empty
    assert catalog.studies["missing_types"].tolist() == [f"{vocab.SAGITTAL_T1};{vocab.AXIAL_T2}"] * 2
    previews = sorted(p.name for p in (data_dir / "volume_import" / "previews").iterdir())
    assert previews == ["107_10701.png", "7_701.png"]
    assert (data_dir / "volume_import" / "previews" / "7_701.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    labels = pd.read_csv(data_dir / "train.csv")
    assert labels["study_id"].tolist() == [7, 107] and labels.drop(columns="study_id").isna().all().all()


def test_the_dicom_series_is_the_volume(data_dir: Path) -> None:
    for study_id, series_id in ((7, 701), (107, 10701)):
        from_file = read_image_file(FIXTURE / f"{study_id}_t2_SPACE_image.mha")
        from_dicom = read_volume(data_dir / "train_images" / str(study_id) / str(series_id))
        assert np.array_equal(from_file.voxels, from_dicom.voxels)
        np.testing.assert_allclose(from_file.affine, from_dicom.affine, atol=1e-4)


def test_disc_points_on_real_masks(data_dir: Path) -> None:
    discs = pd.read_csv(data_dir / "volume_import" / "discs.csv")
    checks = pd.read_csv(data_dir / "volume_import" / "verification.csv", keep_default_na=False)
    assert (checks["anomalies"] == "").all()
    assert "IVD 0" in checks.loc[checks["study_id"] == 107, "decision"].item()
    for study_id, levels in EXPECTED_LEVELS.items():
        mask = read_image_file(FIXTURE / f"{study_id}_t2_SPACE_mask.mha", dtype=np.int32)
        table = disc_points(mask.voxels, mask.affine, disc_label=2, canal_label=3)
        rows = discs[discs["study_id"] == study_id]
        assert rows["level"].tolist() == levels
        assert rows["ivd_label"].tolist() == EXPECTED_IVD_LABELS[study_id]
        assert (np.diff(table["centre_z"]) < 0).all()  # superior to inferior
        for (row, col), index in zip(EXPECTED_CENTRES_ROW_COL[study_id], (0, -1)):
            assert abs(table["centre_row"].iloc[index] - row) < 4 and abs(table["centre_col"].iloc[index] - col) < 4
        centres = np.round(table[["centre_slice", "centre_row", "centre_col"]].to_numpy()).astype(int)
        canals = np.round(table[["canal_slice", "canal_row", "canal_col"]].to_numpy()).astype(int)
        assert (mask.voxels[tuple(centres.T)] == 2).all()  # the centre lies in its disc
        assert (mask.voxels[tuple(canals.T)] == 3).all()  # the canal point lies in the canal
        gap = table["canal_y"] - table["centre_y"]
        assert ((gap > 15) & (gap < 60)).all()  # posterior to the disc centre
        assert (np.abs(table["canal_z"] - table["centre_z"]) < 25).all()


def test_rois_and_radiomics_at_the_derived_points(data_dir: Path) -> None:
    from radiospine.features.radiomics import RadiomicsExtractor

    coords = load_label_coordinates(data_dir / "train_label_coordinates.csv")
    assert len(coords) == 10 and set(coords["condition"]) == {vocab.SPINAL}
    failures: list = []
    crops = crops_for_study(data_dir, "train", 7, coords, RoiConfig(), failures=failures)
    # the canal is also cut on axial slices when a study has them; SPIDER has no axial series
    assert {(f.condition, f.view) for f in failures if f.condition == vocab.SPINAL} == {(vocab.SPINAL, "axial_t2")}
    assert sorted(crop.roi.level for crop in crops) == list(vocab.LEVELS)
    assert {crop.roi.view for crop in crops} == {"sagittal_t2"}
    for crop in crops:
        assert np.isfinite(crop.image).all() and crop.mask.any() and crop.image.std() > 0.05
    results = RadiomicsExtractor(CONFIG_DIR / "radiomics" / "original_only.yaml").extract(crops)
    assert all(result.ok for result in results)
    assert all(np.isfinite(list(result.features.values())).all() for result in results)


def test_disc_signal_follows_the_pfirrmann_grades_of_a_real_spine(tmp_path: Path) -> None:
    from radiospine.config import load_config
    from radiospine.features.disc_signal import DiscSignalExtractor

    out = tmp_path / "data"
    assert main(["import-volumes", "--volumes", str(FIXTURE), "--gradings", str(GRADINGS), "--out", str(out),
                 "--points", "disc"]) == 0
    coords = load_label_coordinates(out / "train_label_coordinates.csv")
    roi = load_config(CONFIG_DIR / "spider.yaml", []).roi  # the spider task's disc-centred crops
    results = {}
    for study_id in (7, 107):
        crops = crops_for_study(out, "train", study_id, coords, roi, failures=[])
        for crop, result in zip(crops, DiscSignalExtractor().extract(crops)):
            assert result.ok and 4.0 <= result.features["height_mm"] <= 20.0
            results[study_id, crop.roi.level] = result.features["marrow_ratio"]
    assert len(results) == 10
    # patient 7's discs L1/L2 .. L5/S1 have Pfirrmann grades 2, 2, 3, 5, 5: the nucleus darkens against the marrow
    ratios = [results[7, level] for level in vocab.LEVELS]
    assert min(ratios[:2]) > ratios[2] > max(ratios[3:])


TINY = ["localizer.epochs=1", "localizer.base_channels=4", "localizer.depth=2", "localizer.sagittal_grid_px=32",
        "localizer.sagittal_grid_mm=10", "localizer.axial_grid_px=32", "localizer.axial_grid_mm=4",
        "localizer.sagittal_samples_per_epoch=8", "localizer.axial_samples_per_epoch=8",
        "localizer.validation_samples=8", "localizer.batch_size=4",
        "localizer.folds=2", "localizer.device=cpu"]


@pytest.mark.slow
def test_localiser_inference_runs_on_real_anatomy(tmp_path: Path) -> None:
    """A localiser trained for seconds on two synthetic studies places points on the real series: the plumbing
    works on real geometry (the points' accuracy is not the question here)."""
    options = [token for option in TINY for token in ("--set", option)]
    synthetic, work, real = tmp_path / "synth", tmp_path / "work", tmp_path / "real"
    assert main(["synth", "--out", str(synthetic), "--train-studies", "2", "--test-studies", "0", "--seed", "3",
                 "--small"]) == 0
    assert main(["train-localizer", "--data", str(synthetic), "--work", str(work), *options]) == 0
    assert main(["import-volumes", "--volumes", str(FIXTURE), "--out", str(real), "--split", "test"]) == 0
    out = tmp_path / "coords.csv"
    assert main(["localize", "--data", str(real), "--split", "test", "--work", str(work), "--out", str(out),
                 *options]) == 0
    coords = load_label_coordinates(out)
    provenance = pd.read_csv(tmp_path / "coords.provenance.csv")
    assert set(provenance["study_id"]) == {7, 107} and len(provenance) == 50
    assert set(provenance["source"]) <= {"predicted", "fallback", "missing"}
    assert provenance.loc[provenance["source"] != "missing", "method"].notna().all()
    spinal = coords[coords["condition"] == vocab.SPINAL]
    assert len(spinal) == 10
    for study_id, series_id in ((7, 701), (107, 10701)):
        volume = read_volume(real / "test_images" / str(study_id) / str(series_id))
        rows = spinal[spinal["study_id"] == study_id]
        assert set(rows["instance_number"]) <= set(volume.instance_numbers.tolist())
        _, n_rows, n_cols = volume.shape
        assert ((rows["x"] >= 0) & (rows["x"] <= n_cols - 1) & (rows["y"] >= 0) & (rows["y"] <= n_rows - 1)).all()



def test_the_spider_labels_table_holds_the_gradings(data_dir: Path) -> None:
    from radiospine.labels import load_task_labels

    labels = load_task_labels(data_dir / "train_spider.csv", SPIDER).set_index(["study_id", "target", "level"])
    gradings = pd.read_csv(GRADINGS)
    for row in gradings[gradings["IVD label"].between(1, 5)].itertuples(index=False):
        level = {1: "l5_s1", 2: "l4_l5", 3: "l3_l4", 4: "l2_l3", 5: "l1_l2"}[row[1]]
        assert labels.loc[(row.Patient, "pfirrmann_grade", level), "grade"] == row[-1] - 1
        assert labels.loc[(row.Patient, "disc_herniation", level), "grade"] == row[6]
        assert labels.loc[(row.Patient, "modic_change", level), "grade"] == int(row.Modic > 0)
    assert labels["grade"].notna().all() and len(labels) == 2 * 25


@pytest.mark.slow
def test_spider_task_end_to_end(tmp_path: Path) -> None:
    """features -> train-gbm -> predict -> score for the spider task on real MRI: the two fixture patients and a
    copy of each under another id (so that two folds have studies to train on), disc-centred ROIs."""
    import shutil

    volumes = tmp_path / "volumes"
    volumes.mkdir()
    gradings = pd.read_csv(GRADINGS)
    copies = [gradings]
    for study_id, copy_id in ((7, 8), (107, 108)):
        for kind in ("image", "mask"):
            shutil.copy(FIXTURE / f"{study_id}_t2_SPACE_{kind}.mha", volumes / f"{study_id}_t2_SPACE_{kind}.mha")
            shutil.copy(FIXTURE / f"{study_id}_t2_SPACE_{kind}.mha", volumes / f"{copy_id}_t2_SPACE_{kind}.mha")
        copies.append(gradings[gradings["Patient"] == study_id].assign(Patient=copy_id))
    pd.concat(copies).to_csv(tmp_path / "gradings.csv", index=False)
    train, test, work = tmp_path / "train", tmp_path / "test", tmp_path / "work"
    assert main(["import-volumes", "--volumes", str(volumes), "--gradings", str(tmp_path / "gradings.csv"),
                 "--out", str(train), "--points", "disc"]) == 0
    assert main(["import-volumes", "--volumes", str(FIXTURE), "--gradings", str(GRADINGS), "--out", str(test),
                 "--split", "test", "--points", "disc"]) == 0
    coords = load_label_coordinates(train / "train_label_coordinates.csv")
    discs = pd.read_csv(train / "volume_import" / "discs.csv")
    first = discs[(discs["study_id"] == 7) & (discs["level"] == "L1/L2")].iloc[0]
    point = coords[(coords["study_id"] == 7) & (coords["level"] == "l1_l2")].iloc[0]
    assert (point["x"], point["y"]) == pytest.approx((first["centre_col"], first["centre_row"]))

    localiser = [token for option in TINY for token in ("--set", option)]
    assert main(["synth", "--out", str(tmp_path / "synth"), "--train-studies", "2", "--test-studies", "0",
                 "--seed", "3", "--small"]) == 0
    assert main(["train-localizer", "--data", str(tmp_path / "synth"), "--work", str(work), *localiser]) == 0
    options = ["--config", str(Path(CONFIG_DIR) / "spider.yaml"), *localiser]
    for option in ("models.n_folds=2", "features.cnn.folds=2", "features.cnn.epochs=1", "features.cnn.widths=[8,16]",
                   "features.cnn.input_size=32", "models.gbm.n_estimators=20"):
        options += ["--set", option]
    assert main(["train-gbm", "--data", str(train), "--work", str(work), "--no-progress", *options]) == 0
    card = json.loads((work / "models" / "model_card.json").read_text())
    assert card["task"] == "spider" and [t["target"] for t in card["targets"]] == list(SPIDER.target_names)
    assert {row["target"] for row in card["report"]["oof_scores"]} == set(SPIDER.target_names)
    assert any(column.startswith("cnn__sagittal_t2__") for column in card["targets"][0]["feature_columns"])
    assert {"disc__sagittal_t2__marrow_ratio", "disc__sagittal_t2__height_mm"} <= set(
        card["targets"][0]["feature_columns"])  # configs/spider.yaml enables the disc signal

    out = tmp_path / "predictions.csv"
    assert main(["predict", "--data", str(test), "--split", "test", "--work", str(work), "--out", str(out),
                 "--no-progress", *options]) == 0
    predictions = pd.read_csv(out)
    assert len(predictions) == 2 * 5 * 5 and list(predictions.columns[:3]) == ["study_id", "target", "level"]
    for target in SPIDER.targets:
        rows = predictions[predictions["target"] == target.name]
        assert np.allclose(rows[list(SPIDER.probability_columns[:target.n_grades])].sum(axis=1), 1)
    assert main(["score", "--task", "spider", "--labels", str(test / "volume_import" / "test_spider.csv"),
                 "--pred", str(out)]) == 0


@pytest.mark.slow
def test_localiser_trains_and_localises_on_sagittal_only_studies(data_dir: Path, tmp_path: Path) -> None:
    """SPIDER has one Sagittal T2 series per study and canal points only: train-localizer trains the sagittal
    network alone and records why; localize places the canal points and records the foraminal and subarticular
    points as missing, with the reason, instead of crashing or inventing them."""
    options = [token for option in TINY for token in ("--set", option)]
    work = tmp_path / "work"
    assert main(["train-localizer", "--data", str(data_dir), "--work", str(work), *options]) == 0
    folder = work / "localizer"
    description = json.loads((folder / "localizer.json").read_text())
    assert description["untrained"] == ["foraminal", "axial"]
    assert "no Axial T2 series" in description["training"]["axial"]["skipped"]
    assert (folder / "sagittal.pt").is_file() and not (folder / "axial.pt").exists()
    localizer = load_localizer(folder, "cpu")
    assert localizer.axial is None and localizer.untrained == ("foraminal", "axial")
    out = tmp_path / "coords.csv"
    assert main(["localize", "--data", str(data_dir), "--split", "train", "--work", str(work), "--out", str(out),
                 "--truth", str(data_dir / "train_label_coordinates.csv"), *options]) == 0
    provenance = pd.read_csv(tmp_path / "coords.provenance.csv")
    assert len(provenance) == 50
    spinal = provenance[provenance["condition"] == vocab.SPINAL]
    assert len(spinal) == 10 and (spinal["source"] != "missing").all()
    others = provenance[provenance["condition"] != vocab.SPINAL]
    assert (others["source"] == "missing").all()
    foraminal = others["condition"].str.contains("foraminal")
    assert others.loc[foraminal, "note"].str.contains("without foraminal points").all()
    assert others.loc[~foraminal, "note"].str.contains("no axial network").all()
    summary = json.loads((tmp_path / "coords.summary.json").read_text())
    assert summary["evaluation"]["spinal_canal_stenosis"]["points"] == 10
