"""`radiospine validate-submission FILE --data DIR --split test`: check a submission file before sending it.

The studies it must cover are those of ``DIR/{split}_series_descriptions.csv``. Prints ``OK`` with the row
count, or every problem found (exit code 1).
"""

from __future__ import annotations

import argparse

from radiospine.catalog import SPLITS
from radiospine.errors import SubmissionError
from radiospine.submission import study_ids_of_split, validate_submission


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("file", metavar="FILE", help="submission CSV: row_id,normal_mild,moderate,severe")
    parser.add_argument("--data", required=True, help="data folder holding {split}_series_descriptions.csv")
    parser.add_argument("--split", choices=SPLITS, default="test", help="which split's studies (default: test)")


def run(args: argparse.Namespace) -> int:
    study_ids = study_ids_of_split(args.data, args.split)
    try:
        submission = validate_submission(args.file, study_ids)
    except SubmissionError as exc:
        print(f"INVALID {args.file}: {len(exc.problems)} problem(s)")
        for problem in exc.problems:
            print(f"  - {problem}")
        return 1
    print(f"OK {args.file}: {len(submission)} rows for {len(study_ids)} studies ({args.split} split)")
    return 0
