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
from radiospine.config import add_config_arguments, config_from_arguments


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", required=True, help="data folder in the Kaggle layout")
    parser.add_argument("--split", choices=SPLITS, required=True)
    parser.add_argument("--work", required=True, help="work folder (features go to WORK/features/<split>)")
    parser.add_argument("--jobs", type=int, default=1, help="worker processes (default 1)")
    parser.add_argument("--scheduler", default=None, metavar="ADDR",
                        help="run the per-study work on an existing Dask cluster, e.g. tcp://host:8786")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    add_config_arguments(parser)


def run(args: argparse.Namespace) -> int:
    from radiospine.errors import UserError
    from radiospine.features.stage import run_features_stage

    if args.jobs < 1:
        raise UserError(f"--jobs must be at least 1, got {args.jobs}")
    config = config_from_arguments(args)
    summary = run_features_stage(args.data, args.split, args.work, config, jobs=args.jobs, scheduler=args.scheduler,
                                 progress=not args.no_progress)
    print(json.dumps(summary))
    return 0
