"""Train-test parity: where ROIs are cut per split and ``roi.train_centres``."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from radiospine.config import RoiConfig
from radiospine.errors import DataError, MissingInputError
from radiospine.labels import load_label_coordinates
from radiospine.roi.centres import roi_centres
from radiospine.roi.localizer.inference import PROVENANCE_COLUMNS
from radiospine.roi.localizer.stage import write_coordinates
from radiospine.workspace import Workspace

LABELS = """study_id,series_id,instance_number,condition,level,x,y
11,21,8,Spinal Canal Stenosis,L1/L2,100.5,80.25
11,22,3,Left Neural Foraminal Narrowing,L1/L2,90.0,70.0
"""


def provenance(study_id: int, x: float) -> pd.DataFrame:
    rows = [
        dict(study_id=study_id, series_id=21, instance_number=9, condition="spinal_canal_stenosis", level="l1_l2",
             x=x, y=60.0, source="predicted", method="Sagittal T2/STIR heatmap", peak=0.8, note=""),
        dict(study_id=study_id, series_id=22, instance_number=4, condition="left_neural_foraminal_narrowing",
             level="l1_l2", x=x, y=61.0, source="fallback", method="interpolated", peak=float("nan"), note="no peak"),
        dict(study_id=study_id, series_id=pd.NA, instance_number=pd.NA, condition="left_subarticular_stenosis",
             level="l1_l2", x=float("nan"), y=float("nan"), source="missing", method="", peak=float("nan"),
             note="no Axial T2 series"),
    ]
    return pd.DataFrame(rows, columns=PROVENANCE_COLUMNS).astype({"series_id": "Int64", "instance_number": "Int64"})


def test_train_centres_switch_between_labels_and_out_of_fold_points(tmp_path: Path) -> None:
    data, work = tmp_path / "data", tmp_path / "work"
    data.mkdir()
    (data / "train_label_coordinates.csv").write_text(LABELS)

    labels = roi_centres(data, "train", work, RoiConfig(train_centres="label"))
    assert labels["source"].eq("label").all() and labels["x"].tolist() == [100.5, 90.0]

    with pytest.raises(MissingInputError, match=r"roi.train_centres=oof"):
        roi_centres(data, "train", work, RoiConfig(train_centres="oof"))
    write_coordinates(provenance(11, 55.5), Workspace(work).oof_coordinates)
    oof = roi_centres(data, "train", work, RoiConfig(train_centres="oof"))
    assert oof["x"].tolist() == [55.5, 55.5] and oof["source"].tolist() == ["predicted", "fallback"]
    assert oof["instance_number"].tolist() == [9, 4]
    # the written coordinates are the real file's layout: the loader reads them; the missing point is left out
    assert len(load_label_coordinates(Workspace(work).oof_coordinates)) == 2


def test_test_split_always_uses_the_localiser(tmp_path: Path) -> None:
    data, work = tmp_path / "data", tmp_path / "work"
    data.mkdir()
    (data / "train_label_coordinates.csv").write_text(LABELS)
    with pytest.raises(MissingInputError, match="radiospine localize"):
        roi_centres(data, "test", work, RoiConfig(train_centres="label"))
    write_coordinates(provenance(12, 44.0), Workspace(work).coordinates("test"))
    test = roi_centres(data, "test", work, RoiConfig())
    assert set(test["study_id"]) == {12} and set(test["source"]) == {"predicted", "fallback"}
    # a coordinates file whose provenance lost a row is refused
    path = Workspace(work).coordinates("test")
    table = pd.read_csv(path.with_name("test_coordinates.provenance.csv"))
    table.iloc[1:].to_csv(path.with_name("test_coordinates.provenance.csv"), index=False)
    with pytest.raises(DataError, match="do not belong together"):
        roi_centres(data, "test", work, RoiConfig())
