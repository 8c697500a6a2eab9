"""`radiospine train-localizer --data DIR --work WORK`: train the level localiser on the training coordinates.

Writes ``WORK/localizer/`` (checkpoints ``sagittal.pt``/``axial.pt`` with their ``.json`` sidecars holding the
architecture, ``localizer.json`` with the config and training log; a training set without Axial T2 series, such as
SPIDER's sagittal-only studies, trains no axial network and says so in the log) and, when ``roi.train_centres``
is ``oof`` (or with ``--oof``), the out-of-fold coordinates of the training studies.
"""

from __future__ import annotations

import argparse
import json

from radiospine.config import add_config_arguments, budget_from_arguments, config_from_arguments
from radiospine.threads import add_jobs_argument, add_threads_argument


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", required=True, help="data folder in the Kaggle layout (train split)")
    parser.add_argument("--work", required=True, help="work folder; the localiser goes to WORK/localizer")
    parser.add_argument("--oof", action="store_true",
                        help="also write out-of-fold coordinates (implied by roi.train_centres=oof)")
    parser.add_argument("--force", action="store_true", help="train again even when the manifest says up to date")
    add_jobs_argument(parser, "decoding and resampling the training slices into the slice cache")
    add_threads_argument(parser)
    add_config_arguments(parser)


def run(args: argparse.Namespace) -> int:
    from radiospine.roi.localizer.stage import train_localizer

    config = config_from_arguments(args)
    budget = budget_from_arguments(args, config)
    report = train_localizer(args.data, args.work, config.localizer, config.roi,
                             out_of_fold=args.oof or config.roi.train_centres == "oof", force=args.force,
                             threads=args.threads, jobs=budget.jobs)
    for kind in ("sagittal", "axial"):
        if "losses" in report[kind]:  # absent for a network not trained (no data of its view)
            report[kind]["final_loss"] = round(report[kind].pop("losses")[-1], 5)
            for key in ("held_out_losses", "held_out_error_mm"):
                report[kind].pop(key)
    print(json.dumps({**report, "budget": budget.as_dict()}))
    return 0
