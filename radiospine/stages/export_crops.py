"""`radiospine export-crops --data DIR --split train --work WORK --out OUT`: ROI crops as PNG + index + dataset.json.

The crops are cut where ``roi.train_centres`` says for the train split (labels or the localiser's out-of-fold
points) and at the localiser's points for the test split (see radiospine/roi/centres.py).
"""

from __future__ import annotations

import argparse
import json

from radiospine.catalog import SPLITS
from radiospine.config import add_config_arguments, config_from_arguments


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", required=True, help="data folder in the Kaggle layout")
    parser.add_argument("--split", choices=SPLITS, default="train")
    parser.add_argument("--work", required=True, help="work folder (the localiser's coordinates for predicted centres)")
    parser.add_argument("--out", required=True, help="folder to write images/, index.csv, failures.csv, dataset.json")
    add_config_arguments(parser)


def run(args: argparse.Namespace) -> int:
    from radiospine.roi.export import export_crops

    config = config_from_arguments(args)
    index = export_crops(args.data, args.split, args.work, args.out, config.roi)
    print(json.dumps({"crops": len(index), "studies": int(index["study_id"].nunique()),
                      "by_view": index["view"].value_counts().to_dict(), "out": str(args.out)}))
    return 0
