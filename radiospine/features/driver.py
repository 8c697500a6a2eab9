"""Compute a split's feature table: per-study work in parallel (joblib or Dask), one shard per study as it is done.

How a run goes (:func:`compute_features`)
------------------------------------------
0. The store is locked and opened: the manifest holds the features config, the hashes of the inputs (catalog,
   each extractor's fingerprint: pyradiomics parameter file, CNN labels or weights) and the column list; shards
   of another config are moved aside (:mod:`radiospine.features.store`).
1. Only when an extractor must be fitted on this split (the CNN trained out-of-fold, a
   :class:`~radiospine.features.base.TrainableExtractor`) and some study is not done yet: every study's crops are
   cut and the extractor's small inputs saved (``_cnn/inputs/study_<id>.npz``, skipped when present), then the
   extractor is fitted once (fold models trained side by side in ``jobs`` processes, saved, and reused on
   resume) and becomes a ready extractor that embeds each study with the model that never saw it.
2. Every study without a shard: its crops are cut (``crops_for_study``), every extractor describes them (radiomics
   and the CNN's batched inference together), and the study's 25 rows are written as one shard as soon as the
   result arrives, so a killed run loses only the studies in flight, and a re-run does only the studies without
   a shard.

Phase 2 cuts each study's crops again rather than keeping every crop of the split from phase 1 in memory or on
disk: cutting is a small part of a study's time next to radiomics (about 0.6 of 8 CPU-seconds for a study at
real image sizes), and memory stays bounded by the studies in flight whatever the number of studies.

Work runs in-process (``jobs=1``), in ``jobs`` joblib worker processes, or on an existing Dask cluster
(``scheduler="tcp://host:port"``); every worker process limits its compute threads to one (torch, SimpleITK,
BLAS), so results are the same in every mode. Shards are always written by this process, so Dask workers need
to read the data but not the work folder. ``crops_for_study`` and the extractors are pickled to the workers:
use a top-level function or a :func:`functools.partial` of one.

A study whose crops cannot be made (``crops_for_study`` raises) is recorded: its rows get the status
``"ROI crops failed: <reason>"`` for every extractor, it counts as done, and the run goes on. To retry it,
delete its shard.
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from radiospine import artifacts, vocab
from radiospine.config import FeaturesConfig
from radiospine.errors import UserError
from radiospine.features.base import (
    STATUS_NO_CROP,
    STATUS_OK,
    ExtractionResult,
    Extractor,
    TrainableExtractor,
)
from radiospine.features.columns import feature_column, is_extractor_name, status_column
from radiospine.features.store import FeatureStore, table_schema
from radiospine.roi.cut import RoiFailure
from radiospine.roi.types import RoiCrop
from radiospine.threads import thread_budget

log = logging.getLogger(__name__)


class StudyCrops(NamedTuple):
    """What the ROI cutter made of one study: its crops, and the (condition, level, view) it could not cut."""

    crops: Sequence[RoiCrop]
    failures: Sequence[RoiFailure] = ()


#: study id -> its crops, or its crops and the cutter's recorded failures.
CropsForStudy = Callable[[int], Sequence[RoiCrop] | StudyCrops]
_SOURCE_PRIORITY = {"label": 0, "predicted": 1, "fallback": 2}
#: The status prefix of a study whose crops could not be made.
CROPS_FAILED = "ROI crops failed"


@dataclass(frozen=True)
class RunSummary:
    """What :func:`compute_features` did.

    Attributes:
        studies: studies asked for.
        skipped: studies whose shard existed already.
        written: shards written by this run.
        failed: study id -> reason, for the studies whose crops could not be made (in this run).
        seconds: wall time of the run.
        rois: crops described by this run.
        seconds_per_roi: extractor name -> its mean time per crop in this run (in its worker).
        fit_seconds: trainable extractor name -> wall time of preparing its inputs and fitting it (phase 1) in
            this run; part of ``seconds``.
    """

    studies: int
    skipped: int
    written: int
    failed: dict[int, str] = field(default_factory=dict)
    seconds: float = 0.0
    rois: int = 0
    seconds_per_roi: dict[str, float] = field(default_factory=dict)
    fit_seconds: dict[str, float] = field(default_factory=dict)


def table_columns(extractors: Sequence[Extractor | TrainableExtractor], views: Sequence[str]
                  ) -> tuple[list[str], set[str]]:
    """The table's columns in order, and which of them hold strings (keys and statuses).

    Order: the key columns, then per extractor its status column and its features, view by view.
    """
    columns = list(vocab.KEY_COLUMNS)
    strings = {"condition", "level"}
    for extractor in extractors:
        columns.append(status_column(extractor.name))
        strings.add(status_column(extractor.name))
        names = extractor.feature_names()
        columns += [feature_column(extractor.name, view, name) for view in views for name in names]
    return columns, strings


def compute_features(study_ids: Iterable[int], crops_for_study: CropsForStudy,
                     extractors: Sequence[Extractor | TrainableExtractor], store: FeatureStore, *,
                     config: FeaturesConfig, catalog_hash: str = "", jobs: int = 1, scheduler: str | None = None,
                     progress: bool = True, extra_inputs: Mapping[str, str] | None = None) -> RunSummary:
    """Compute (or complete) the feature table of ``study_ids`` in ``store`` (see the module docstring).

    Args:
        study_ids: the split's studies; every one gets its 25 rows.
        crops_for_study: study id -> that study's crops (any number per key and view; for a key and view
            given twice, the crop with the better ``source``, label > predicted > fallback, is described, then
            the first), or a :class:`StudyCrops` that also holds the cutter's failures, whose reasons go to the
            status of their key (``"axial_t2: no ROI crop: <reason>; sagittal_t2: ok"``). Crops and failures
            of views not in ``config.views`` are ignored.
        extractors: ready extractors and/or extractors to fit on this split; names must be distinct.
        store: the split's feature folder.
        config: the ``features`` config (its views; recorded in the manifest with its hash).
        catalog_hash: a hash of the data the crops come from (recorded; a change moves old shards aside).
        jobs: worker processes (1: in this process), also for fitting an extractor (the CNN's fold models).
        scheduler: address of a Dask scheduler (``tcp://host:port``); overrides ``jobs`` for the per-study work.
        progress: show progress bars (studies done, studies per second, time left) on stderr.
        extra_inputs: more input hashes to record (and to compare on resume).
    """
    start = time.perf_counter()
    study_ids = [int(s) for s in study_ids]
    if len(set(study_ids)) != len(study_ids):
        raise ValueError("compute_features: study ids are repeated")
    if jobs < 1:
        raise ValueError(f"jobs must be at least 1, got {jobs}")
    names = [extractor.name for extractor in extractors]
    if not names or len(set(names)) != len(names) or not all(is_extractor_name(name) for name in names):
        raise ValueError(f"extractor names must be distinct snake_case words without '__' (not 'key'), got {names}")
    views = tuple(config.views)
    inputs = {"catalog": catalog_hash, **{f"extractor:{e.name}": e.fingerprint() for e in extractors},
              **dict(extra_inputs or {})}
    columns, string_columns = table_columns(extractors, views)

    with store.lock():
        store.open(config=config, inputs=inputs, schema=table_schema(columns, string_columns),
                   extra={"views": list(views), "extractors": names})
        done = store.done_studies()
        todo = [s for s in study_ids if s not in done]
        log.info("features in %s: %d studies, %d done before, %d to do", store.root, len(study_ids),
                 len(study_ids) - len(todo), len(todo))
        ready: list[Extractor] = []
        fit_seconds: dict[str, float] = {}
        for extractor in extractors:
            if isinstance(extractor, TrainableExtractor) and not isinstance(extractor, Extractor) and todo:
                fit_start = time.perf_counter()
                ready.append(_fit(extractor, study_ids, crops_for_study, store, views=views, jobs=jobs,
                                  scheduler=scheduler, progress=progress))
                fit_seconds[extractor.name] = time.perf_counter() - fit_start
            else:
                ready.append(extractor)

        failed: dict[int, str] = {}
        n_rois, extractor_seconds = 0, dict.fromkeys(names, 0.0)
        task = functools.partial(_describe_study, crops_for_study=crops_for_study, extractors=ready, views=views)
        for result in _map_studies(task, todo, jobs=jobs, scheduler=scheduler, desc="features", progress=progress):
            store.write_study(result.study_id, result.rows.reindex(columns=columns))
            if result.error is not None:
                failed[result.study_id] = result.error
                log.warning("study %d: %s: %s", result.study_id, CROPS_FAILED, result.error)
            n_rois += result.n_crops
            for name, value in result.seconds.items():
                extractor_seconds[name] += value
        if set(study_ids) <= store.done_studies():
            store.compact()  # the whole table in one file that reads in seconds (kept up to date, else rebuilt)
    summary = RunSummary(studies=len(study_ids), skipped=len(study_ids) - len(todo), written=len(todo),
                         failed=failed, seconds=time.perf_counter() - start, rois=int(n_rois),
                         seconds_per_roi={name: total / n_rois for name, total in extractor_seconds.items()
                                          if n_rois}, fit_seconds=fit_seconds)
    log.info("features in %s: %d shards written, %d skipped, %d studies without crops, %d ROIs, %.1f s (per ROI: "
             "%s)", store.root, summary.written, summary.skipped, len(failed), n_rois, summary.seconds,
             ", ".join(f"{name} {value:.3f} s" for name, value in summary.seconds_per_roi.items()))
    return summary


# --- phase 1: fitting an extractor on this split ----------------------------------------------------------

def _fit(trainable: TrainableExtractor, study_ids: list[int], crops_for_study: CropsForStudy, store: FeatureStore,
         *, views: tuple[str, ...], jobs: int, scheduler: str | None, progress: bool) -> Extractor:
    workdir = store.workdir(trainable.name)
    inputs_dir = workdir / "inputs"
    inputs_dir.mkdir(exist_ok=True)
    missing = [s for s in study_ids if not (inputs_dir / f"study_{s}.npz").is_file()]
    task = functools.partial(_prepare_study, crops_for_study=crops_for_study, trainable=trainable, views=views)
    for study_id, arrays, error in _map_studies(task, missing, jobs=jobs, scheduler=scheduler,
                                                desc=f"{trainable.name} inputs", progress=progress):
        if error is not None:
            log.warning("study %d: %s: %s (left out of %s fitting)", study_id, CROPS_FAILED, error, trainable.name)
        with artifacts.atomic_path(inputs_dir / f"study_{study_id}.npz") as tmp, open(tmp, "wb") as handle:
            np.savez(handle, **arrays)
    fitted = trainable.fit(workdir, study_ids, threads=jobs, progress=progress)
    if fitted.name != trainable.name or fitted.feature_names() != trainable.feature_names():
        raise ValueError(f"{trainable.name}: the fitted extractor's name or features differ from the trainer's")
    return fitted


def _prepare_study(study_id: int, *, crops_for_study: CropsForStudy, trainable: TrainableExtractor,
                   views: tuple[str, ...]) -> tuple[int, dict[str, np.ndarray], str | None]:
    with thread_budget(1):
        try:
            crops, _ = _select_crops(study_id, crops_for_study(study_id), views)
        except Exception as exc:  # noqa: BLE001 -- the cutter's failure on one study is recorded; the run goes on
            return study_id, trainable.prepare([]), _reason(exc)
        return study_id, trainable.prepare(crops), None


# --- phase 2: describing studies ------------------------------------------------------------------------------

class _StudyResult(NamedTuple):
    """A study's 25 rows (columns in any order), why its crops could not be made (or None), its crop count and
    the seconds each extractor spent on them."""

    study_id: int
    rows: pd.DataFrame
    error: str | None
    n_crops: int
    seconds: dict[str, float]


def _describe_study(study_id: int, *, crops_for_study: CropsForStudy, extractors: Sequence[Extractor],
                    views: tuple[str, ...]) -> _StudyResult:
    with thread_budget(1):
        try:
            crops, failures = _select_crops(study_id, crops_for_study(study_id), views)
        except Exception as exc:  # noqa: BLE001 -- the cutter's failure on one study is recorded; the run goes on
            reason = _reason(exc)
            return _StudyResult(study_id, _study_rows(study_id, [], {}, extractors, views, study_error=reason),
                                reason, 0, {})
        results, seconds = {}, {}
        for extractor in extractors:
            start = time.perf_counter()
            results[extractor.name] = extractor.extract(crops)
            seconds[extractor.name] = time.perf_counter() - start
        rows = _study_rows(study_id, crops, results, extractors, views, cut_failures=failures)
        return _StudyResult(study_id, rows, None, len(crops), seconds)


def _select_crops(study_id: int, made: Sequence[RoiCrop] | StudyCrops, views: tuple[str, ...]
                  ) -> tuple[list[RoiCrop], list[RoiFailure]]:
    """One crop per (condition, level, view) of the views described, and the cutter's failures in those views
    (see :func:`compute_features`)."""
    crops, failures = made if isinstance(made, StudyCrops) else (made, ())
    chosen: dict[tuple[str, str, str], RoiCrop] = {}
    for crop in crops:
        roi = crop.roi
        if roi.study_id != study_id:
            raise ValueError(f"the ROI cutter returned a crop of study {roi.study_id} for study {study_id}")
        vocab.target_column(roi.condition, roi.level)  # validates both
        if roi.view not in views:
            continue
        key = (roi.condition, roi.level, roi.view)
        if key not in chosen or _SOURCE_PRIORITY[roi.source] < _SOURCE_PRIORITY[chosen[key].roi.source]:
            chosen[key] = crop
    kept_failures = []
    for failure in failures:
        vocab.target_column(failure.condition, failure.level)
        if failure.view in views and (failure.condition, failure.level, failure.view) not in chosen:
            kept_failures.append(failure)
    return list(chosen.values()), kept_failures


def _study_rows(study_id: int, crops: Sequence[RoiCrop], results: Mapping[str, list[ExtractionResult]],
                extractors: Sequence[Extractor], views: tuple[str, ...], *, study_error: str | None = None,
                cut_failures: Sequence[RoiFailure] = ()) -> pd.DataFrame:
    """The 25 rows of a study in vocabulary order: keys, per extractor its status and features."""
    keys = [vocab.split_target_column(column) for column in vocab.TARGET_COLUMNS]
    row_of_key = {key: i for i, key in enumerate(keys)}
    columns: dict[str, Any] = {
        "study_id": np.full(len(keys), study_id, dtype=np.int64),
        "condition": [condition for condition, _ in keys],
        "level": [level for _, level in keys],
    }
    for extractor in extractors:
        names = extractor.feature_names()
        values = {view: np.full((len(keys), len(names)), np.nan) for view in views}
        view_status: list[dict[str, str]] = [{} for _ in keys]
        for failure in cut_failures:
            view_status[row_of_key[(failure.condition, failure.level)]][failure.view] = \
                f"{STATUS_NO_CROP}: {failure.reason}"
        for crop, result in zip(crops, results.get(extractor.name, []), strict=True):
            row = row_of_key[(crop.roi.condition, crop.roi.level)]
            view_status[row][crop.roi.view] = STATUS_OK if result.ok else str(result.error)
            if result.ok:
                if len(result.features) != len(names):
                    raise ValueError(f"{extractor.name} gave {len(result.features)} features for a crop, its "
                                     f"feature_names() lists {len(names)}")
                values[crop.roi.view][row] = [result.features[name] for name in names]
        if study_error is not None:
            statuses = [f"{CROPS_FAILED}: {study_error}"] * len(keys)
        else:
            statuses = [_key_status(status) for status in view_status]
        columns[status_column(extractor.name)] = statuses
        for view in views:
            for j, name in enumerate(names):
                columns[feature_column(extractor.name, view, name)] = values[view][:, j]
    return pd.DataFrame(columns)


def _key_status(view_status: Mapping[str, str]) -> str:
    if not view_status:
        return STATUS_NO_CROP
    if all(status == STATUS_OK for status in view_status.values()):
        return STATUS_OK
    return "; ".join(f"{view}: {status}" for view, status in sorted(view_status.items()))


def _reason(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


# --- running per-study tasks -------------------------------------------------------------------------------

def _map_studies(task: Callable[[int], tuple], study_ids: Sequence[int], *, jobs: int, scheduler: str | None,
                 desc: str, progress: bool) -> Iterator[tuple]:
    """``task(study_id)`` for every study, yielded as each finishes (any order), with a progress bar."""
    if not study_ids:
        return
    bar = tqdm(total=len(study_ids), desc=desc, unit="study", disable=not progress, smoothing=0.05)
    try:
        if scheduler is not None:
            yield from _on_dask(task, study_ids, scheduler, bar)
        elif jobs > 1:
            from joblib import Parallel, delayed

            with Parallel(n_jobs=jobs, return_as="generator_unordered") as parallel:
                for result in parallel(delayed(task)(study_id) for study_id in study_ids):
                    bar.update(1)
                    yield result
        else:
            for study_id in study_ids:
                result = task(study_id)
                bar.update(1)
                yield result
    finally:
        bar.close()


def _on_dask(task: Callable[[int], tuple], study_ids: Sequence[int], scheduler: str, bar: tqdm) -> Iterator[tuple]:
    from distributed import Client, as_completed

    try:
        client = Client(scheduler, timeout="30s")
    except OSError as exc:
        raise UserError(f"cannot reach the Dask scheduler at {scheduler} ({exc}); start one "
                        f"(`dask scheduler`) or drop --scheduler") from None
    with client:
        shared_task = client.scatter(task, broadcast=True, hash=False)
        futures = [client.submit(_call, shared_task, study_id, pure=False) for study_id in study_ids]
        try:
            for future in as_completed(futures):
                result = future.result()
                future.release()
                bar.update(1)
                yield result
        finally:
            client.cancel(futures)


def _call(task: Callable[[int], tuple], study_id: int) -> tuple:
    return task(study_id)
