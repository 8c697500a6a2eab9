"""`radiospine score --labels train.csv --pred submission.csv`: the competition metric and its four parts.

Prints one line per part, then, as the last line of stdout, one JSON object with the keys spinal,
foraminal, subarticular, any_severe_spinal and score.
"""

from __future__ import annotations

import argparse
import json

from radiospine.labels import load_train_labels
from radiospine.metrics import score
from radiospine.submission import read_submission


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--labels", required=True, help="labels in train.csv's layout (study_id + 25 columns)")
    parser.add_argument("--pred", required=True, help="submission CSV: row_id,normal_mild,moderate,severe")


def run(args: argparse.Namespace) -> int:
    result = score(load_train_labels(args.labels), read_submission(args.pred))
    for name, value in result.as_dict().items():
        print(f"{name:>18}: {value:.6f}")
    print(json.dumps(result.as_dict()))
    return 0
