"""What `make demo` prints at the end: the test score beside the oracle's and the weighted prior's, and where the
submission and the report are. Run as ``python -m pipelines.demo_summary --data DIR --submission FILE --report DIR``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    from radiospine.labels import load_train_labels
    from radiospine.metrics import score
    from radiospine.submission import read_submission

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True, type=Path)
    parser.add_argument("--submission", required=True, type=Path)
    parser.add_argument("--report", required=True, type=Path)
    args = parser.parse_args(argv)
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


if __name__ == "__main__":
    sys.exit(main())
