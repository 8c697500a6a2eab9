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
from radiospine.features import store as store_module
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


# --- the compacted copy (_compact.arrow) --------------------------------------------------------------------------
def compacted_store(root: Path, study_ids, per_batch: int, monkeypatch) -> FeatureStore:
    monkeypatch.setattr(store_module, "COMPACT_STUDIES_PER_BATCH", per_batch)
    store = opened(root)
    for study_id in study_ids:
        store.write_study(study_id, study_frame(study_id, float(study_id)))
    return store


def shards_only(root: Path, study_ids=None) -> pd.DataFrame:
    """The table as read from the shards, with any compacted file out of the way."""
    compact = root / store_module.COMPACT_NAME
    aside = root / "_aside.arrow"
    if compact.exists():
        os.replace(compact, aside)
    try:
        return FeatureStore(root).read(study_ids)
    finally:
        if aside.exists():
            os.replace(aside, compact)


def test_the_compacted_file_reads_as_the_shards_whole_and_in_subsets(tmp_path: Path, monkeypatch) -> None:
    study_ids = [30, 4, 1000, 7, 12, 5, 99]
    store = compacted_store(tmp_path, study_ids, 3, monkeypatch)
    expected = shards_only(tmp_path)
    assert store.compact() is True
    assert store.compact() is False  # up to date: not rewritten
    assert (tmp_path / store_module.COMPACT_NAME).is_file()

    calls = []
    real = store_module.pq.read_table
    monkeypatch.setattr(store_module.pq, "read_table", lambda *a, **k: calls.append(a) or real(*a, **k))
    table = read_features(tmp_path)
    assert not calls, "the compacted file must be read instead of the shards"
    assert table.equals(expected) and list(table.columns) == list(expected.columns)
    assert (table.dtypes == expected.dtypes).all()
    pd.testing.assert_frame_equal(table, expected, check_exact=True)
    # Subsets: within one batch, across batches, with unknown studies, empty.
    for subset in ([4], [5, 7], [4, 30, 1000], [12, 99, 123456], [1000, 4], list(study_ids), [123456]):
        want = shards_only(tmp_path, subset)
        calls.clear()
        part = read_features(tmp_path, subset)
        assert not calls
        pd.testing.assert_frame_equal(part, want, check_exact=True)
        assert part.equals(want)
    # pandas.read_parquet(folder) still sees the shards only.
    assert len(pd.read_parquet(tmp_path)) == 25 * len(study_ids)


def test_a_shard_added_or_rewritten_after_compaction_makes_it_stale(tmp_path: Path, monkeypatch) -> None:
    store = compacted_store(tmp_path, [1, 2, 3], 2, monkeypatch)
    store.compact()
    before = (tmp_path / store_module.COMPACT_NAME).read_bytes()

    store.write_study(2, study_frame(2, 50.0))  # rewritten (same size, atomically replaced)
    table = read_features(tmp_path)
    assert table.loc[table["study_id"] == 2, MEAN].max() == 74.0
    pd.testing.assert_frame_equal(table, shards_only(tmp_path), check_exact=True)
    assert store.compact() is True  # the next feature run rebuilds it
    assert (tmp_path / store_module.COMPACT_NAME).read_bytes() != before
    pd.testing.assert_frame_equal(read_features(tmp_path), table, check_exact=True)

    store.write_study(8, study_frame(8, 8.0))  # added
    assert read_features(tmp_path)["study_id"].unique().tolist() == [1, 2, 3, 8]
    store.compact()
    (tmp_path / "study_1.parquet").unlink()  # removed
    assert read_features(tmp_path)["study_id"].unique().tolist() == [2, 3, 8]

    (tmp_path / store_module.COMPACT_NAME).write_bytes(b"ARROW1 not really")  # damaged: ignored, not fatal
    assert read_features(tmp_path)["study_id"].unique().tolist() == [2, 3, 8]


def test_a_compaction_killed_midway_leaves_a_readable_store(tmp_path: Path, monkeypatch) -> None:
    store = compacted_store(tmp_path, [1, 2, 3, 4, 5], 1, monkeypatch)
    store.compact()
    store.write_study(6, study_frame(6, 6.0))  # the old compacted file is stale now
    expected = shards_only(tmp_path)
    seen = []

    def crash(table, schema):
        seen.append(1)
        if len(seen) == 3:
            raise KeyboardInterrupt  # what a kill looks like from inside (no cleanup code beyond `finally`)
        return real(table, schema)

    real = store_module._sorted_shard
    monkeypatch.setattr(store_module, "_sorted_shard", crash)
    with pytest.raises(KeyboardInterrupt):
        store.compact()
    monkeypatch.setattr(store_module, "_sorted_shard", real)
    pd.testing.assert_frame_equal(read_features(tmp_path), expected, check_exact=True)
    # A SIGKILL leaves the hidden temporary file too: out of read_parquet's way, removed by the next run.
    (tmp_path / f".{store_module.COMPACT_NAME}.x.tmp").write_bytes(b"half an arrow file")
    pd.testing.assert_frame_equal(read_features(tmp_path), expected, check_exact=True)
    assert len(pd.read_parquet(tmp_path)) == 25 * 6
    store = opened(tmp_path)  # the next run of the stage: resumes, removes the temporary file, compacts again
    assert not list(tmp_path.glob(".*.tmp"))
    assert store.compact() is True
    pd.testing.assert_frame_equal(read_features(tmp_path), expected, check_exact=True)


def test_a_config_change_moves_the_compacted_file_aside_with_the_shards(tmp_path: Path, monkeypatch) -> None:
    store = compacted_store(tmp_path, [1, 2], 32, monkeypatch)
    store.compact()
    opened(tmp_path, FeaturesConfig(radiomics=RadiomicsConfig(slice_mean=False)))
    assert not (tmp_path / store_module.COMPACT_NAME).exists()
    assert read_features(tmp_path).empty


def test_pieces_and_content_hash_are_the_same_from_the_shards_and_the_compacted_file(tmp_path: Path,
                                                                                      monkeypatch) -> None:
    """train-gbm reads the table a piece at a time (iter_tables) and hashes it so (content_hash): the compacted
    file (32-study batches, 3 here) and the shards (one study each) give the same rows and the same hash."""
    store = compacted_store(tmp_path, [30, 4, 1000, 7, 12, 5, 99], 3, monkeypatch)
    columns = ["study_id", "condition", MEAN]
    from_shards = pd.concat([table.to_pandas() for table in store.iter_tables(columns)], ignore_index=True)
    hash_of_shards = store.content_hash()
    assert store.compact() is True
    pieces = [table.to_pandas() for table in store.iter_tables(columns)]
    assert len(pieces) == 3  # the compacted file's batches
    pd.testing.assert_frame_equal(pd.concat(pieces, ignore_index=True), from_shards, check_exact=True)
    pd.testing.assert_frame_equal(from_shards, shards_only(tmp_path)[columns], check_exact=True)
    assert store.content_hash() == hash_of_shards
    store.write_study(4, study_frame(4, 50.0))  # other values, another hash
    assert store.content_hash() != hash_of_shards
