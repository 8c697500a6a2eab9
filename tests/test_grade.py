"""``radiospine export-model`` and ``radiospine grade``: a bundle trained once per module on a tiny synthetic set,
and PACS-like exports of its test studies (``tests/export_synthetic.py``): UID-named folders and files without an
extension, a DICOMDIR written by pydicom, a localiser and a diffusion series, two studies, a missing axial series,
non-image files and a truncated file. Each gives the expected picks, grades and records, and none crashes."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pydicom
import pytest
from export_synthetic import DIFFUSION_DESCRIPTION, LOCALIZER_DESCRIPTION, build_export
from tiny_pipeline import TINY_PIPELINE, set_options

from radiospine import vocab
from radiospine.cli import main
from radiospine.exports import AXIAL_T1, DIFFUSION, LOCALIZER, classify_series, read_export
from radiospine.io.export import scan_export
from radiospine.io.headers import read_series_headers
from radiospine.models.bundle import BUNDLE_FILE, open_bundle
from radiospine.report.summaries import finding_line
from radiospine.stages.grade import NO_SERIES_REASON

pytestmark = pytest.mark.slow

SETTINGS = set_options(TINY_PIPELINE)


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A tiny synthetic set (6 train, 2 test studies), its trained work folder and the bundle exported from it."""
    root = tmp_path_factory.mktemp("grade")
    data, work, model = root / "data", root / "work", root / "model"
    assert main(["synth", "--out", str(data), "--train-studies", "6", "--test-studies", "2", "--seed", "3", "--small",
                 "--set", "synth.partial_volume_samples=1"]) == 0
    assert main(["train-localizer", "--data", str(data), "--work", str(work), *SETTINGS]) == 0
    assert main(["train-gbm", "--data", str(data), "--work", str(work), "--no-progress", *SETTINGS]) == 0
    assert main(["export-model", "--work", str(work), "--out", str(model), *SETTINGS]) == 0
    return {"root": root, "data": data, "work": work, "model": model}


def test_the_bundle_is_self_contained_checksummed_and_without_pickle(trained) -> None:
    model = trained["model"]
    description = json.loads((model / BUNDLE_FILE).read_text())
    files = {p.relative_to(model).as_posix() for p in model.rglob("*") if p.is_file()} - {BUNDLE_FILE}
    assert set(description["files"]) == files
    for expected in ("config.yaml", "model_card.json", "radiomics.yaml", "localizer/sagittal.pt", "localizer/axial.pt",
                     "cnn/full.pt", "models/model_card.json", "models/prior.csv"):
        assert expected in files
    assert any(name.startswith("models/groups/") for name in files)
    assert not any(name.endswith((".pkl", ".pickle", ".joblib")) for name in files)
    card = json.loads((model / "model_card.json").read_text())
    assert card["data"]["training_studies"] == 6 and 0 < card["cv_scores"]["score"] < 10
    assert "torch" in card["versions"] and "lightgbm" in card["versions"]
    assert open_bundle(model).config().features.cnn.checkpoint.startswith(str(model.resolve()))


def test_export_model_refuses_a_config_the_work_folder_was_not_trained_with(trained, tmp_path, capsys) -> None:
    assert main(["export-model", "--work", str(trained["work"]), "--out", str(tmp_path / "m")]) == 2
    assert "config differs from the one" in capsys.readouterr().err


def test_predict_with_the_bundle_equals_predict_with_the_work_folder_and_grade(trained, tmp_path) -> None:
    data, work = trained["data"], trained["work"]
    assert main(["predict", "--data", str(data), "--work", str(work), "--out", str(tmp_path / "work.csv"),
                 "--no-progress", *SETTINGS]) == 0
    assert main(["predict", "--data", str(data), "--work", str(tmp_path / "w"), "--model", str(trained["model"]),
                 "--out", str(tmp_path / "bundle.csv"), "--no-progress"]) == 0
    assert (tmp_path / "work.csv").read_bytes() == (tmp_path / "bundle.csv").read_bytes()

    # grade on the test images folder (a Kaggle layout is an export too) finds the same probabilities
    assert main(["grade", str(data / "test_images"), "--model", str(trained["model"]), "--out", str(tmp_path / "g"),
                 "--no-progress"]) == 0
    uid_of_number = {json.loads(path.read_text())["study_id"]: json.loads(path.read_text())["study_instance_uid"]
                     for path in (tmp_path / "g" / "studies").glob("*.json")}
    id_of_uid = {str(pydicom.dcmread(next(folder.rglob("*.dcm")), stop_before_pixels=True).StudyInstanceUID):
                 int(folder.name) for folder in (data / "test_images").iterdir()}
    graded = pd.read_csv(tmp_path / "g" / "findings.csv")
    graded["row_id"] = [f"{id_of_uid[uid_of_number[n]]}_{c}_{lv}"
                        for n, c, lv in zip(graded["study_id"], graded["condition"], graded["level"])]
    submission = pd.read_csv(tmp_path / "bundle.csv").set_index("row_id")
    assert np.allclose(graded.set_index("row_id")[list(vocab.SEVERITIES)].loc[submission.index], submission,
                       rtol=0, atol=1e-12)


@pytest.mark.parametrize("damage, message", [
    ("booster", "does not match its SHA-256"),
    ("missing", "is missing"),
    ("format", "bundle format"),
    ("version", "was written by radiospine"),
])
def test_a_damaged_or_foreign_bundle_is_refused_with_one_line(trained, tmp_path, capsys, damage, message) -> None:
    bundle = tmp_path / "bundle"
    shutil.copytree(trained["model"], bundle)
    description = json.loads((bundle / BUNDLE_FILE).read_text())
    booster = next(name for name in description["files"] if name.startswith("models/groups/"))
    if damage == "booster":
        (bundle / booster).write_bytes((bundle / booster).read_bytes() + b" ")
    elif damage == "missing":
        (bundle / "cnn" / "full.pt").unlink()
    else:
        description["format" if damage == "format" else "radiospine_version"] = "0.0-other"
        (bundle / BUNDLE_FILE).write_text(json.dumps(description))
    capsys.readouterr()
    assert main(["predict", "--data", str(trained["data"]), "--work", str(tmp_path / "w"), "--model", str(bundle),
                 "--out", str(tmp_path / "s.csv")]) == 2
    assert main(["grade", str(trained["data"]), "--model", str(bundle), "--out", str(tmp_path / "g")]) == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 2 and all(message in line for line in err), err


def test_reading_a_uid_named_export_types_picks_and_records_everything(trained, tmp_path) -> None:
    built = build_export(trained["data"], tmp_path / "export", layout="uid")
    assert not any(path.name.endswith(".dcm") for path in built.root.rglob("*"))
    export = read_export(built.root, tmp_path / "data")

    assert sorted(study.study_uid for study in export.studies) == sorted(built.study_uids)
    assert [study.study_id for study in export.studies] == [1, 2]
    by_uid = {study.study_uid: study for study in export.studies}
    first, last = by_uid[built.study_uids[0]], by_uid[built.study_uids[-1]]
    for study in (first, last):
        picked = study.series[study.series["picked"]]
        expected = built.series_uids[study.study_uid]
        assert {t: sorted(g["series_uid"]) for t, g in picked.groupby("type")} == \
            {t: sorted(uids) for t, uids in expected.items()}
        assert all(picked["pick_reason"].str.len() > 0) and all(study.series["type_reason"].str.len() > 0)
    assert last.missing_views == (vocab.AXIAL_T2,) and first.missing_views == ()
    types = dict(zip(first.series["description"], first.series["type"]))
    assert types[LOCALIZER_DESCRIPTION] == LOCALIZER and types[DIFFUSION_DESCRIPTION] == DIFFUSION

    skipped = export.skipped
    assert sorted(skipped["kind"]) == ["damaged_file", "not_an_image", "not_dicom", "not_dicom"]
    assert set(skipped["path"]) == {str(p) for p in [*built.non_images, built.truncated]}
    assert "truncated" in skipped.loc[skipped["kind"] == "damaged_file", "reason"].iloc[0]

    descriptions = pd.read_csv(export.data_dir / "test_series_descriptions.csv")
    assert len(descriptions) == sum(int(study.series["picked"].sum()) for study in export.studies)
    laid_out = [p.relative_to(export.data_dir).as_posix() for p in export.data_dir.rglob("*")]
    assert all(re.fullmatch(r"[0-9a-z_./]+", name) for name in laid_out)
    assert not any(uid in name for name in laid_out for uid in built.study_uids)


def test_a_dicomdir_is_read_and_its_missing_records_are_listed(trained, tmp_path) -> None:
    built = build_export(trained["data"], tmp_path / "export", layout="dicomdir", extras=False, truncate=False)
    listed = next(p for p in built.root.rglob("IM*") if p.is_file())
    listed.unlink()
    scan = scan_export(built.root)
    assert scan.dicomdir == built.root / "DICOMDIR" and scan.dicomdir_files == len(scan.images) + 1
    assert {entry.kind for entry in scan.skipped} == {"dicomdir", "listed_but_missing"}
    assert [entry.path for entry in scan.skipped if entry.kind == "listed_but_missing"] == [listed]


def test_an_axial_t1_and_a_localiser_are_not_used(tmp_path) -> None:
    from dicom_factory import SAGITTAL, write_synthetic_stack

    from radiospine.io.export import scan_export as scan

    write_synthetic_stack(tmp_path / "1" / "1", description="T1_TSE_TRA", n_slices=5)
    write_synthetic_stack(tmp_path / "1" / "2", description="scout", n_slices=5, orientation=SAGITTAL)
    for folder, expected in ((tmp_path / "1" / "1", AXIAL_T1), (tmp_path / "1" / "2", LOCALIZER)):
        image = next(image for image in scan(tmp_path).images if image.path.parent == folder)
        assert classify_series(image, read_series_headers(folder))[0] == expected


def test_grade_writes_findings_pages_and_records_for_a_dicomdir_export(trained, tmp_path, capsys) -> None:
    built = build_export(trained["data"], tmp_path / "export", layout="dicomdir")
    out = tmp_path / "graded"
    capsys.readouterr()
    assert main(["grade", str(built.root), "--model", str(trained["model"]), "--out", str(out), "--no-progress"]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["studies"] == 2 and summary["graded_from_images"] == 2

    findings = pd.read_csv(out / "findings.csv")
    assert len(findings) == 50
    assert np.allclose(findings[list(vocab.SEVERITIES)].sum(axis=1), 1.0)
    series = pd.read_csv(out / "series.csv")
    no_axial = int(series.groupby("study_id")["type"].apply(lambda t: vocab.AXIAL_T2 not in set(t)).idxmax())
    rows = findings[(findings["study_id"] == no_axial) & findings["condition"].str.contains("subarticular")]
    assert len(rows) == 10 and set(rows["source"]) == {"prior"}
    assert set(rows["reason"]) == {f"no {vocab.AXIAL_T2} series in the export"}
    assert (findings["source"] == "model").any()

    for study_id in (1, 2):
        per_study = pd.read_csv(out / "studies" / f"{study_id}.csv")
        assert len(per_study) == 25 and per_study["finding"].str.match(r"L\d/[LS]\d: .+ \(p = 0\.\d\d\)$").all()
        record = json.loads((out / "studies" / f"{study_id}.json").read_text())
        assert len(record["findings"]) == 25 and record["series"]
        page = (out / "studies" / f"{study_id}.html").read_text()
        assert "<img src=\"data:image/" in page and "(p = 0." in page
    index = (out / "index.html").read_text()
    assert "DICOMDIR" in index and "truncated" in index and "diffusion" in index
    skipped = pd.read_csv(out / "skipped.csv")
    assert {"dicomdir", "not_dicom", "not_an_image", "damaged_file"} <= set(skipped["kind"])

    names = [p.relative_to(out).as_posix() for p in out.rglob("*") if "_work" not in p.parts]
    patient_ids = {str(pd.read_csv(trained["data"] / "test_series_descriptions.csv")["study_id"].iloc[0])}
    assert not any(token in name for name in names for token in [*built.study_uids, *patient_ids, "Synthetic"])


def test_an_export_without_usable_series_gets_every_row_from_the_prior(trained, tmp_path, capsys) -> None:
    built = build_export(trained["data"], tmp_path / "export", layout="uid")
    for study_uid, types in built.series_uids.items():
        for uids in types.values():
            for uid in uids:
                shutil.rmtree(built.root / study_uid / uid)
    assert main(["grade", str(built.root), "--model", str(trained["model"]), "--out", str(tmp_path / "g"),
                 "--no-progress"]) == 0
    findings = pd.read_csv(tmp_path / "g" / "findings.csv")
    assert len(findings) == 25 and set(findings["reason"]) == {NO_SERIES_REASON}

    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("nothing here")
    capsys.readouterr()
    assert main(["grade", str(tmp_path / "empty"), "--model", str(trained["model"]), "--out", str(tmp_path / "e")]) == 2
    assert "holds no MR image" in capsys.readouterr().err


def test_the_finding_line_names_level_grade_condition_and_probability() -> None:
    assert finding_line(vocab.SPINAL, "l4_l5", np.array([0.17, 0.62, 0.21])) == \
        "L4/L5: moderate spinal canal stenosis (p = 0.62)"
