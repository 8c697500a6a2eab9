"""Catalog: layout scanning, id validation, missing and undescribed series."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from radiospine import catalog, vocab
from radiospine.cli import main
from radiospine.errors import CatalogError


def _write_layout(root: Path, series: dict[tuple[int, int], tuple[str, int]], split: str = "train") -> None:
    """Series folders with empty .dcm files (the catalog reads no pixels) and a descriptions CSV."""
    rows = []
    for (study_id, series_id), (description, n_files) in series.items():
        folder = root / f"{split}_images" / str(study_id) / str(series_id)
        folder.mkdir(parents=True, exist_ok=True)
        for instance in range(1, n_files + 1):
            (folder / f"{instance}.dcm").write_bytes(b"")
        rows.append((study_id, series_id, description))
    pd.DataFrame(rows, columns=["study_id", "series_id", "series_description"]).to_csv(
        root / f"{split}_series_descriptions.csv", index=False)


def test_scan_builds_typed_tables(tmp_path: Path) -> None:
    _write_layout(tmp_path, {
        (100, 1): (vocab.SAGITTAL_T1, 3), (100, 2): (vocab.SAGITTAL_T2, 4), (100, 3): (vocab.AXIAL_T2, 5),
        (200, 7): (vocab.AXIAL_T2, 2),
    })
    cat = catalog.scan(tmp_path, "train")
    assert cat.study_ids == [100, 200]
    assert cat.series["study_id"].dtype == "int64"
    assert len(cat.instances) == 14
    s100 = cat.studies.set_index("study_id").loc[100]
    assert (s100["n_sagittal_t1"], s100["n_sagittal_t2_stir"], s100["n_axial_t2"]) == (1, 1, 1)
    assert cat.studies.set_index("study_id").loc[200, "missing_types"] == "Sagittal T1;Sagittal T2/STIR"
    assert cat.series_of(100, vocab.AXIAL_T2)["series_id"].tolist() == [3]
    assert cat.problems.empty


def test_content_hash_changes_with_data(tmp_path: Path) -> None:
    _write_layout(tmp_path, {(100, 1): (vocab.SAGITTAL_T1, 3)})
    before = catalog.scan(tmp_path, "train").content_hash()
    assert catalog.scan(tmp_path, "train").content_hash() == before
    (tmp_path / "train_images/100/1/4.dcm").write_bytes(b"")
    assert catalog.scan(tmp_path, "train").content_hash() != before


@pytest.mark.parametrize("bad", ["../etc", "12a", "-5", "1.5", ""])
def test_non_integer_ids_in_csv_are_rejected(tmp_path: Path, bad: str) -> None:
    _write_layout(tmp_path, {(100, 1): (vocab.SAGITTAL_T1, 1)})
    csv = tmp_path / "train_series_descriptions.csv"
    csv.write_text(csv.read_text() + f"{bad},5,Axial T2\n")
    with pytest.raises(CatalogError, match="line 3") as info:
        catalog.scan(tmp_path, "train")
    assert "train_series_descriptions.csv" in str(info.value)


def test_non_integer_folders_are_recorded_and_skipped(tmp_path: Path) -> None:
    _write_layout(tmp_path, {(100, 1): (vocab.SAGITTAL_T1, 2)})
    (tmp_path / "train_images" / "notastudy" / "1").mkdir(parents=True)
    (tmp_path / "train_images" / "100" / "x9").mkdir()
    (tmp_path / "train_images" / "100" / "1" / "scout.dcm").write_bytes(b"")
    cat = catalog.scan(tmp_path, "train")
    assert cat.study_ids == [100]
    assert set(cat.problems["kind"]) == {"bad_study_folder", "bad_series_folder", "bad_instance_name"}
    assert len(cat.instances) == 2


def test_series_listed_but_missing_on_disk(tmp_path: Path) -> None:
    _write_layout(tmp_path, {(100, 1): (vocab.SAGITTAL_T1, 2)})
    csv = tmp_path / "train_series_descriptions.csv"
    csv.write_text(csv.read_text() + "100,2,Axial T2\n")
    cat = catalog.scan(tmp_path, "train")
    missing = cat.series[~cat.series["on_disk"]]
    assert missing[["study_id", "series_id"]].values.tolist() == [[100, 2]]
    assert "missing_series" in set(cat.problems["kind"])
    assert cat.studies.set_index("study_id").loc[100, "missing_types"] == "Sagittal T2/STIR;Axial T2"


def test_crlf_and_blank_lines_in_descriptions(tmp_path: Path) -> None:
    _write_layout(tmp_path, {(100, 1): (vocab.AXIAL_T2, 1)})
    csv = tmp_path / "train_series_descriptions.csv"
    csv.write_bytes(csv.read_text().replace("\n", "\r\n").encode() + b",,\r\n\r\n")
    frame = catalog.load_series_descriptions(csv)
    assert frame.values.tolist() == [[100, 1, vocab.AXIAL_T2]]


def test_missing_csv_and_columns_name_the_file(tmp_path: Path) -> None:
    (tmp_path / "train_images").mkdir()
    with pytest.raises(CatalogError, match=r"train_series_descriptions.csv does not exist"):
        catalog.scan(tmp_path, "train")
    (tmp_path / "train_series_descriptions.csv").write_text("study_id,series\n1,2\n")
    with pytest.raises(CatalogError, match="series_description"):
        catalog.scan(tmp_path, "train")


def test_series_dir_only_takes_integers(tmp_path: Path) -> None:
    assert catalog.series_dir(tmp_path, "test", 5, 6) == tmp_path / "test_images" / "5" / "6"
    with pytest.raises((ValueError, TypeError)):
        catalog.series_dir(tmp_path, "test", "../etc", 6)  # type: ignore[arg-type]
    with pytest.raises(CatalogError):
        catalog.series_dir(tmp_path, "valid", 5, 6)


def test_catalog_command(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _write_layout(tmp_path, {(100, 1): (vocab.SAGITTAL_T1, 2)}, split="test")
    assert main(["catalog", "--data", str(tmp_path), "--split", "test", "--out", str(tmp_path / "cat")]) == 0
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert '"studies": 1' in last
    assert (tmp_path / "cat" / "series.csv").is_file()
    assert main(["catalog", "--data", str(tmp_path / "nope"), "--split", "test"]) == 2


def test_error_line_numbers_count_blank_lines(tmp_path: Path) -> None:
    _write_layout(tmp_path, {(100, 1): (vocab.AXIAL_T2, 1)})
    csv = tmp_path / "train_series_descriptions.csv"
    csv.write_text(csv.read_text() + "\n\n../etc,1,Axial T2\n")
    with pytest.raises(CatalogError, match="line 5"):
        catalog.scan(tmp_path, "train")


def test_undescribed_series_are_typed_from_headers(tmp_path: Path) -> None:
    """A series missing from the CSV (or with an unknown description) is typed from its DICOM headers."""
    import pydicom
    from dicom_factory import AXIAL, SAGITTAL, write_synthetic_series

    images = tmp_path / "test_images"
    write_synthetic_series(images, study_id=5, series_id=1, orientation=AXIAL, description="")
    t1 = write_synthetic_series(images, study_id=5, series_id=2, orientation=SAGITTAL, description="SAG 3D")
    write_synthetic_series(images, study_id=5, series_id=3, orientation=SAGITTAL, description="sag stir")
    for path in t1.paths:  # a short repetition time: T1 weighting
        ds = pydicom.dcmread(path)
        ds.RepetitionTime = 550
        ds.save_as(path)
    (tmp_path / "test_series_descriptions.csv").write_text("study_id,series_id,series_description\n5,2,Sag ???\n")
    cat = catalog.scan(tmp_path, "test")
    typed = cat.series.set_index("series_id")
    assert typed.loc[1, "series_description"] == vocab.AXIAL_T2
    assert typed.loc[2, "series_description"] == vocab.SAGITTAL_T1
    assert typed.loc[3, "series_description"] == vocab.SAGITTAL_T2
    assert typed["description_inferred"].all()
    assert (cat.problems["kind"] == "description_inferred").sum() == 3
