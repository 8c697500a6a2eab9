"""The grading table of the real benchmark (issue 16): the spider task on SPIDER, out of fold, per target.

``python -m benchmarks.real_grading --volumes VOLUMES --gradings GRADINGS --data DATA --work WORK`` imports the
volumes into ``DATA`` with ``radiospine import-volumes --points disc`` (skipped when ``DATA`` already holds the
spider labels table), computes the feature table of the training split once with the config's extractors
(``configs/spider.yaml``: radiomics, the disc signal and the CNN, disc-centred sagittal T2 crops; the CNN's
out-of-fold folds are the GBMs' folds, so no held-out study's probability comes from a network that saw it), then
trains the per-target models (:func:`radiospine.models.target_models.train_target_models`, patient-grouped
``models.n_folds``-fold cross-validation) once per :data:`FEATURE_SETS`: the radiomics columns alone, radiomics
and the disc signal (:mod:`radiospine.features.disc_signal`), the CNN columns alone, and all three. Every figure is
out of fold and beside the level-only prior fitted on the same training folds.

Writes ``reports/real_grading.json`` and ``reports/real_grading.md`` (``--out`` changes the stem): one row per
(features, target) with ``n``, the weighted log loss and its prior, ``log_loss_reduction``, QWK (ordinal) or AUC
(binary) and their prior's, accuracy and its prior's, and the times.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

import pandas as pd

from radiospine.config import CONFIG_DIR, ModelsConfig, RadiospineConfig, load_config
from radiospine.features.stage import run_features_stage
from radiospine.features.store import read_features
from radiospine.labels import load_task_labels
from radiospine.models.target_models import train_target_models
from radiospine.task import Task, get_task
from radiospine.volume_import import import_volumes
from radiospine.workspace import Workspace

#: The feature sets of the table: a label and the extractors it trains on.
FEATURE_SETS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("radiomics", ("radiomics",)), ("radiomics+disc", ("radiomics", "disc")), ("cnn", ("cnn",)),
    ("radiomics+disc+cnn", ("radiomics", "disc", "cnn")))
COLUMNS = ("features", "target", "scale", "n", "weighted_log_loss", "prior_weighted_log_loss", "log_loss_reduction",
            "qwk", "prior_qwk", "auc", "prior_auc", "accuracy", "prior_accuracy")


def grading_table(features: pd.DataFrame, labels: pd.DataFrame, task: Task, models: ModelsConfig,
                  feature_sets: tuple[tuple[str, tuple[str, ...]], ...] = FEATURE_SETS
                  ) -> tuple[pd.DataFrame, dict[str, float]]:
    """The out-of-fold grading table: per feature set, :func:`train_target_models` on its extractors' columns.

    Returns:
        ``(table, seconds)``: one row per feature set and target (columns :data:`COLUMNS`), and the wall time of
        each feature set's training (``train_<name>``).
    """
    rows, seconds = [], {}
    for name, extractors in feature_sets:
        started = time.perf_counter()
        trained = train_target_models(features, labels, task, models.model_copy(update={"extractors": extractors}))
        seconds[f"train_{name}"] = time.perf_counter() - started
        rows += [{"features": name, **scores} for scores in trained.report["oof_scores"]]
    return pd.DataFrame(rows)[list(COLUMNS)], seconds


def run(data_dir: str | Path, work_dir: str | Path, config: RadiospineConfig, *, jobs: int = 1
        ) -> tuple[pd.DataFrame, dict[str, float]]:
    """The feature stage on ``data_dir``'s training split, then :func:`grading_table` for ``config.task``."""
    task = get_task(config.task)
    started = time.perf_counter()
    run_features_stage(data_dir, "train", work_dir, config, jobs=jobs, progress=False)
    seconds = {"features": time.perf_counter() - started}
    features = read_features(Workspace(work_dir).features_dir("train"))
    labels = load_task_labels(Path(data_dir) / task.labels_file, task)
    table, timings = grading_table(features, labels, task, config.models)
    return table, {**seconds, **timings}


def markdown(table: pd.DataFrame) -> str:
    """The table as Markdown: one line per feature set and target, figures to 3 decimals, n/a where undefined."""
    def cell(value: object) -> str:
        if isinstance(value, float):
            return "n/a" if pd.isna(value) else f"{value:.3f}"
        return str(value)

    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + " --- |" * len(COLUMNS)]
    lines += ["| " + " | ".join(cell(row[c]) for c in COLUMNS) + " |" for _, row in table.iterrows()]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--volumes", help="SPIDER's volumes folder (imported into --data when it lacks the labels)")
    parser.add_argument("--gradings", help="SPIDER's radiological_gradings.csv")
    parser.add_argument("--data", required=True, help="data folder (written by import-volumes --points disc)")
    parser.add_argument("--work", required=True, help="work folder (features and models)")
    parser.add_argument("--config", default=str(CONFIG_DIR / "spider.yaml"))
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config override")
    parser.add_argument("--jobs", type=int, default=1)
    parser.add_argument("--out", default="reports/real_grading", help="stem of the .json and .md written")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    config = load_config(args.config, args.set)
    data = Path(args.data)
    seconds = {}
    if not (data / get_task(config.task).labels_file).is_file():
        if not (args.volumes and args.gradings):
            parser.error(f"{data} holds no {get_task(config.task).labels_file}: pass --volumes and --gradings")
        started = time.perf_counter()
        import_volumes(args.volumes, data, gradings=args.gradings, points="disc")
        seconds["import"] = time.perf_counter() - started
    table, timings = run(data, args.work, config, jobs=args.jobs)
    seconds.update(timings)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    record = {"task": config.task, "data": str(data), "n_folds": config.models.n_folds,
              "seconds": {k: round(v, 1) for k, v in seconds.items()},
              "table": json.loads(table.to_json(orient="records"))}
    out.with_suffix(".json").write_text(json.dumps(record, indent=2) + "\n")
    text = (f"# Grading on SPIDER ({config.task} task), {config.models.n_folds}-fold patient-grouped, out of fold\n\n"
            f"{markdown(table)}\nseconds: {json.dumps(record['seconds'])}\n")
    out.with_suffix(".md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
