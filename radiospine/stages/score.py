"""`radiospine score --labels train.csv --pred submission.csv [--renormalise]`: the competition metric and its parts.

Scores the file as the leaderboard does (:mod:`radiospine.metrics`): rows that do not sum to 1 are scored as
submitted (clipped and renormalised inside each condition part, the raw ``severe`` taken for
``any_severe_spinal``), with a warning on stderr naming them; ``--renormalise`` divides every row by its sum first
(the tolerant variant, not the leaderboard's number for such a file). NaN, infinite or negative values are refused
(exit code 2, naming the rows).

Prints one line per part, then, as the last line of stdout, one JSON object with the keys spinal,
foraminal, subarticular, any_severe_spinal and score.

``--task spider`` (any task scored per target, :mod:`radiospine.task`): ``--labels`` is the task's labels table
(``train_spider.csv``'s layout), ``--pred`` the long predictions of ``radiospine predict`` for that task; prints
per target the weighted log loss, QWK (ordinal) or ROC AUC (binary) and accuracy beside the level-only prior
fitted on the scored labels themselves (:func:`radiospine.metrics.score_targets`), then one JSON line: a list with
one object per target.
"""

from __future__ import annotations

import argparse
import json
import sys

from radiospine.csvio import read_csv_cells, summarize_items
from radiospine.errors import UserError
from radiospine.labels import load_train_labels
from radiospine.metrics import score, unnormalised_rows
from radiospine.submission import ROW_SUM_TOLERANCE, read_submission
from radiospine.task import DEFAULT_TASK, TASKS, Task, get_task


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--labels", required=True, help="labels in train.csv's layout (study_id + 25 columns)")
    parser.add_argument("--pred", required=True, help="submission CSV: row_id,normal_mild,moderate,severe")
    parser.add_argument("--task", default=DEFAULT_TASK, choices=sorted(TASKS),
                        help="the task the labels and predictions belong to (radiospine/task.py)")
    parser.add_argument("--renormalise", action="store_true",
                        help="divide every row by its sum before scoring (tolerant; off by default, because the "
                             "leaderboard scores rows that do not sum to 1 as they are)")


def run(args: argparse.Namespace) -> int:
    task = get_task(args.task)
    if task.metric != "rsna2024":
        return _score_per_target(args, task)
    predictions = read_submission(args.pred)
    result = score(load_train_labels(args.labels), predictions, renormalise=args.renormalise)
    off = unnormalised_rows(predictions)
    if off:
        how = ("divided by their sums first (--renormalise): this is not the leaderboard's score for this file"
               if args.renormalise else
               "scored as the leaderboard scores them (clipped, then renormalised within each condition part; "
               "any_severe_spinal takes the raw severe)")
        print(f"radiospine score: warning: {len(off)} row(s) of {args.pred} do not sum to 1 (within "
              f"{ROW_SUM_TOLERANCE:g}): {summarize_items(off)}; {how}", file=sys.stderr)
    for name, value in result.as_dict().items():
        print(f"{name:>18}: {value:.6f}")
    print(json.dumps(result.as_dict()))
    return 0


def _score_per_target(args: argparse.Namespace, task: Task) -> int:
    import pandas as pd

    from radiospine.catalog import parse_id
    from radiospine.labels import load_task_labels
    from radiospine.metrics import score_targets

    if args.renormalise:
        raise UserError("--renormalise applies to RSNA submissions only; per-target predictions are scored as "
                        "written")
    labels = load_task_labels(args.labels, task)
    cells = read_csv_cells(args.pred, ("study_id", "target", "level", *task.probability_columns))
    predictions = pd.DataFrame({
        "study_id": [parse_id(value, what="study_id", where=f"{args.pred}, line {line}")
                     for line, value in cells["study_id"].items()],
        "target": cells["target"], "level": cells["level"],
        **{c: pd.to_numeric(cells[c].where(cells[c] != ""), errors="coerce") for c in task.probability_columns}})
    table = score_targets(labels, predictions, task)
    print(table.to_string(index=False, float_format=lambda v: f"{v:.4f}"))
    print(json.dumps(json.loads(table.to_json(orient="records"))))
    return 0
