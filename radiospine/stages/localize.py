"""`radiospine localize --data DIR --split test --work WORK --out coords.csv`: find the 25 points of every study.

Writes the coordinates in the ``train_label_coordinates.csv`` layout (default
``WORK/localizer/{split}_coordinates.csv``), with ``<out>.provenance.csv`` (predicted / fallback / missing and how,
per point) and ``<out>.summary.json`` beside.
``--truth FILE`` evaluates the points against known coordinates (errors in mm, instance, level).
"""

from __future__ import annotations

import argparse
import json

from radiospine.catalog import SPLITS
from radiospine.config import add_config_arguments, config_from_arguments
from radiospine.threads import add_threads_argument


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", required=True, help="data folder in the Kaggle layout")
    parser.add_argument("--split", choices=SPLITS, default="test")
    parser.add_argument("--work", required=True, help="work folder holding WORK/localizer (train-localizer)")
    parser.add_argument("--out", default=None,
                        help="coordinates CSV to write (default WORK/localizer/{split}_coordinates.csv)")
    parser.add_argument("--truth", default=None, help="coordinates CSV of the same studies to evaluate against")
    add_threads_argument(parser)
    add_config_arguments(parser)


def run(args: argparse.Namespace) -> int:
    from radiospine.roi.localizer.stage import localize

    config = config_from_arguments(args)
    summary = localize(args.data, args.split, args.work, config.roi, out=args.out, device=config.localizer.device,
                       truth=args.truth, threads=args.threads)
    print(json.dumps(summary, default=str))
    return 0
