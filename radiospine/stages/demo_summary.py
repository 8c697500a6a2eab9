"""`radiospine demo-summary --data DIR --submission FILE --report DIR`: what `make demo` prints at the end.

The test score beside the oracle's and the weighted prior's (from the synthetic set's ``DIR/truth/``), and where
the submission and the report are.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", required=True, type=Path, help="synthetic data folder (with truth/)")
    parser.add_argument("--submission", required=True, type=Path, help="the submission CSV of the test split")
    parser.add_argument("--report", required=True, type=Path, help="the report folder (index.html inside)")


def run(args: argparse.Namespace) -> int:
    from radiospine.labels import load_train_labels
    from radiospine.metrics import score
    from radiospine.submission import read_submission

    result = score(load_train_labels(args.data / "truth" / "test_labels.csv"), read_submission(args.submission))
    reference = json.loads((args.data / "truth" / "manifest.json").read_text())["scores_on_test"]
    print("\n== radiospine demo ==")
    print(f"test score (lower is better): {result.score:.4f}   "
          + "   ".join(f"{name} {value:.4f}" for name, value in result.as_dict().items() if name != "score"))
    print(f"oracle (Bayes floor):         {reference['oracle']['score']:.4f}")
    print(f"weighted prior (baseline):    {reference['weighted_prior_train']['score']:.4f}")
    print(f"submission: {args.submission.resolve()}")
    print(f"report:     {(args.report / 'index.html').resolve()}")
    return 0
