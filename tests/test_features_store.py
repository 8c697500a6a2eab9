"""The feature store: atomic shards, one schema, read_parquet(folder) == store.read(), stale shards moved aside."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from radiospine import vocab
from radiospine.config import FeaturesConfig, RadiomicsConfig
from radiospine.errors import StoreError
from radiospine.features.columns import feature_column, status_column
from radiospine.features.store import FeatureStore, read_features, table_schema

STATUS = status_column("radiomics")
MEAN = feature_column("radiomics", "axial_t2", "original_firstorder_Mean")
COLUMNS = [*vocab.KEY_COLUMNS, STATUS, MEAN]
SCHEMA = table_schema(COLUMNS, {STATUS})
CONFIG = FeaturesConfig()


def study_frame(study_id: int, value: float) -> pd.DataFrame:
    keys = [vocab.split_target_column(column) for column in vocab.TARGET_COLUMNS]
    frame = pd.DataFrame({
        "study_id": study_id,
        "condition": [c for c, _ in keys],
        "level": [lv for _, lv in keys],
        STATUS: "ok",
        MEAN: value + np.arange(len(keys)),
    })
    frame.loc[3, STATUS] = "axial_t2: constant intensity inside the mask"
    frame.loc[3, MEAN] = np.nan
    return frame.sample(frac=1.0, random_state=study_id)  # any row order is accepted


def opened(root: Path, config: FeaturesConfig = CONFIG, catalog: str = "c1") -> FeatureStore:
    store = FeatureStore(root)
    store.open(config=config, inputs={"catalog": catalog}, schema=SCHEMA)
    return store


def test_shards_read_back_whole_and_sorted_with_junk_beside_them(tmp_path: Path) -> None:
    store = opened(tmp_path)
    for study_id in (30, 4, 1000):
        store.write_study(study_id, study_frame(study_id, float(study_id)))
    # Things a run leaves beside the shards must not break pandas.read_parquet(folder).
    (tmp_path / ".study_77.parquet.abc.tmp").write_bytes(b"half a parquet file")
    store.workdir("cnn").joinpath("inputs").mkdir()
    (store.workdir("cnn") / "inputs" / "study_4.npz").write_bytes(b"not parquet")
    (store.workdir("cnn") / "full.pt").write_bytes(b"weights")

    table = store.read()
    assert store.done_studies() == {4, 30, 1000}
    assert len(table) == 75 and not table.duplicated(["study_id", "condition", "level"]).any()
    assert table["study_id"].tolist() == [4] * 25 + [30] * 25 + [1000] * 25
    first = table[table["study_id"] == 4]
    assert [vocab.target_column(c, lv) for c, lv in zip(first["condition"], first["level"])] == list(
        vocab.TARGET_COLUMNS)
    assert table[MEAN].isna().sum() == 3
    assert list(table.columns) == COLUMNS

    raw = pd.read_parquet(tmp_path)
    assert len(raw) == 75
    pd.testing.assert_frame_equal(
        raw.sort_values(["study_id", "condition", "level"]).reset_index(drop=True),
        table.sort_values(["study_id", "condition", "level"]).reset_index(drop=True))


def test_shards_with_and_without_pandas_metadata_read_as_one_table(tmp_path: Path) -> None:
    """Shards are written without pandas' schema metadata (half their size at ~4,600 columns); a folder resumed
    across that change holds both kinds and must still read, through the store and through read_parquet."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    store = opened(tmp_path)
    store.write_study(4, study_frame(4, 4.0))
    assert pq.read_schema(store.shard_path(4)).metadata is None
    older = pa.Table.from_pandas(study_frame(30, 30.0)[COLUMNS], schema=SCHEMA, preserve_index=False)
    assert b"pandas" in older.schema.metadata
    pq.write_table(older, store.shard_path(30))

    table = store.read()
    assert table["study_id"].tolist() == [4] * 25 + [30] * 25
    assert str(table[MEAN].dtype) == "float64"
    assert table["study_id"].dtype == np.int64
    raw = pd.read_parquet(tmp_path)
    pd.testing.assert_frame_equal(
        raw.sort_values(["study_id", "condition", "level"]).reset_index(drop=True),
        table.sort_values(["study_id", "condition", "level"]).reset_index(drop=True))


def test_write_is_atomic_a_failed_write_leaves_the_old_shard(tmp_path: Path, monkeypatch) -> None:
    store = opened(tmp_path)
    store.write_study(5, study_frame(5, 1.0))
    before = (tmp_path / "study_5.parquet").read_bytes()

    import pyarrow.parquet as pq

    def crash(table, where, **kwargs):
        Path(where).write_bytes(b"PAR1 half")
        raise OSError("disk full")

    monkeypatch.setattr(pq, "write_table", crash)
    with pytest.raises(OSError, match="disk full"):
        store.write_study(5, study_frame(5, 2.0))
    assert (tmp_path / "study_5.parquet").read_bytes() == before
    assert sorted(os.listdir(tmp_path)) == ["_manifest.json", "study_5.parquet"]


def test_rows_must_match_the_schema(tmp_path: Path) -> None:
    store = opened(tmp_path)
    with pytest.raises(ValueError, match="missing"):
        store.write_study(5, study_frame(5, 1.0).drop(columns=[STATUS]))
    with pytest.raises(ValueError, match="other studies"):
        store.write_study(6, study_frame(5, 1.0))
    twice = study_frame(5, 1.0)
    twice = pd.concat([twice, twice[[STATUS]]], axis=1)
    with pytest.raises(ValueError, match="given twice"):
        store.write_study(5, twice)
    duplicated = study_frame(5, 1.0)
    duplicated = pd.concat([duplicated, duplicated.iloc[:1]])
    with pytest.raises(ValueError, match="repeated"):
        store.write_study(5, duplicated)
    with pytest.raises(StoreError, match="open"):
        FeatureStore(tmp_path / "other").write_study(5, study_frame(5, 1.0))


def test_same_config_keeps_shards_other_config_moves_them_aside(tmp_path: Path) -> None:
    store = opened(tmp_path)
    store.write_study(1, study_frame(1, 1.0))
    (tmp_path / ".study_2.parquet.x.tmp").write_bytes(b"left by a killed run")

    store = opened(tmp_path)  # same config and inputs: resumed
    assert store.done_studies() == {1}
    assert not (tmp_path / ".study_2.parquet.x.tmp").exists()

    changed = FeaturesConfig(radiomics=RadiomicsConfig(slice_mean=False))
    store = opened(tmp_path, changed)
    assert store.done_studies() == set()
    aside = list((tmp_path / "_superseded").iterdir())
    assert len(aside) == 1 and (aside[0] / "study_1.parquet").is_file() and (aside[0] / "_manifest.json").is_file()
    assert store.manifest()["config"]["radiomics"]["slice_mean"] is False
    assert store.read().empty

    store.write_study(1, study_frame(1, 9.0))
    opened(tmp_path, changed, catalog="c2")  # other data: moved aside as well
    assert FeatureStore(tmp_path).done_studies() == set()
    aside = sorted((tmp_path / "_superseded").iterdir())
    assert len(aside) == 2  # never merged into the first folder, even within the same second
    assert sorted(pd.read_parquet(path)[MEAN].max()
                  for path in (aside[0] / "study_1.parquet", aside[1] / "study_1.parquet")) == [25.0, 33.0]


def test_shards_without_manifest_are_refused(tmp_path: Path) -> None:
    store = opened(tmp_path)
    store.write_study(1, study_frame(1, 1.0))
    (tmp_path / "_manifest.json").unlink()
    with pytest.raises(StoreError, match=r"no _manifest.json"):
        opened(tmp_path)


def test_one_writer_at_a_time(tmp_path: Path) -> None:
    first = FeatureStore(tmp_path)
    with first.lock(), pytest.raises(StoreError, match="another run is writing"), FeatureStore(tmp_path).lock():
        pass
    with FeatureStore(tmp_path).lock():
        pass


def test_read_features_names_the_missing_stage(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="run `radiospine features` first"):
        read_features(tmp_path / "features" / "train")
    store = opened(tmp_path)
    store.write_study(2, study_frame(2, 0.0))
    pd.testing.assert_frame_equal(read_features(tmp_path), store.read())
