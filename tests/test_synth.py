"""The synthetic study generator: labels, anatomy, layout, read-back, geometry, quirks, determinism."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from radiospine import catalog, vocab
from radiospine.cli import main
from radiospine.geometry import voxel_to_patient
from radiospine.hashing import file_sha256
from radiospine.io.headers import read_series_headers
from radiospine.labels import load_label_coordinates, load_train_labels
from radiospine.metrics import score, weighted_prior_predictions
from radiospine.submission import validate_submission
from radiospine.synth import anatomy as anatomy_lib
from radiospine.synth.generate import draw_label_sample, study_generators
from radiospine.synth.labels import (
    build_label_model,
    label_fractions,
    labels_frame,
    load_facts,
    oracle_frame,
    real_spearman,
)
from radiospine.synth.render import CONTRAST

NO_QUIRKS = [f"synth.quirks.{name}=0" for name in ("instance_offset_rate", "reversed_order_rate", "two_stacks_rate",
                                                   "missing_series_rate")]
#: The written-data-set tests skip partial volume (3x faster); the quirk study keeps it, so it is exercised.
FAST = [*NO_QUIRKS, "synth.partial_volume_samples=1"]


def _synth(out: Path, *extra: str, train: int = 1, test: int = 1, seed: int = 11, sets: list[str] = ()) -> None:
    argv = ["synth", "--out", str(out), "--train-studies", str(train), "--test-studies", str(test), "--seed",
            str(seed), "--small", *extra]
    for item in sets:
        argv += ["--set", item]
    assert main(argv) == 0


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """1 train + 1 test small studies, quirks off (so the conventions hold everywhere)."""
    out = tmp_path_factory.mktemp("synth") / "data"
    _synth(out, sets=FAST)
    return out


def _file_hashes(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): file_sha256(p)
            for p in sorted(root.rglob("*")) if p.is_file()}


def _stacks(data: Path, split: str, study_id: int, series_id: int):
    return read_series_headers(catalog.series_dir(data, split, study_id, series_id), study_id=study_id,
                               series_id=series_id)


def _point_lps(data: Path, split: str, row) -> tuple[np.ndarray, np.ndarray]:
    """LPS of a coordinate row and the unit normal of the stack it is on."""
    for stack in _stacks(data, split, row.study_id, row.series_id):
        hits = np.flatnonzero(stack.instance_numbers == row.instance_number)
        if hits.size:
            affine = stack.affine
            point = voxel_to_patient(affine, np.array([[hits[0], row.y, row.x]]))[0]
            normal = np.cross(affine[:3, 0], affine[:3, 1])
            return point, normal / np.linalg.norm(normal)
    raise AssertionError(f"instance {row.instance_number} not in series {row.series_id}")


# --- labels (no images) -----------------------------------------------------------------------------------------

def test_label_frequencies_and_correlations_match_the_real_data() -> None:
    drawn = draw_label_sample(40_000, seed=5, reader_noise_sd=0.45)
    fractions, missing = label_fractions(load_facts())
    labels = drawn.labels
    labelled = labels >= 0
    for j, column in enumerate(vocab.TARGET_COLUMNS):
        observed = np.array([(labels[labelled[:, j], j] == k).mean() for k in range(3)])
        np.testing.assert_allclose(observed, fractions[j], atol=0.012, err_msg=column)
        assert abs((~labelled[:, j]).mean() - missing[j]) < 0.006, column
    subarticular_l1_l2 = vocab.TARGET_COLUMNS.index("left_subarticular_stenosis_l1_l2")
    assert (~labelled).mean(axis=0).argmax() in (subarticular_l1_l2, subarticular_l1_l2 + 5)
    spearman = labels_frame(list(range(1, 40_001)), labels).iloc[:, 1:].apply(
        lambda c: c.map(vocab.severity_index, na_action="ignore")).astype(float).corr(method="spearman").to_numpy()
    upper = np.triu_indices(25, k=1)
    assert np.abs(spearman[upper] - real_spearman(load_facts())[upper]).mean() < 0.03


def test_oracle_scores_below_the_weighted_prior() -> None:
    train = draw_label_sample(4000, seed=1, reader_noise_sd=0.45)
    test = draw_label_sample(4000, seed=2, reader_noise_sd=0.45)
    ids = list(range(1, 4001))
    test_labels = labels_frame(ids, test.labels)
    oracle = score(test_labels, oracle_frame(ids, test.oracle)).score
    prior = score(test_labels, weighted_prior_predictions(labels_frame(ids, train.labels), ids)).score
    assert oracle < prior - 0.3
    assert 0.25 < oracle < 0.45 and 0.70 < prior < 0.88


def test_oracle_is_the_reader_posterior() -> None:
    model = build_label_model(0.45)
    drawn = draw_label_sample(80_000, seed=3, reader_noise_sd=0.45)
    grade, labels, oracle = drawn.grade.ravel(), drawn.labels.ravel(), drawn.oracle.reshape(-1, 3)
    keep = labels >= 0
    for k in range(3):  # calibration: among rows the oracle gives ~p to class k, a share ~p has label k
        predicted = oracle[keep, k]
        bins = (predicted > 0.3) & (predicted < 0.7)
        assert abs((labels[keep][bins] == k).mean() - predicted[bins].mean()) < 0.02
    np.testing.assert_allclose(oracle.sum(axis=1), 1.0)
    assert np.all(np.diff(oracle[np.argsort(grade), 2]) >= -1e-12)  # P(severe) grows with the latent
    assert model.reader_noise_sd == 0.45


def test_one_study_draws_the_same_labels_alone_or_in_a_label_sample() -> None:
    from radiospine.synth.labels import draw_labels, draw_study_labels

    model = build_label_model(0.45)
    alone = draw_study_labels(model, study_generators(7, "train", 3)["labels"])
    batch = draw_labels(model, study_generators(7, "train", 3)["labels"], 1)
    np.testing.assert_array_equal(alone.labels, batch.labels[0])
    np.testing.assert_allclose(alone.grade, batch.grade[0])


# --- anatomy ------------------------------------------------------------------------------------------------------

def _grades(value: float, target: tuple[str, str] | None = None, target_value: float = 0.0) -> dict:
    grades = {vocab.split_target_column(column): value for column in vocab.TARGET_COLUMNS}
    if target is not None:
        grades[target] = target_value
    return grades


def _plane(centre: np.ndarray, e1: np.ndarray, e2: np.ndarray, half_mm: float = 25.0, step: float = 0.25):
    offsets = np.arange(-half_mm, half_mm + step, step)
    return (centre[None, None] + offsets[:, None, None] * e1 + offsets[None, :, None] * e2).reshape(-1, 3)


@pytest.mark.parametrize("condition", [vocab.SPINAL, "left_neural_foraminal_narrowing", "right_subarticular_stenosis"])
def test_severity_acts_on_its_own_anatomy_only_and_monotonically(condition: str) -> None:
    level = "l4_l5"
    drawn = {g: anatomy_lib.draw_anatomy(_grades(-1.0, (condition, level), g), np.random.default_rng(4))
             for g in (-1.0, 0.5, 1.5, 2.5)}
    reference = drawn[-1.0]
    for anatomy in drawn.values():  # nuisance does not depend on the severity
        np.testing.assert_array_equal(anatomy.segment_s, reference.segment_s)
        np.testing.assert_array_equal(anatomy.patient_origin, reference.patient_origin)
        for other, base in zip(anatomy.levels, reference.levels):
            if other.level != level:
                assert other == base
    found = [next(lv for lv in drawn[g].levels if lv.level == level) for g in sorted(drawn)]
    if condition == vocab.SPINAL:
        measured = [f.sac_ap_mm for f in found]
        anatomy_at = [drawn[g] for g in sorted(drawn)]
        # what the image shows: CSF area on the disc's mid-plane shrinks with the severity
        areas = []
        for anatomy in anatomy_at:
            centre = anatomy.canal_point_lps(level)
            normal = anatomy.disc_normal_lps(level)
            e2 = np.cross(normal, [1.0, 0.0, 0.0])
            areas.append(int(np.sum(anatomy.tissues(_plane(centre, e2 / np.linalg.norm(e2),
                                                            np.array([1.0, 0.0, 0.0]))) == anatomy_lib.CSF)))
        assert all(a > b for a, b in itertools.pairwise(areas)), areas
        assert measured[0] > 11.0 and measured[-1] < 7.0
    elif "foraminal" in condition:
        measured = [f.foramen_fat_ap_mm["left"] for f in found]
        assert [f.foramen_fat_ap_mm["right"] for f in found] == [found[0].foramen_fat_ap_mm["right"]] * 4
        fat = []
        for anatomy in (drawn[g] for g in sorted(drawn)):
            centre = anatomy.foramen_point_lps(level, "left")
            fat.append(int(np.sum(anatomy.tissues(_plane(centre, np.array([0.0, 0.0, 1.0]),
                                                          np.array([0.0, 1.0, 0.0]), 12.0)) == anatomy_lib.FAT)))
        assert all(a > b for a, b in itertools.pairwise(fat)), fat
    else:
        measured = [f.recess_height_mm["right"] for f in found]
        assert [f.recess_height_mm["left"] for f in found] == [found[0].recess_height_mm["left"]] * 4
        assert measured[0] > 4.5 and measured[-1] < 3.0
    assert all(a > b for a, b in itertools.pairwise(measured)), measured


def test_contrast_tables_cover_every_tissue() -> None:
    assert all(len(values) == len(anatomy_lib.TISSUES) for values in CONTRAST.values())
    t1, t2 = CONTRAST["T1"], CONTRAST["T2"]
    assert t1[anatomy_lib.FAT] > t1[anatomy_lib.CSF] and t2[anatomy_lib.CSF] > t2[anatomy_lib.FAT]
    assert CONTRAST["STIR"][anatomy_lib.FAT] < 0.1


# --- a written data set -----------------------------------------------------------------------------------------

@pytest.mark.slow
def test_layout_truth_and_manifest(dataset: Path) -> None:
    for name in ("train.csv", "train_label_coordinates.csv", "train_series_descriptions.csv",
                 "test_series_descriptions.csv", "sample_submission.csv", "truth/test_labels.csv",
                 "truth/test_label_coordinates.csv", "truth/oracle_train.csv", "truth/oracle_test.csv",
                 "truth/manifest.json"):
        assert (dataset / name).is_file(), name
    train = load_train_labels(dataset / "train.csv")
    test = load_train_labels(dataset / "truth/test_labels.csv")
    assert len(train) == 1 and len(test) == 1
    test_ids = test["study_id"].tolist()
    sample = validate_submission(dataset / "sample_submission.csv", test_ids)
    assert len(sample) == 25 * len(test_ids)
    for split, labels in (("train", train), ("test", test)):
        oracle = pd.read_csv(dataset / f"truth/oracle_{split}.csv")
        assert oracle["row_id"].tolist() == [r for s in labels["study_id"] for r in vocab.study_row_ids(s)]
        np.testing.assert_allclose(oracle[list(vocab.SEVERITIES)].sum(axis=1), 1.0)
        assert (dataset / f"{split}_images").is_dir()
        assert {int(p.name) for p in (dataset / f"{split}_images").iterdir()} == set(labels["study_id"])
    manifest = json.loads((dataset / "truth/manifest.json").read_text())
    assert manifest["seed"] == 11 and manifest["parameters"]["small"] is True
    assert manifest["generator_version"]
    for name in ("oracle", "weighted_prior_train", "weighted_prior_population"):
        assert np.isfinite(manifest["scores_on_test"][name]["score"])
    ids = set(train["study_id"]) | set(test["study_id"])
    assert all(4_000_000 <= i < 2 ** 32 for i in ids) and len(ids) == 2


@pytest.mark.slow
def test_read_back_through_the_catalog_types_every_series(dataset: Path) -> None:
    for split in ("train", "test"):
        scanned = catalog.scan(dataset, split)
        assert scanned.problems.empty, scanned.problems
        series = scanned.series
        assert set(series["series_description"]) <= set(vocab.SERIES_DESCRIPTIONS)
        assert not series["description_inferred"].any() and series["on_disk"].all()
        assert (scanned.studies["missing_types"] == "").all()
        for row in series.itertuples():  # the headers alone say the same (orientation, TR, description)
            assert catalog.infer_description(Path(row.path), row.study_id, row.series_id) == row.series_description


@pytest.mark.slow
def test_coordinates_follow_the_real_conventions(dataset: Path) -> None:
    for split, coordinates_file, labels_file in (("train", "train_label_coordinates.csv", "train.csv"),
                                                 ("test", "truth/test_label_coordinates.csv",
                                                  "truth/test_labels.csv")):
        coordinates = load_label_coordinates(dataset / coordinates_file)
        labels = load_train_labels(dataset / labels_file).set_index("study_id")
        instances = catalog.scan(dataset, split).instances
        described = pd.read_csv(dataset / f"{split}_series_descriptions.csv").set_index(["study_id", "series_id"])
        present = set(zip(instances["study_id"], instances["series_id"], instances["instance_number"]))
        for row in coordinates.itertuples():
            assert (row.study_id, row.series_id, row.instance_number) in present
            wanted = vocab.SERIES_FOR_BASE_CONDITION[row.base_condition]
            assert described.loc[(row.study_id, row.series_id), "series_description"] == wanted
        marked = set(zip(coordinates["study_id"], coordinates["condition"], coordinates["level"]))
        for study_id, row in labels.iterrows():
            for column in vocab.TARGET_COLUMNS:
                condition, level = vocab.split_target_column(column)
                assert ((study_id, condition, level) in marked) == isinstance(row[column], str), (study_id, column)
        for (study_id, level), group in coordinates.groupby(["study_id", "level"]):
            by_condition = {c: g.iloc[0] for c, g in group.groupby("condition")}
            points = {c: _point_lps(dataset, split, r) for c, r in by_condition.items()}
            left, right = "left_neural_foraminal_narrowing", "right_neural_foraminal_narrowing"
            if left in by_condition and right in by_condition:
                assert by_condition[left].instance_number > by_condition[right].instance_number
                assert points[left][0][0] > points[right][0][0]  # +x is the patient's left
            left, right = "left_subarticular_stenosis", "right_subarticular_stenosis"
            if left in by_condition and right in by_condition:
                assert by_condition[left].x > by_condition[right].x  # the patient's left on the image's right
                assert 12.0 < np.linalg.norm(points[left][0] - points[right][0]) < 40.0
                for side in (left, right):  # geometry: the canal point and the axial points share the disc
                    if vocab.SPINAL in by_condition:
                        canal = points[vocab.SPINAL][0]
                        axial, normal = points[side]
                        assert abs((canal - axial) @ normal) < 6.0, (study_id, level, (canal - axial) @ normal)


@pytest.mark.slow
def test_same_seed_same_bytes_whatever_the_jobs(dataset: Path, tmp_path: Path) -> None:
    again = tmp_path / "again"
    _synth(again, "--jobs", "2", sets=FAST)
    hashes = _file_hashes(dataset)
    assert _file_hashes(again) == hashes
    assert sum(name.endswith(".dcm") for name in hashes) > 40


@pytest.mark.slow
def test_quirks_appear_when_flagged(tmp_path: Path) -> None:
    out = tmp_path / "quirky"
    _synth(out, train=1, test=0, seed=3, sets=[
        "synth.quirks.instance_offset_rate=1", "synth.quirks.reversed_order_rate=1",
        "synth.quirks.two_stacks_rate=1", "synth.quirks.missing_series_rate=1", "synth.per_disc_axial_rate=0"])
    scanned = catalog.scan(out, "train")
    assert scanned.studies["missing_types"].iloc[0] in (vocab.SAGITTAL_T1, vocab.SAGITTAL_T2)
    study_id = int(scanned.studies["study_id"].iloc[0])
    n_axial_stacks = []
    for row in scanned.series.itertuples():
        stacks = _stacks(out, "train", study_id, row.series_id)
        slices = sorted((s for stack in stacks for s in stack.slices), key=lambda s: s.instance_number)
        assert slices[0].instance_number > 1
        positions = np.array([s.position_lps for s in slices])
        if row.series_description == vocab.AXIAL_T2:
            n_axial_stacks.append(len(stacks))
            assert positions[-1][2] > positions[0][2]  # instance numbers from the feet up
        else:
            assert positions[-1][0] < positions[0][0]  # instance numbers towards the patient's right
    assert max(n_axial_stacks) == 2
    coordinates = load_label_coordinates(out / "train_label_coordinates.csv")
    present = set(scanned.series["series_id"])
    assert set(coordinates["series_id"]) <= present
    # the missing sagittal series' conditions are marked on the other sagittal series
    bases = set(coordinates["base_condition"])
    assert {vocab.SPINAL, vocab.FORAMINAL} <= bases


@pytest.mark.slow
def test_preview_draws_a_picture(dataset: Path, tmp_path: Path) -> None:
    study_id = int(pd.read_csv(dataset / "train.csv")["study_id"].iloc[0])
    out = tmp_path / "preview.png"
    assert main(["synth-preview", str(dataset), str(study_id), "--out", str(out)]) == 0
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and out.stat().st_size > 50_000
    assert main(["synth-preview", str(dataset), "123", "--out", str(out)]) == 2


def test_refuses_to_overwrite_without_the_flag(tmp_path: Path) -> None:
    (tmp_path / "train.csv").write_text("x\n")
    assert main(["synth", "--out", str(tmp_path), "--train-studies", "0", "--test-studies", "0"]) == 2
    assert (tmp_path / "train.csv").read_text() == "x\n"
    assert main(["synth", "--out", str(tmp_path / "n"), "--train-studies", "-1"]) == 2
