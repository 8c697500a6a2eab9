"""`radiospine features --data DIR --split train|test --work WORK`: the split's feature table.

Writes ``WORK/features/<split>/`` (one Parquet shard per study and a manifest; ``pandas.read_parquet`` of the
folder is the table). A re-run skips the studies already done; a changed config or data moves the old shards
aside. On the train split the CNN is trained out-of-fold on the ROI crops (``_cnn/``); the test split uses the
model it saved (or ``features.cnn.checkpoint``). See radiospine/features/.
"""

from __future__ import annotations

import argparse
import json

from radiospine.catalog import SPLITS
from radiospine.config import add_config_arguments, budget_from_arguments, config_from_arguments
from radiospine.threads import add_jobs_argument


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", required=True, help="data folder in the Kaggle layout")
    parser.add_argument("--split", choices=SPLITS, required=True)
    parser.add_argument("--work", required=True, help="work folder (features go to WORK/features/<split>)")
    add_jobs_argument(parser, "the per-study work")
    parser.add_argument("--scheduler", default=None, metavar="ADDR",
                        help="run the per-study work on an existing Dask cluster, e.g. tcp://host:8786")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    add_config_arguments(parser)


def run(args: argparse.Namespace) -> int:
    from radiospine.features.stage import run_features_stage

    config = config_from_arguments(args)
    budget = budget_from_arguments(args, config)
    summary = run_features_stage(args.data, args.split, args.work, config, jobs=budget.jobs, scheduler=args.scheduler,
                                 progress=not args.no_progress)
    print(json.dumps({**summary, "budget": budget.as_dict()}))
    return 0
