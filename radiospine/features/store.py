"""The feature store: one Parquet shard per study under ``WORK/features/<split>/``, plus a manifest.

Layout::

    WORK/features/<split>/
        study_<study_id>.parquet   one shard per study: its 25 rows (see radiospine.features.base)
        _manifest.json             config, config hash, input hashes (catalog, extractors), library versions,
                                   the column list
        _compact.arrow             the whole table in one Arrow IPC file, written when a feature run finishes;
                                   read instead of the shards while it matches them (see FeatureStore.compact)
        _lock                      held (flock) by the run writing the folder
        _<extractor>/              an extractor's own work files (the CNN's prepared inputs and models)
        _superseded/<when>_<hash>/ what a run with another config or other inputs left here

``pandas.read_parquet("WORK/features/<split>")`` returns the whole table: pyarrow's dataset discovery skips
names starting with ``_`` or ``.``, and everything besides the shards is named so. Every shard has the same
columns and dtypes (:meth:`FeatureStore.open` fixes the schema), so the shards concatenate cleanly.

Writes are atomic: a shard is written to a hidden temporary file beside it (``.study_<id>.parquet.*.tmp``) and
moved into place with ``os.replace``, so a run killed at any moment (SIGKILL) leaves whole shards only; the next
run removes left-over temporary files and skips the studies whose shard exists.

When the config or the inputs change (the manifest's config hash or input hashes differ, or the column list
does), the old shards are not reused: everything in the folder is **moved aside** into
``_superseded/<time>_<old config hash>/`` (logged at WARNING) and the run starts from an empty folder. Nothing
is deleted, and the moved files stay out of ``read_parquet``.
"""

from __future__ import annotations

import bisect
import contextlib
import datetime as _dt
import fcntl
import json
import logging
import os
import re
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from pydantic import BaseModel

from radiospine import artifacts, vocab
from radiospine.errors import MissingInputError, StoreError
from radiospine.hashing import sha256_hex, sha256_stream, short_hash

log = logging.getLogger(__name__)

SHARD_PATTERN = re.compile(r"^study_(\d+)\.parquet$")
SUPERSEDED_DIR = "_superseded"
LOCK_NAME = "_lock"
COMPACT_NAME = "_compact.arrow"
COMPACT_STUDIES_PER_BATCH = 32  # one record batch per 32 studies: predict's chunks read one or two batches
#: Schema metadata key of the compacted file's record (studies, batches, the shards' fingerprint).
COMPACT_METADATA_KEY = b"radiospine_compact"
_CONDITION_ORDER = {condition: i for i, condition in enumerate(vocab.CONDITIONS)}
_LEVEL_ORDER = {level: i for i, level in enumerate(vocab.LEVELS)}


def table_schema(columns: list[str], string_columns: set[str]) -> pa.Schema:
    """The Arrow schema of every shard: ``study_id`` int64, string keys and status, float64 features."""
    fields = []
    for name in columns:
        if name == "study_id":
            fields.append(pa.field(name, pa.int64(), nullable=False))
        elif name in vocab.KEY_COLUMNS or name in string_columns:
            fields.append(pa.field(name, pa.string(), nullable=False))
        else:
            fields.append(pa.field(name, pa.float64()))
    return pa.schema(fields)


class FeatureStore:
    """The shards and manifest of one split's feature table (see the module docstring).

    Args:
        root: ``WORK/features/<split>``.
    """

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self.schema: pa.Schema | None = None

    # --- paths ------------------------------------------------------------------------------------
    def shard_path(self, study_id: int) -> Path:
        return self.root / f"study_{int(study_id)}.parquet"

    def workdir(self, name: str) -> Path:
        """A folder for extractor ``name``'s own files (``root/_<name>``), out of ``read_parquet``'s way."""
        path = self.root / f"_{name}"
        path.mkdir(parents=True, exist_ok=True)
        return path

    # --- state ------------------------------------------------------------------------------------
    def done_studies(self) -> set[int]:
        """Studies whose shard exists."""
        if not self.root.is_dir():
            return set()
        return {int(match.group(1)) for match in map(SHARD_PATTERN.match, os.listdir(self.root)) if match}

    def manifest(self) -> dict[str, Any] | None:
        return artifacts.read_manifest(self.root)

    @contextlib.contextmanager
    def lock(self) -> Iterator[None]:
        """Hold the folder's lock: one writing run per folder. The OS releases it when the process dies."""
        self.root.mkdir(parents=True, exist_ok=True)
        with open(self.root / LOCK_NAME, "a+") as handle:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise StoreError(f"another run is writing {self.root} (it holds {self.root / LOCK_NAME}); "
                                 f"wait for it to finish or stop it") from None
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def open(self, *, config: BaseModel, inputs: Mapping[str, str], schema: pa.Schema,
             extra: Mapping[str, Any] | None = None) -> None:
        """Make the folder ready for this config, these inputs and this schema; call it holding :meth:`lock`.

        Shards of a run with the same config hash, input hashes and columns are kept (a resumed run skips
        them); anything else is moved aside (see the module docstring). Left-over temporary files of a killed
        run are removed. Then the manifest is (re)written.
        """
        self.root.mkdir(parents=True, exist_ok=True)
        columns = list(schema.names)
        manifest = self.manifest()
        done = self.done_studies()
        if manifest is None and done:
            raise StoreError(f"{self.root} holds {len(done)} feature shards but no {artifacts.MANIFEST_NAME}, so "
                             f"their config is unknown; move or delete the folder and run again")
        if manifest is not None and not (
                artifacts.is_up_to_date(self.root, config=config, inputs=inputs)
                and manifest.get("columns") == columns):
            self._move_aside(manifest)
        self._remove_temporary_files()
        artifacts.write_manifest(self.root, stage="features", config=config, inputs=inputs,
                                 extra={"columns": columns, **dict(extra or {})})
        self.schema = schema

    def _move_aside(self, manifest: Mapping[str, Any]) -> None:
        stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
        base = self.root / SUPERSEDED_DIR / f"{stamp}_{manifest.get('config_hash', 'unknown')}"
        target, suffix = base, 1
        while target.exists():
            suffix += 1
            target = base.with_name(f"{base.name}-{suffix}")
        target.mkdir(parents=True)
        moved = 0
        # The manifest goes last: a run killed while moving finds it still stale and goes on moving.
        entries = sorted((p for p in self.root.iterdir() if p.name not in (SUPERSEDED_DIR, LOCK_NAME)),
                         key=lambda p: p.name == artifacts.MANIFEST_NAME)
        for path in entries:
            os.replace(path, target / path.name)
            moved += 1
        log.warning("features in %s were made with another config or other inputs: moved %d entries to %s",
                    self.root, moved, target)

    def _remove_temporary_files(self) -> None:
        for path in self.root.rglob(".*.tmp"):
            if SUPERSEDED_DIR not in path.relative_to(self.root).parts:
                path.unlink(missing_ok=True)

    # --- shards -----------------------------------------------------------------------------------
    def write_study(self, study_id: int, frame: pd.DataFrame) -> Path:
        """Write one study's rows atomically. ``frame`` must have exactly the schema's columns (any order)."""
        if self.schema is None:
            raise StoreError("FeatureStore.open(...) must be called before write_study")
        study_id = int(study_id)
        names = self.schema.names  # (pyarrow builds this list anew on every access)
        missing = sorted(set(names) - set(frame.columns))
        extra = sorted(set(frame.columns) - set(names))
        if missing or extra or frame.columns.duplicated().any():
            raise ValueError(f"study {study_id}: the rows do not match the table's columns "
                             f"(missing {missing[:3]}, unexpected {extra[:3]}, or a column given twice)")
        if not (frame["study_id"] == study_id).all():
            raise ValueError(f"study {study_id}: rows of other studies in its shard")
        if frame[list(vocab.KEY_COLUMNS)].duplicated().any():
            raise ValueError(f"study {study_id}: repeated (condition, level) keys")
        # Column by column from numpy (pyarrow's from_pandas spends seconds per shard on ~4,600 columns), and
        # without pandas' metadata (about 1 MB per shard, half the file): the schema's types give the frame back.
        float_names = [field.name for field in self.schema if pa.types.is_floating(field.type)]
        float_values = dict(zip(float_names, np.ascontiguousarray(frame[float_names].to_numpy(np.float64).T)))
        arrays = [pa.array(float_values[field.name], type=field.type) if field.name in float_values
                  else pa.array(frame[field.name].to_numpy(), type=field.type) for field in self.schema]
        table = pa.Table.from_arrays(arrays, schema=self.schema)
        path = self.shard_path(study_id)
        with artifacts.atomic_path(path) as tmp:
            pq.write_table(table, tmp)
        return path

    def read(self, study_ids: Iterable[int] | None = None, columns: Sequence[str] | None = None) -> pd.DataFrame:
        """The whole table, or the rows of ``study_ids`` (those with a shard; others are absent), sorted by study,
        condition and level (vocabulary order); keys are unique. ``columns`` (None: all) limits the columns read;
        they must include the key columns.

        An up-to-date ``_compact.arrow`` (see :meth:`compact`) is read instead of the shards, by memory map and
        only the record batches holding ``study_ids``: seconds for the whole real table instead of 0.2-0.3 s per
        shard, with the same frame (values, dtypes, column and row order). Otherwise the shards are read one by
        one and concatenated: ``pandas.read_parquet(folder)`` returns the same table
        but its dataset scan held 5.9 GB to return a 175 MB table of 200 studies x 4,574 columns (memory growing
        with the number of shards), against 0.8 GB here. The whole table's memory grows with the number of
        studies (about 0.9 MB of float64 values per study, and a process reading it holds about 2.5 MB per study
        at its peak); code that can work study by study reads ``study_ids`` in chunks instead.
        """
        done = sorted(self.done_studies() if study_ids is None
                      else self.done_studies() & {int(s) for s in study_ids})
        if columns is not None:
            columns = list(columns)
            missing_keys = [key for key in vocab.KEY_COLUMNS if key not in columns]
            if missing_keys:
                raise ValueError(f"columns must include the key columns; {missing_keys} are missing")
        compact = self._read_compact(done, columns) if done else None
        if compact is not None:
            return sort_table(compact, where=str(self.root))
        if not done:
            names = columns or (self.manifest() or {}).get("columns", list(vocab.KEY_COLUMNS))
            return pd.DataFrame({name: pd.Series(dtype="float64") for name in names})
        frame = pd.concat([pq.read_table(self.shard_path(study_id), columns=columns).to_pandas()
                           for study_id in done], ignore_index=True)
        return sort_table(frame, where=str(self.root))

    def iter_tables(self, columns: Sequence[str]) -> Iterator[pa.Table]:
        """The whole table's ``columns`` in :meth:`read`'s row order, a few studies at a time: the record batches
        of an up-to-date ``_compact.arrow`` (32 studies each), else one shard after the other.

        Each piece is read into memory (not mapped) and is the caller's to drop, so a pass over the table holds one
        piece (about 30 MB of 32 real-size studies) however many studies there are: reading the whole mapped file
        would count all of its pages in the process's resident memory.
        """
        columns = list(columns)
        info = self._compact_info()
        if info is not None:
            with pa.OSFile(str(self.compact_path)) as source:
                names = pa.ipc.open_file(source).schema.names
                absent = sorted(set(columns) - set(names))
                if absent:
                    raise StoreError(f"{self.compact_path} has no column(s) {absent[:3]}")
                options = pa.ipc.IpcReadOptions(included_fields=sorted(names.index(c) for c in columns))
                reader = pa.ipc.open_file(source, options=options)
                for i in range(reader.num_record_batches):
                    yield pa.Table.from_batches([reader.get_batch(i)]).select(columns)
            return
        for study_id in sorted(self.done_studies()):
            shard = pq.read_table(self.shard_path(study_id), columns=list(dict.fromkeys([*vocab.KEY_COLUMNS,
                                                                                          *columns])))
            condition = pc.index_in(shard["condition"], value_set=pa.array(vocab.CONDITIONS))
            level = pc.index_in(shard["level"], value_set=pa.array(vocab.LEVELS))
            order = pc.sort_indices(pa.table({"c": condition, "l": level}),
                                    sort_keys=[("c", "ascending"), ("l", "ascending")])
            yield shard.take(order).select(columns)

    def column_types(self) -> dict[str, pa.DataType]:
        """Every column's Arrow type, in the table's column order (the first shard's schema; all shards share
        it); empty when there is no shard."""
        done = sorted(self.done_studies())
        if not done:
            return {}
        return {field.name: field.type for field in pq.read_schema(self.shard_path(done[0]))}

    def content_hash(self) -> str:
        """A hash of the table's column names and values (short, :func:`radiospine.hashing.short_hash`), computed
        a piece at a time (:meth:`iter_tables`): the same for the shards and the compacted file, without holding
        the table."""
        names = list(self.column_types())
        digests = [sha256_stream() for _ in names]
        for table in self.iter_tables(names):
            for digest, column in zip(digests, table.columns, strict=True):
                if pa.types.is_string(column.type):
                    digest.update("\0".join(column.to_pylist()).encode() + b"\0")
                else:
                    digest.update(column.to_numpy().tobytes())
        return short_hash(",".join(names), *(digest.digest() for digest in digests))

    # --- the compacted copy -----------------------------------------------------------------------
    @property
    def compact_path(self) -> Path:
        return self.root / COMPACT_NAME

    def shard_fingerprint(self) -> str:
        """A hash of the shard set: every shard's name, inode, size and modification time (a shard added,
        removed or rewritten, even atomically with ``os.replace``, changes it)."""
        entries = []
        with os.scandir(self.root) as it:
            for entry in it:
                if SHARD_PATTERN.match(entry.name):
                    stat = entry.stat()
                    entries.append(f"{entry.name}:{stat.st_ino}:{stat.st_size}:{stat.st_mtime_ns}")
        return sha256_hex("\n".join(sorted(entries)))

    def _compact_info(self) -> dict[str, Any] | None:
        """The compacted file's own record (studies, batches, fingerprint of the shards it was built from), or
        None when there is no such file or it does not match the shards as they are now."""
        if not self.compact_path.is_file():
            return None
        try:
            with pa.memory_map(str(self.compact_path)) as source:
                metadata = pa.ipc.open_file(source).schema.metadata or {}
            info = json.loads(metadata[COMPACT_METADATA_KEY])
        except (pa.ArrowInvalid, OSError, KeyError, ValueError) as exc:
            log.warning("%s cannot be used (%s); reading the shards", self.compact_path, exc)
            return None
        if info.get("shards") != self.shard_fingerprint():
            log.info("%s is older than the shards (a shard was added, removed or rewritten since); reading the "
                     "shards", self.compact_path)
            return None
        return info

    def compact(self) -> bool:
        """Write every shard's rows into one Arrow IPC file, ``_compact.arrow``, unless an up-to-date one is
        there; call it holding :meth:`lock`. Returns True when a file was written.

        The file holds the rows sorted (study, then vocabulary order), one record batch per
        ``COMPACT_STUDIES_PER_BATCH`` studies, uncompressed so that reading maps it into memory. Its schema
        metadata records the studies, where each batch starts, and :meth:`shard_fingerprint` of the shards it
        was built from: a shard added, removed or rewritten afterwards makes :meth:`read` ignore the file (and
        the next feature run rebuild it). It is written atomically (a kill leaves the old file, or none, and the
        shards), holding one batch in memory at a time. The shards stay: they are what a resumed run and
        ``pandas.read_parquet(folder)`` use.
        """
        if self._compact_info() is not None:
            return False
        fingerprint = self.shard_fingerprint()
        done = sorted(self.done_studies())
        if not done:
            return False
        start = time.perf_counter()
        # without metadata: shards of older runs carry pandas' metadata
        schema = pq.read_schema(self.shard_path(done[0])).remove_metadata()
        batches = [done[i:i + COMPACT_STUDIES_PER_BATCH] for i in range(0, len(done), COMPACT_STUDIES_PER_BATCH)]
        info = {"shards": fingerprint, "studies": done, "batch_first_study": [batch[0] for batch in batches]}
        schema = schema.with_metadata({COMPACT_METADATA_KEY: json.dumps(info).encode()})
        with (artifacts.atomic_path(self.compact_path) as tmp, pa.OSFile(str(tmp), "wb") as sink,
              pa.ipc.new_file(sink, schema) as writer):
            for batch in batches:
                tables = [_sorted_shard(pq.read_table(self.shard_path(study_id)), schema) for study_id in batch]
                writer.write_table(pa.concat_tables(tables).combine_chunks(), max_chunksize=1 << 30)
        if self.shard_fingerprint() != fingerprint:  # cannot happen under the lock; guards a careless caller
            self.compact_path.unlink(missing_ok=True)
            raise StoreError(f"{self.root}: the shards changed while they were being compacted")
        log.info("features in %s: %d studies compacted into %s in %.1f s", self.root, len(done), COMPACT_NAME,
                 time.perf_counter() - start)
        return True

    def _read_compact(self, study_ids: list[int], columns: list[str] | None = None) -> pd.DataFrame | None:
        """The rows of ``study_ids`` (all with a shard), ``columns`` (None: all), from an up-to-date compacted
        file, or None."""
        info = self._compact_info()
        if info is None:
            return None
        if not set(study_ids) <= set(info["studies"]):  # cannot happen with a matching fingerprint
            return None
        firsts = info["batch_first_study"]
        wanted = sorted({bisect.bisect_right(firsts, study_id) - 1 for study_id in study_ids})
        with pa.memory_map(str(self.compact_path)) as source:
            reader = pa.ipc.open_file(source)
            table = pa.Table.from_batches([reader.get_batch(i) for i in wanted], schema=reader.schema)
            per = COMPACT_STUDIES_PER_BATCH
            if len(study_ids) < sum(len(info["studies"][i * per:(i + 1) * per]) for i in wanted):
                mask = pc.is_in(table["study_id"], value_set=pa.array(study_ids, type=pa.int64()))
                table = table.filter(mask)
            if columns is not None:
                table = table.select(columns)
            return table.replace_schema_metadata(None).to_pandas()


def _sorted_shard(table: pa.Table, schema: pa.Schema) -> pa.Table:
    """One shard's rows in vocabulary order, with ``schema``'s columns, types and no metadata."""
    table = table.select(schema.names)
    if table.schema.remove_metadata().equals(schema.remove_metadata()):
        table = table.replace_schema_metadata(schema.metadata)
    else:
        table = pa.Table.from_arrays([column.cast(field.type) for column, field in zip(table.columns, schema)],
                                     schema=schema)
    condition = pc.index_in(table["condition"], value_set=pa.array(vocab.CONDITIONS))
    level = pc.index_in(table["level"], value_set=pa.array(vocab.LEVELS))
    order = pc.sort_indices(pa.table({"c": condition, "l": level}), sort_keys=[("c", "ascending"),
                                                                               ("l", "ascending")])
    if order.equals(pa.array(range(len(table)), type=order.type)):  # the driver writes in vocabulary order
        return table
    return table.take(order)


def sort_table(frame: pd.DataFrame, *, where: str = "feature table") -> pd.DataFrame:
    """Rows sorted by ``study_id``, then condition and level in vocabulary order; repeated keys raise."""
    if frame.duplicated(list(vocab.KEY_COLUMNS)).any():
        raise StoreError(f"{where}: repeated (study_id, condition, level) keys")
    order = pd.DataFrame({
        "study_id": frame["study_id"].to_numpy(),
        "condition": frame["condition"].map(_CONDITION_ORDER).to_numpy(),
        "level": frame["level"].map(_LEVEL_ORDER).to_numpy(),
    }).sort_values(list(vocab.KEY_COLUMNS), kind="stable").index
    if (order == np.arange(len(frame))).all():  # already sorted (the compacted file is): no copy of the table
        return frame.reset_index(drop=True)
    return frame.iloc[order].reset_index(drop=True)


def open_features(root: str | Path) -> FeatureStore:
    """The feature store of ``WORK/features/<split>``, which must hold a feature table (its manifest)."""
    root = Path(root)
    if artifacts.read_manifest(root) is None:
        raise MissingInputError(f"{root} holds no feature table ({artifacts.MANIFEST_NAME} is missing); "
                                f"run `radiospine features` first")
    return FeatureStore(root)


def read_features(root: str | Path, study_ids: Iterable[int] | None = None,
                  columns: Sequence[str] | None = None) -> pd.DataFrame:
    """The feature table of ``WORK/features/<split>``, or the rows of ``study_ids`` in it, sorted (see
    :meth:`FeatureStore.read`)."""
    return open_features(root).read(study_ids, columns)

