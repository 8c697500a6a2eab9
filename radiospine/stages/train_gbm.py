"""`radiospine train-gbm --data DIR --work WORK`: per-condition ordinal GBMs on the train feature table.

Computes (or completes) ``WORK/features/train`` first, then trains, cross-validates, calibrates and blends the
models of :mod:`radiospine.models.condition_models` and writes ``WORK/models/``: native boosters, the model card
(``model_card.json``: feature columns, classes, CV scores per part, calibration, blend weights, versions, config
hash), the out-of-fold predictions and ``prior.csv`` (the weighted prior, which fills rows the models cannot
predict). With ``models.extractor_ablation`` and several extractors, the model card also records the out-of-fold
score of the models on each extractor alone and without each, and whether each helped
(:mod:`radiospine.models.ablation`). Skipped when ``WORK/models`` was written from the same features, labels and config.

With ``task`` other than ``rsna2024`` (:mod:`radiospine.task`) the labels are the task's table (``spider``:
``DATA/train_spider.csv``) and the models are per target (:mod:`radiospine.models.target_models`): native
boosters, ``model_card.json`` with the out-of-fold scores per target beside the level-only prior, and
``oof_predictions.csv``; the priors live in the model card.

The fits (model group x member x fold, and each member on all rows) are independent: they run in ``--jobs``
processes of ``--threads`` threads each (the resource budget, :func:`radiospine.threads.resource_budget`), or as
tasks on the Dask cluster at ``--scheduler`` (:mod:`radiospine.models.fits`); the models are the same bit for bit.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

from radiospine.config import add_config_arguments, budget_from_arguments, config_from_arguments
from radiospine.threads import add_jobs_argument, positive_int

log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", required=True, help="data folder in the Kaggle layout (train.csv, train_images/)")
    parser.add_argument("--work", required=True, help="work folder (features and models go there)")
    add_jobs_argument(parser, "the feature stage and the GBM fits")
    parser.add_argument("--threads", type=positive_int, default=None,
                        help="threads per booster fit (default: resources.threads, else the free cores // --jobs; "
                             "results do not depend on it)")
    parser.add_argument("--scheduler", default=None, metavar="ADDR",
                        help="a Dask scheduler (tcp://host:port) for the feature stage and the GBM fits (instead of "
                             "--jobs processes; the same models)")
    parser.add_argument("--force", action="store_true", help="retrain even if WORK/models is up to date")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    add_config_arguments(parser)


def run(args: argparse.Namespace) -> int:
    from radiospine import artifacts
    from radiospine.features.stage import frame_hash, run_features_stage
    from radiospine.features.store import open_features, read_features
    from radiospine.labels import labels_to_long, load_train_labels
    from radiospine.metrics import weighted_prior
    from radiospine.models.ablation import extractor_ablation
    from radiospine.models.condition_models import prepare_stored_features, train_condition_models
    from radiospine.models.fits import fit_runner
    from radiospine.task import get_task
    from radiospine.workspace import Workspace

    config = config_from_arguments(args)
    budget = budget_from_arguments(args, config, threads=True)
    log.info("resource budget: %s", budget.as_dict())
    data, workspace = Path(args.data), Workspace(args.work)
    started = time.perf_counter()
    feature_summary = run_features_stage(data, "train", workspace.root, config, jobs=budget.jobs,
                                         scheduler=args.scheduler, progress=not args.no_progress)
    features_dir = workspace.features_dir("train")
    task = get_task(config.task)
    if task.metric != "rsna2024":
        return _run_per_target(args, config, budget, task, data, workspace, read_features(features_dir),
                               feature_summary, started)
    labels = labels_to_long(load_train_labels(data / "train.csv"))
    inputs = {"features": open_features(features_dir).content_hash(), "labels": frame_hash(labels)}
    out = workspace.models_dir
    if _up_to_date(out, config, inputs, args.force):
        return 0

    fit_started = time.perf_counter()
    # The table stays in the store: its keys and statuses are read here, its values a model group at a time.
    prepared = prepare_stored_features(features_dir, config.models.extractors)
    with fit_runner(jobs=budget.jobs, threads=budget.threads, scheduler=args.scheduler) as runner:
        trained = train_condition_models(prepared, labels, config.models, runner)
        if config.models.extractor_ablation:
            trained.report["extractor_ablation"] = extractor_ablation(prepared, labels, config.models,
                                                                      all_report=trained.report, runner=runner)
    fit_seconds = time.perf_counter() - fit_started
    trained.save(out)
    with artifacts.atomic_path(workspace.prior) as tmp:
        weighted_prior(labels, pseudo_count=1.0).to_csv(tmp, index=False)
    artifacts.write_manifest(out, stage="train-gbm", config=config.models, inputs=inputs,
                             extra={"fit_seconds": round(fit_seconds, 1)})
    cv = trained.report["cv_scores"]
    summary = {"models": str(out), "features_seconds": feature_summary["seconds"],
               "fit_seconds": round(fit_seconds, 1), "total_seconds": round(time.perf_counter() - started, 1),
               "budget": budget.as_dict(), "oof": cv["final"]["all"],
               "oof_by_member": {name: scores["all"]["score"] for name, scores in cv.items()},
               "extractor_ablation": trained.report.get("extractor_ablation"),
               "weighted_prior_in_sample": trained.report["weighted_prior_in_sample"]}
    print(json.dumps(summary, default=str))
    return 0


def _run_per_target(args, config, budget, task, data: Path, workspace, features, feature_summary: dict,
                    started: float) -> int:
    """train-gbm for a task scored per target (module docstring)."""
    from radiospine import artifacts
    from radiospine.features.stage import frame_hash
    from radiospine.labels import load_task_labels
    from radiospine.models.fits import fit_runner
    from radiospine.models.target_models import train_target_models

    labels = load_task_labels(data / task.labels_file, task)
    inputs = {"features": frame_hash(features), "labels": frame_hash(labels), "task": task.name}
    out = workspace.models_dir
    if _up_to_date(out, config, inputs, args.force):
        return 0
    fit_started = time.perf_counter()
    with fit_runner(jobs=budget.jobs, threads=budget.threads, scheduler=args.scheduler) as runner:
        trained = train_target_models(features, labels, task, config.models, runner)
    fit_seconds = time.perf_counter() - fit_started
    trained.save(out)
    artifacts.write_manifest(out, stage="train-gbm", config=config.models, inputs=inputs,
                             extra={"fit_seconds": round(fit_seconds, 1)})
    scores = trained.report["oof_scores"]
    oof = {row["target"]: {key: row[key] for key in ("weighted_log_loss", "prior_weighted_log_loss", "qwk", "auc",
                                                     "accuracy")}
           for row in scores}
    print(json.dumps({"models": str(out), "task": task.name, "features_seconds": feature_summary["seconds"],
                      "fit_seconds": round(fit_seconds, 1), "total_seconds": round(time.perf_counter() - started, 1),
                      "budget": budget.as_dict(), "oof": oof}, default=str))
    return 0


def _up_to_date(out: Path, config, inputs: dict, force: bool) -> bool:
    """True (and says so) when ``out`` was written from the same ``inputs`` and models config and not ``force``."""
    from radiospine import artifacts

    if force or not artifacts.is_up_to_date(out, config=config.models, inputs=inputs):
        return False
    print(f"{out} is up to date (same inputs: {', '.join(inputs)}; same models config); --force retrains")
    print(json.dumps({"models": str(out), "skipped": True}))
    return True
