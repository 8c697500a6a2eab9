"""`radiospine predict --data DIR --split test --work WORK --out submission.csv`: the submission.

Runs, for the split's studies: the localiser (``WORK/localizer`` from ``radiospine train-localizer``) -> the
feature stage (``WORK/features/<split>``) -> the trained models (``WORK/models`` from ``radiospine train-gbm``)
-> a submission with every row of every study. Rows the models cannot predict (a study with a missing or
unreadable series, so no ROI and no features for that condition and level) are filled from the training prior;
the run prints which studies and rows and why, and writes them to ``<out>.filled.csv``.

With ``--model MODEL_DIR`` (a bundle from ``radiospine export-model``) the localiser, the CNN, the models, the prior
and the config come from the bundle, after its checksums are verified; ``WORK`` then only receives the split's
coordinates and features.

With ``task`` other than ``rsna2024`` (:mod:`radiospine.task`) ``--out`` receives the long predictions of the
per-target models (:mod:`radiospine.models.target_models`): ``study_id, target, level, p0 .. p<K-1>`` for every
study, target and level (columns beyond a target's K empty), rows without features from the level-only prior.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from radiospine.catalog import SPLITS
from radiospine.config import add_config_arguments, budget_from_arguments, config_from_arguments
from radiospine.threads import add_jobs_argument, add_threads_argument


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", required=True, help="data folder in the Kaggle layout")
    parser.add_argument("--split", choices=SPLITS, default="test")
    parser.add_argument("--work", required=True, help="work folder with WORK/localizer and WORK/models (with --model: "
                        "where the split's coordinates and features go)")
    parser.add_argument("--model", default=None, metavar="MODEL_DIR",
                        help="a model bundle (radiospine export-model) instead of WORK's trained models")
    parser.add_argument("--out", required=True, help="the submission CSV to write")
    add_jobs_argument(parser, "the feature stage")
    parser.add_argument("--scheduler", default=None, metavar="ADDR", help="Dask scheduler for the feature stage")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    add_threads_argument(parser)
    add_config_arguments(parser)


def run(args: argparse.Namespace) -> int:
    import pandas as pd

    from radiospine import artifacts
    from radiospine.features.columns import is_status_column
    from radiospine.features.stage import run_features_stage
    from radiospine.features.store import read_features
    from radiospine.models.bundle import bundle_config, open_bundle
    from radiospine.models.condition_models import TrainedModels
    from radiospine.models.target_models import TrainedTargetModels
    from radiospine.roi.localizer.stage import localize
    from radiospine.submission import build_submission, study_ids_of_split, write_submission
    from radiospine.task import get_task
    from radiospine.workspace import Workspace

    data, workspace, out = Path(args.data), Workspace(args.work), Path(args.out)
    timings: dict[str, float] = {}
    started = time.perf_counter()
    if args.model is not None:
        bundle = open_bundle(args.model)
        config = bundle_config(bundle, args)
        layout = bundle.layout
    else:
        config = config_from_arguments(args)
        layout = workspace
    per_target = get_task(config.task).metric != "rsna2024"
    if per_target:
        models = TrainedTargetModels.load(layout.models_dir)
    else:
        models = TrainedModels.load(layout.models_dir)
        prior = pd.read_csv(layout.prior)
    study_ids = study_ids_of_split(data, args.split)
    timings["load"] = time.perf_counter() - started

    step = time.perf_counter()
    localized = localize(data, args.split, workspace.root, config.roi, device=config.localizer.device,
                         threads=args.threads, localizer_dir=layout.localizer_dir)
    timings["localize"] = time.perf_counter() - step

    step = time.perf_counter()
    budget = budget_from_arguments(args, config)
    run_features_stage(data, args.split, workspace.root, config, jobs=budget.jobs, scheduler=args.scheduler,
                       progress=not args.no_progress)
    timings["features"] = time.perf_counter() - step

    # RSNA: the feature table is read and predicted a chunk of studies at a time, so memory does not grow with the
    # number of studies (TrainedModels.predict_stored_studies). A per-target task's table (one view, its
    # roi_condition's rows) is read whole.
    step = time.perf_counter()
    if per_target:
        submission, filled = models.predict(read_features(workspace.features_dir(args.split)), study_ids)
        with artifacts.atomic_path(out) as tmp:
            submission.to_csv(tmp, index=False)
    else:
        completed, filled = models.predict_stored_studies(workspace.features_dir(args.split), study_ids, prior)
        submission = build_submission(completed, study_ids)
        write_submission(submission, out, expected_study_ids=study_ids)
    status_columns = [c for c in filled.columns if is_status_column(c)]
    timings["predict"] = time.perf_counter() - step

    if len(filled):
        with artifacts.atomic_path(out.with_name(f"{out.stem}.filled.csv")) as tmp:
            filled.to_csv(tmp, index=False)
        by_study = filled.groupby("study_id").size()
        print(f"{len(filled)} row(s) of {len(by_study)} study(ies) filled from the training prior "
              f"(no usable ROI features); details in {out.with_name(f'{out.stem}.filled.csv')}:")
        for study_id, group in filled.groupby("study_id"):
            reason = next((str(v) for v in group[status_columns].iloc[0] if isinstance(v, str)), "no feature row")
            print(f"  study {study_id}: {len(group)} row(s): {reason}")
    summary = {"submission": str(out), "rows": len(submission), "studies": len(study_ids),
               "rows_from_prior": len(filled), "localizer": {k: localized.get(k) for k in ("fallback_points",
                                                                                               "missing_points")
                                                                    if k in localized},
               "seconds": {k: round(v, 1) for k, v in timings.items()}, "budget": budget.as_dict()}
    print(json.dumps(summary, default=str))
    return 0
