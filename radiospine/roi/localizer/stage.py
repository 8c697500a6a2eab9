"""The localiser's stages: ``train-localizer`` (with out-of-fold points) and ``localize`` (a split's points)."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Sequence
from pathlib import Path

import pandas as pd
from sklearn.model_selection import KFold

from radiospine.artifacts import atomic_path, atomic_write_text, is_up_to_date, write_manifest
from radiospine.catalog import scan
from radiospine.config import LocalizerConfig, RoiConfig, config_hash
from radiospine.errors import DataError
from radiospine.hashing import short_hash
from radiospine.labels import load_label_coordinates, write_label_coordinates
from radiospine.roi.localizer.data import prepare_training
from radiospine.roi.localizer.evaluation import evaluate_points, summarise_evaluation
from radiospine.roi.localizer.inference import coordinates_from_provenance, predict_studies
from radiospine.roi.localizer.model import load_localizer, save_localizer
from radiospine.roi.localizer.training import fit_localizer
from radiospine.threads import thread_budget
from radiospine.workspace import Workspace, provenance_path

log = logging.getLogger(__name__)


def write_coordinates(provenance: pd.DataFrame, path: str | Path) -> Path:
    """Write the placed points in the ``train_label_coordinates.csv`` layout and the provenance beside them."""
    path = write_label_coordinates(coordinates_from_provenance(provenance), path)
    with atomic_path(provenance_path(path)) as tmp:
        provenance.to_csv(tmp, index=False, lineterminator="\n")
    return path


def train_localizer(data_dir: str | Path, work_dir: str | Path, config: LocalizerConfig, roi_config: RoiConfig, *,
                    out_of_fold: bool, study_ids: Sequence[int] | None = None, force: bool = False,
                    threads: int = 1, jobs: int = 1) -> dict:
    """Train the localiser on the training split's coordinates and save it under ``WORK/localizer``.

    With ``out_of_fold``, also train ``config.folds`` models on K-1 folds of the studies and localise the held-out
    fold with each: ``WORK/localizer/oof_coordinates.csv`` (+ ``.provenance.csv``), the training centres of
    ``roi.train_centres: oof``. ``WORK/localizer/_manifest.json`` records the config, its hash and the hashes of
    the inputs; when they match (and ``force`` is False) the stage is up to date and is not run again. Returns
    the training report (also in ``localizer.json``).

    The training slices are decoded and resampled once, by ``jobs`` worker processes, into the slice cache
    ``WORK/cache/localizer_slices`` (:class:`radiospine.roi.localizer.data.SliceCache`), which the final and the
    out-of-fold models and later runs read; the result does not depend on ``jobs``. ``threads``: torch's compute
    threads on the CPU (:mod:`radiospine.threads`). The weights are bit-identical for the same ``threads``;
    another number of threads splits the convolutions' sums differently and changes them in their last bits
    (measured: 3e-6 at most on the tiny test configuration, the points it places by 0.002 px).
    """
    data_dir = Path(data_dir)
    workspace = Workspace(work_dir)
    folder = workspace.localizer_dir
    catalog = scan(data_dir, "train", study_ids=None if study_ids is None else list(study_ids))
    coords_path = data_dir / "train_label_coordinates.csv"
    coords = load_label_coordinates(coords_path)
    inputs = {"catalog": catalog.content_hash(),
              "coordinates": short_hash(coords_path.read_bytes()),
              "out_of_fold": config_hash(roi_config) if out_of_fold else "no"}
    if not force and is_up_to_date(folder, config=config, inputs=inputs):
        log.info("the localiser in %s is up to date (same config and inputs); --force trains it again", folder)
        return json.loads((folder / "localizer.json").read_text())["training"]
    ids = sorted(set(catalog.study_ids) & set(coords["study_id"].tolist()))
    if not ids:
        raise DataError(f"no study of {data_dir / 'train_images'} has coordinates in "
                        f"{data_dir / 'train_label_coordinates.csv'}: nothing to train the localiser on")
    started = time.perf_counter()
    prepared = prepare_training(catalog, ids, coords, config, workspace.localizer_slice_cache, jobs=jobs)
    by_study = prepared.by_study
    preparation = time.perf_counter() - started
    log.info("localiser training data: %d studies, %d stacks (%d from the slice cache, %d decoded) in %.1f s",
             len(ids), sum(map(len, by_study.values())), prepared.cache_hits, prepared.cache_misses, preparation)
    with thread_budget(threads):
        localizer, report = fit_localizer([s for stacks in by_study.values() for s in stacks], config)
    report.update(studies=len(ids), preparation_seconds=round(preparation, 1), threads=threads,
                  slice_cache={"hits": prepared.cache_hits, "misses": prepared.cache_misses},
                  total_seconds=round(time.perf_counter() - started, 1))
    save_localizer(localizer, folder, extra={"training": report})
    log.info("localiser trained on %d studies in %.1f s (saved in %s)", len(ids), report["total_seconds"], folder)
    if out_of_fold:
        started = time.perf_counter()
        folds = KFold(n_splits=min(config.folds, len(ids)), shuffle=True, random_state=config.seed)
        tables = []
        for fold, (train_index, held_out) in enumerate(folds.split(ids)):
            fold_stacks = [s for i in train_index for s in by_study[ids[i]]]
            with thread_budget(threads):
                fold_localizer, _ = fit_localizer(fold_stacks, config)
                tables.append(predict_studies(fold_localizer, catalog, [ids[i] for i in held_out], roi_config))
            log.info("out-of-fold: fold %d/%d done", fold + 1, folds.get_n_splits())
        write_coordinates(pd.concat(tables, ignore_index=True), workspace.oof_coordinates)
        report["out_of_fold_seconds"] = round(time.perf_counter() - started, 1)
        save_localizer(localizer, folder, extra={"training": report})
    write_manifest(folder, stage="localizer", config=config, inputs=inputs, extra={"training": report})
    return report


def localize(data_dir: str | Path, split: str, work_dir: str | Path, roi_config: RoiConfig, *,
             out: str | Path | None = None, device: str = "auto", truth: str | Path | None = None,
             threads: int = 1, localizer_dir: str | Path | None = None) -> dict:
    """Localise every study of a split with the trained localiser and write its coordinates.

    Writes ``out`` (default ``WORK/localizer/{split}_coordinates.csv``) in the ``train_label_coordinates.csv``
    layout, ``<out stem>.provenance.csv`` (every one of the 25 points per study: predicted, fallback or missing,
    and how), and ``<out stem>.summary.json``; with ``truth`` (a coordinates file of the same studies) also
    ``<out stem>.evaluation.csv`` and the evaluation summary in the JSON. ``threads``: torch's compute threads
    on the CPU (:mod:`radiospine.threads`). ``localizer_dir``: where the trained localiser is (default
    ``WORK/localizer``; a model bundle's ``localizer/``); the coordinates still go to the work folder.
    """
    workspace = Workspace(work_dir)
    localizer = load_localizer(workspace.localizer_dir if localizer_dir is None else localizer_dir, device)
    catalog = scan(data_dir, split)
    out = Path(out) if out is not None else workspace.coordinates(split)
    started = time.perf_counter()
    with thread_budget(threads):
        provenance = predict_studies(localizer, catalog, catalog.study_ids, roi_config)
    seconds = time.perf_counter() - started
    write_coordinates(provenance, out)
    summary = {
        "split": split, "studies": len(catalog.study_ids), "seconds": round(seconds, 1),
        "points_by_source": provenance["source"].value_counts().to_dict(),
        "localizer_config_hash": config_hash(localizer.config), "roi_config_hash": config_hash(roi_config),
        "catalog_hash": catalog.content_hash(),
    }
    if truth is not None:
        evaluation = evaluate_points(catalog, coordinates_from_provenance(provenance), load_label_coordinates(truth))
        with atomic_path(out.with_name(f"{out.stem}.evaluation.csv")) as tmp:
            evaluation.to_csv(tmp, index=False, lineterminator="\n")
        summary["evaluation"] = summarise_evaluation(evaluation)
    atomic_write_text(out.with_name(f"{out.stem}.summary.json"), json.dumps(summary, indent=2, default=str,
                                                                               allow_nan=False))
    return summary
