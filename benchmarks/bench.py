"""`make bench`: the whole pipeline on synthetic studies at real image sizes: timed, scored, extrapolated.

    python -m benchmarks.bench [--data bench/data] [--work bench/work] [--train-studies 200] [--test-studies 100]
                               [--jobs 2] [--config configs/default.yaml] [--feature-studies 8] [--out reports]
                               [--memory-studies 200 1975] [--fresh]

Every stage is a ``radiospine`` command run in a child process, exactly as a user runs it; for each, the wall
time, the CPU seconds, the peak resident memory (RSS) of its whole process tree (:class:`TreeMonitor`) and the
peak RSS of its main process and of its largest worker process (the ``memory`` table: each against the limit of
2 GB per process, :data:`MEMORY_LIMIT_MB`):

=================  ==============================================================================================
synth              ``radiospine synth --no-small`` into ``--data`` (only when it holds no data set; else not timed)
train-localizer    the level localiser on the training split
localize           the test split, evaluated against ``truth/test_label_coordinates.csv`` (error in mm, level)
features           the training split's feature table (radiomics, and the CNN trained out of fold)
train-gbm          the per-condition models on that table (out-of-fold score), and the extractor ablation: the
                   out-of-fold score on radiomics alone, the CNN alone and both (:mod:`radiospine.models.ablation`)
predict            the test split: localiser, features, models -> submission
score              the submission against ``truth/test_labels.csv``, beside the oracle and the weighted prior
report             the HTML report
features-vs-naive  :mod:`benchmarks.bench_features` on ``--feature-studies`` training studies: throughput,
                   peak RSS and speed against a naive loop over the same ROIs
memory-scale       :mod:`benchmarks.memory_scale`: peak RSS of train-gbm and of predict's model part on feature
                   stores of ``--memory-studies`` studies with the real table's columns (no images; the stores
                   are written into ``WORK/memory`` once)
=================  ==============================================================================================

Results go to ``OUT/bench.json`` and ``OUT/bench.md`` (field by field in the README), with the time of each stage
extrapolated to the real training set (1,975 studies) on 2 and on 16 cores (:func:`extrapolate`).

A finished stage is recorded in ``WORK/bench_stages.json`` with its figures, and a re-run with the same data,
config and arguments skips it and reports the recorded figures (a long run that stops can be continued);
``--fresh`` deletes ``WORK`` and starts over.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from benchmarks.monitor import TreeMonitor
from radiospine.hashing import json_hash

REPO = Path(__file__).resolve().parents[1]
#: Studies in the real RSNA 2024 training set (rsna_facts.json).
REAL_TRAIN_STUDIES = 1975
#: The synth stage's figures, kept in the data folder it made (the work folder may be deleted with --fresh).
SYNTH_RECORD = "bench_synth.json"
#: The memory limit of one process (issue 18): 2 GB, in the MB of the figures (2**20 bytes).
MEMORY_LIMIT_MB = 2000
#: Core counts the stages are extrapolated to.
EXTRAPOLATION_CORES = (2, 16)

#: How each stage's time grows, used by :func:`extrapolate`:
#: ``parallel``: linear in studies, divided among the worker processes (one per core);
#: ``serial``: linear in studies, one process with one compute thread (torch's localiser, the boosters), so more
#: cores do not shorten it; ``fixed``: the same whatever the number of studies (the localiser's training: a fixed
#: number of slices per epoch, at most ``localizer.epochs`` epochs).
STAGE_SCALING = {
    "synth": "parallel",
    "train-localizer.slices": "parallel",
    "train-localizer.training": "fixed",
    "localize": "serial",
    "features.describe": "parallel",
    "features.cnn_fit": "cnn",
    "train-gbm": "serial",
    "predict.localize": "serial",
    "predict.features": "parallel",
    "predict.models": "serial",
    "report": "serial",
}


def radiospine_command() -> list[str]:
    """The ``radiospine`` command of the interpreter running this module (the project's virtual environment)."""
    script = Path(sys.executable).with_name("radiospine")
    return [str(script)] if script.is_file() else [sys.executable, "-m", "radiospine.cli"]


def run_stage(name: str, command: Sequence[str], log_dir: Path) -> dict[str, Any]:
    """Run one command, monitored; returns its figures and the JSON of its last stdout line (if any).

    stdout and stderr go to ``log_dir/<name>.out`` / ``.err``. A failing command stops the benchmark with the
    command and the end of its error log.
    """
    log_dir.mkdir(parents=True, exist_ok=True)
    out_path, err_path = log_dir / f"{name}.out", log_dir / f"{name}.err"
    print(f"[bench] {name}: {' '.join(command)}", file=sys.stderr, flush=True)
    with open(out_path, "w") as out, open(err_path, "w") as err, TreeMonitor(interval=0.2) as monitor:
        started = time.perf_counter()
        process = subprocess.Popen(list(command), stdout=out, stderr=err, cwd=REPO)
        code = process.wait()
        seconds = time.perf_counter() - started
    if code != 0:
        tail = "".join(err_path.read_text().splitlines(keepends=True)[-15:])
        raise SystemExit(f"bench stage {name} failed (exit {code}): {' '.join(command)}\n{tail}\n"
                         f"(whole log: {err_path})")
    lines = [line for line in out_path.read_text().splitlines() if line.strip()]
    try:
        output = json.loads(lines[-1]) if lines else None
    except json.JSONDecodeError:
        output = None
    figures = {"seconds": round(seconds, 1), "cpu_seconds": round(monitor.cpu_seconds, 1),
               "peak_rss_mb": round(monitor.peak_rss / 2**20, 1), **process_peaks(monitor, process.pid),
               "output": output,
               "finished": datetime.datetime.now().isoformat(timespec="seconds"),
               "load_average_at_end": [round(x, 2) for x in os.getloadavg()]}
    print(f"[bench] {name}: {figures['seconds']} s, peak RSS {figures['peak_rss_mb']} MB (main process "
          f"{figures['main_peak_rss_mb']} MB, largest worker {figures['largest_worker_peak_rss_mb']} MB)",
          file=sys.stderr, flush=True)
    return figures


def process_peaks(monitor: TreeMonitor, main_pid: int) -> dict[str, Any]:
    """The peak RSS (MB) of the command's own process (``main``) and of the largest of its descendants (its
    worker processes: joblib's, the CNN's fold trainers; None when it started none), and how many it started."""
    workers = monitor.descendants_of(main_pid)
    largest = max((monitor.peak_rss_by_pid[pid] for pid in workers), default=None)
    return {"main_peak_rss_mb": round(monitor.peak_rss_by_pid.get(main_pid, 0) / 2**20, 1),
            "largest_worker_peak_rss_mb": None if largest is None else round(largest / 2**20, 1),
            "worker_processes": len(workers)}


class StageRecord:
    """``WORK/bench_stages.json``: the figures of finished stages, valid for one data set, config and arguments."""

    def __init__(self, path: Path, key: str) -> None:
        self.path, self.key = path, key
        recorded = json.loads(path.read_text()) if path.is_file() else {}
        self.stages: dict[str, Any] = recorded.get("stages", {}) if recorded.get("key") == key else {}

    def run(self, name: str, command: Sequence[str], log_dir: Path) -> dict[str, Any]:
        if name in self.stages:
            print(f"[bench] {name}: recorded on {self.stages[name]['finished']} (--fresh runs it again)",
                  file=sys.stderr)
            return self.stages[name]
        figures = run_stage(name, command, log_dir)
        self.stages[name] = figures
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(f".{self.path.name}.tmp")
        tmp.write_text(json.dumps({"key": self.key, "stages": self.stages}, indent=2))
        os.replace(tmp, self.path)
        return figures


def extrapolate(seconds: float, studies: int, scaling: str, cores: int, *, jobs: int, cnn_models: int) -> float:
    """Seconds of a stage for :data:`REAL_TRAIN_STUDIES` studies on ``cores`` cores, from ``seconds`` measured on
    ``studies`` studies with ``jobs`` worker processes.

    Linear in the number of studies (ROIs, training slices and table rows all grow with it), then:
    ``parallel`` divides by the worker processes (``cores`` against ``jobs``: assumes the per-study work scales
    across cores, as it does across processes); ``serial`` does not change with cores; ``cnn`` (the CNN's
    ``folds + 1`` models, trained side by side, one process each) divides by ``min(cores, cnn_models)`` against
    ``min(jobs, cnn_models)``; ``fixed`` stays ``seconds``.
    """
    if scaling == "fixed":
        return seconds
    per_real = seconds * REAL_TRAIN_STUDIES / max(studies, 1)
    if scaling == "parallel":
        return per_real * jobs / cores
    if scaling == "cnn":
        return per_real * min(jobs, cnn_models) / min(cores, cnn_models)
    if scaling == "serial":
        return per_real
    raise ValueError(f"unknown scaling {scaling!r}")


def _config_key(args: argparse.Namespace, data_manifest: dict) -> str:
    return json_hash({"config": Path(args.config).read_text(), "jobs": args.jobs,
                      "feature_studies": args.feature_studies, "data": data_manifest})


def ensure_data(args: argparse.Namespace, rs: list[str]) -> dict[str, Any] | None:
    """Generate the data set when ``--data`` holds none (its figures are kept in ``DATA/bench_synth.json``);
    returns the synth stage's figures, None when the data set was made otherwise."""
    manifest_path = args.data / "truth" / "manifest.json"
    synth_record = args.data / SYNTH_RECORD
    if not manifest_path.is_file():
        figures = run_stage("synth", [*rs, "synth", "--out", str(args.data), "--train-studies",
                                      str(args.train_studies), "--test-studies", str(args.test_studies),
                                      "--small" if args.small else "--no-small", "--seed", str(args.seed),
                                      "--jobs", str(args.jobs), "--config", str(args.config)], args.work / "logs")
        synth_record.write_text(json.dumps(figures, indent=2))
    manifest = json.loads(manifest_path.read_text())
    if manifest["parameters"]["small"] and not args.small:
        raise SystemExit(f"{args.data} holds a --small data set; the benchmark needs real image sizes "
                         f"(point --data at an empty folder)")
    have = manifest["studies"]
    if have["train"] < args.train_studies or have["test"] < args.test_studies:
        raise SystemExit(f"{args.data} holds {have['train']} train and {have['test']} test studies, fewer than "
                         f"--train-studies {args.train_studies} / --test-studies {args.test_studies}")
    return json.loads(synth_record.read_text()) if synth_record.is_file() else None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=REPO / "bench" / "data")
    parser.add_argument("--work", type=Path, default=REPO / "bench" / "work")
    parser.add_argument("--out", type=Path, default=REPO / "reports")
    parser.add_argument("--config", type=Path, default=REPO / "configs" / "default.yaml")
    parser.add_argument("--train-studies", type=int, default=200)
    parser.add_argument("--test-studies", type=int, default=100)
    parser.add_argument("--seed", type=int, default=2026)
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--feature-studies", type=int, default=8,
                        help="training studies in the comparison against the naive loop")
    parser.add_argument("--memory-studies", type=int, nargs="+", default=[200, 1975],
                        help="studies of the memory-scale stage's feature stores")
    parser.add_argument("--fresh", action="store_true", help="delete --work and run every stage again")
    parser.add_argument("--small", action="store_true",
                        help="allow a --small data set (a quick check of the benchmark itself, not comparable figures)")
    args = parser.parse_args(argv)
    if args.fresh and args.work.exists():
        shutil.rmtree(args.work)
    rs = radiospine_command()
    config = ["--config", str(args.config)]
    logs = args.work / "logs"
    synth = ensure_data(args, rs)
    data_manifest = json.loads((args.data / "truth" / "manifest.json").read_text())
    record = StageRecord(args.work / "bench_stages.json", _config_key(args, data_manifest))
    data, work, jobs = str(args.data), str(args.work), ["--jobs", str(args.jobs)]
    submission = str(args.work / "submission.csv")
    truth = args.data / "truth"

    stages: dict[str, dict[str, Any]] = {}
    if synth is not None:
        stages["synth"] = synth
    stages["train-localizer"] = record.run("train-localizer", [*rs, "train-localizer", "--data", data, "--work", work,
                                                               *jobs, *config], logs)
    stages["localize"] = record.run("localize", [*rs, "localize", "--data", data, "--split", "test", "--work", work,
                                                 "--out", str(args.work / "bench_test_coordinates.csv"),
                                                 "--truth", str(truth / "test_label_coordinates.csv"), *config], logs)
    stages["features"] = record.run("features", [*rs, "features", "--data", data, "--split", "train", "--work",
                                                 work, "--no-progress", *jobs, *config], logs)
    stages["train-gbm"] = record.run("train-gbm", [*rs, "train-gbm", "--data", data, "--work", work, "--force",
                                                   "--no-progress", *jobs, *config], logs)
    stages["predict"] = record.run("predict", [*rs, "predict", "--data", data, "--split", "test", "--work", work,
                                               "--out", submission, "--no-progress", *jobs, *config], logs)
    stages["score"] = record.run("score", [*rs, "score", "--labels", str(truth / "test_labels.csv"), "--pred",
                                           submission], logs)
    stages["report"] = record.run("report", [*rs, "report", "--data", data, "--work", work, "--out",
                                             str(args.work / "report"), *config], logs)
    stages["features-vs-naive"] = record.run("features-vs-naive", [
        sys.executable, "-m", "benchmarks.bench_features", "--data", data, "--studies", str(args.feature_studies),
        "--jobs", str(args.jobs), "--out", str(args.work / "bench_features.json")], logs)
    stages["memory-scale"] = record.run("memory-scale", [
        sys.executable, "-m", "benchmarks.memory_scale", "--studies", *map(str, args.memory_studies), "--work",
        str(args.work / "memory"), "--config", str(args.config), "--jobs", str(args.jobs)], logs)

    result = summarise(stages, data_manifest, args)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "bench.json").write_text(json.dumps(result, indent=2) + "\n")
    (args.out / "bench.md").write_text(render_markdown(result))
    print(json.dumps({"bench_json": str(args.out / "bench.json"), "bench_md": str(args.out / "bench.md"),
                      "test_score": result["scores"]["test"]["score"]}))
    return 0


def summarise(stages: dict[str, dict[str, Any]], data_manifest: dict, args: argparse.Namespace) -> dict[str, Any]:
    """bench.json: the figures of every stage, the scores, the localiser's error, the feature throughput and the
    extrapolation (see the README for every field)."""
    from radiospine.config import load_config

    config = load_config(args.config)
    n_train, n_test = data_manifest["studies"]["train"], data_manifest["studies"]["test"]
    features = stages["features"]["output"]
    cnn_fit = float(features.get("fit_seconds", {}).get("cnn", 0.0))
    slices = float(stages["train-localizer"]["output"]["preparation_seconds"])
    predict = stages["predict"]["output"]["seconds"]
    reference = data_manifest["scores_on_test"]
    test_score = stages["score"]["output"]
    oracle = reference["oracle"]["score"]

    # (name in the table, measured seconds, studies it covered, scaling)
    parts = [
        ("train-localizer: slices", slices, n_train, STAGE_SCALING["train-localizer.slices"]),
        ("train-localizer: training", stages["train-localizer"]["seconds"] - slices, n_train,
         STAGE_SCALING["train-localizer.training"]),
        ("features (train): CNN fit", cnn_fit, n_train, STAGE_SCALING["features.cnn_fit"]),
        ("features (train): describe", stages["features"]["seconds"] - cnn_fit, n_train,
         STAGE_SCALING["features.describe"]),
        ("train-gbm", stages["train-gbm"]["seconds"], n_train, STAGE_SCALING["train-gbm"]),
        ("predict: localize", predict["localize"], n_test, STAGE_SCALING["predict.localize"]),
        ("predict: features", predict["features"], n_test, STAGE_SCALING["predict.features"]),
        ("predict: models", predict["predict"] + predict["load"], n_test, STAGE_SCALING["predict.models"]),
        ("report", stages["report"]["seconds"], n_test, STAGE_SCALING["report"]),
    ]
    if "synth" in stages:
        parts.insert(0, ("synth", stages["synth"]["seconds"], n_train + n_test, STAGE_SCALING["synth"]))
    cnn_models = config.features.cnn.folds + 1
    timing = [{"stage": name, "studies": studies, "seconds": round(seconds, 1),
               "seconds_per_study": round(seconds / studies, 3), "scaling": scaling,
               **{f"real_train_{cores}_cores_hours": round(extrapolate(seconds, studies, scaling, cores,
                                                                        jobs=args.jobs, cnn_models=cnn_models)
                                                            / 3600, 2) for cores in EXTRAPOLATION_CORES}}
              for name, seconds, studies, scaling in parts]
    training = [row for row in timing if not row["stage"].startswith(("predict", "report", "synth"))]
    naive = stages["features-vs-naive"]["output"]
    localizer = stages["localize"]["output"]["evaluation"]
    return {
        "created": datetime.datetime.now().isoformat(timespec="seconds"),
        "machine": {"cpus": os.cpu_count(), "load_average_at_end": [round(x, 2) for x in os.getloadavg()],
                    "python": sys.version.split()[0]},
        "data": {"train_studies": n_train, "test_studies": n_test, "seed": data_manifest["seed"],
                 "small": data_manifest["parameters"]["small"], "gigabytes": round(data_manifest["bytes"] / 1e9, 2)},
        "config": str(Path(args.config).resolve().relative_to(REPO) if Path(args.config).resolve().is_relative_to(REPO)
                      else args.config),
        "jobs": args.jobs,
        "scores": {
            "test": test_score,
            "oracle": reference["oracle"]["score"],
            "weighted_prior": reference["weighted_prior_train"]["score"],
            "test_over_oracle": round(test_score["score"] / oracle, 3),
            "out_of_fold": stages["train-gbm"]["output"]["oof"],
        },
        "extractor_ablation": stages["train-gbm"]["output"].get("extractor_ablation"),
        "localizer": {name: localizer[name] for name in ("all", *sorted(k for k in localizer if k != "all"))},
        "features": {
            "studies": naive["studies"], "rois": naive["rois"], "features_per_roi": naive["features_per_roi"],
            "seconds_per_study": naive["radiospine"]["seconds_per_study"],
            "rois_per_second": naive["radiospine"]["rois_per_second"],
            "peak_rss_mb": naive["radiospine"]["peak_rss_mb"],
            "naive_seconds_per_study": naive["naive"]["seconds_per_study"],
            "speed_ratio_vs_naive": naive["speed_ratio"], "cpu_ratio_vs_naive": naive["cpu_ratio"],
            "largest_relative_feature_difference": naive["largest_relative_feature_difference"],
            "train_split_peak_rss_mb": stages["features"]["peak_rss_mb"],
        },
        "stages": {name: {key: value for key, value in figures.items() if key != "output"}
                   for name, figures in stages.items()},
        "memory": memory_table(stages),
        "memory_scale": stages["memory-scale"]["output"],
        "timing": timing,
        "real_train_set_hours": {f"{cores}_cores": round(sum(row[f"real_train_{cores}_cores_hours"]
                                                             for row in training), 2)
                                 for cores in EXTRAPOLATION_CORES},
    }


def memory_table(stages: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per stage: the peak RSS (MB) of the command's main process, of its largest worker process and of the whole
    tree (the sum at one moment), and whether each process stayed under :data:`MEMORY_LIMIT_MB` (None when the
    stage was recorded without per-process figures, or started no worker)."""
    table = {}
    for name, figures in stages.items():
        main, worker = figures.get("main_peak_rss_mb"), figures.get("largest_worker_peak_rss_mb")
        table[name] = {
            "main_peak_rss_mb": main, "largest_worker_peak_rss_mb": worker,
            "worker_processes": figures.get("worker_processes"), "tree_peak_rss_mb": figures["peak_rss_mb"],
            "main_under_limit": None if main is None else main < MEMORY_LIMIT_MB,
            "workers_under_limit": None if worker is None else worker < MEMORY_LIMIT_MB,
        }
    return table


def _mb(value: float | None) -> str:
    return "" if value is None else f"{value:,.0f}"


def _yes_no(value: bool | None) -> str:
    return "" if value is None else ("yes" if value else "**no**")


def _ablation_lines(record: dict[str, Any] | None) -> list[str]:
    """The extractor ablation section of bench.md (none when train-gbm recorded no ablation)."""
    if not record:
        return []
    from radiospine.models.ablation import ablation_markdown

    return ["## Feature extractors, out of fold on the training studies (lower is better)", "",
            "The models trained on each extractor alone and on all of them (same config, folds and seeds).", "",
            ablation_markdown(record)]


def render_markdown(result: dict[str, Any]) -> str:
    """bench.md: the same figures as bench.json, as tables."""
    scores, data, features = result["scores"], result["data"], result["features"]
    parts = [name for name in scores["test"] if name != "score"]
    lines = [
        "# radiospine benchmark", "",
        f"{result['created']}; {result['machine']['cpus']} cores (load average at the end "
        f"{result['machine']['load_average_at_end']}); config `{result['config']}`; {result['jobs']} worker "
        f"processes. Synthetic data{' (--small)' if data['small'] else ' at real image sizes'}: "
        f"{data['train_studies']} train + {data['test_studies']} "
        f"test studies, seed {data['seed']}, {data['gigabytes']} GB.", "",
        "## Scores on the test studies (lower is better)", "",
        "| | score | " + " | ".join(parts) + " |", "|---" * (len(parts) + 2) + "|",
        "| radiospine | " + " | ".join(f"{scores['test'][k]:.4f}" for k in ("score", *parts)) + " |",
        f"| oracle (Bayes floor) | {scores['oracle']:.4f} |" + " |" * len(parts),
        f"| weighted prior | {scores['weighted_prior']:.4f} |" + " |" * len(parts),
        "| radiospine out of fold (train) | " + " | ".join(f"{scores['out_of_fold'][k]:.4f}"
                                                          for k in ("score", *parts)) + " |", "",
        f"Test score / oracle score: {scores['test_over_oracle']:.3f}.", "",
        *_ablation_lines(result.get("extractor_ablation")),
        "## Localiser on the test studies", "",
        "| points | n | found | median error (mm) | p95 error (mm) | right instance | wrong level |",
        "|---|---|---|---|---|---|---|",
    ]
    def share(value: float | None) -> str:
        return "n/a" if value is None else f"{value:.1%}"

    for name, row in result["localizer"].items():
        lines.append(f"| {name} | {row['points']} | {share(row['found_share'])} | {row['error_mm_median']} | "
                     f"{row['error_mm_p95']} | {share(row['same_instance_share'])} | "
                     f"{share(row['wrong_level_share'])} |")
    lines += [
        "", "## Feature stage against a naive loop", "",
        f"{features['studies']} training studies, {features['rois']} ROIs, {features['features_per_roi']} features "
        f"per ROI and view.", "",
        "| | seconds per study | ROIs per second | peak RSS (MB) |", "|---|---|---|---|",
        f"| radiospine | {features['seconds_per_study']} | {features['rois_per_second']} | "
        f"{features['peak_rss_mb']} |",
        f"| naive loop | {features['naive_seconds_per_study']} | | |", "",
        f"Speed ratio (naive wall time / radiospine's): {features['speed_ratio_vs_naive']}; CPU ratio "
        f"{features['cpu_ratio_vs_naive']}; largest relative difference between the two sides' features "
        f"{features['largest_relative_feature_difference']:.2g}. Peak RSS of the whole training-split feature stage: "
        f"{features['train_split_peak_rss_mb']} MB.", "",
        "## Time per stage, and extrapolated to the real training set (1,975 studies)", "",
        "| stage | studies | seconds | seconds per study | scaling | hours on 2 cores | hours on 16 cores |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in result["timing"]:
        lines.append(f"| {row['stage']} | {row['studies']} | {row['seconds']} | {row['seconds_per_study']} | "
                     f"{row['scaling']} | {row['real_train_2_cores_hours']} | {row['real_train_16_cores_hours']} |")
    lines += ["", f"Training on the real set (localiser, features, models): about "
                  f"{result['real_train_set_hours']['2_cores']} hours on 2 cores, "
                  f"{result['real_train_set_hours']['16_cores']} hours on 16 cores.", "",
              "Scaling: `parallel` stages divide among worker processes (one per core); `serial` stages run in one "
              "process with one compute thread; `cnn` trains the CNN's fold models side by side, one process "
              "each. Predict rows are extrapolated as if predicting 1,975 studies.", ""]
    lines += ["## Peak memory per stage and process", "",
              f"Peak RSS in MB (2**20 bytes) of each command's main process, of its largest worker process and of "
              f"the whole process tree at one moment; the limit is {MEMORY_LIMIT_MB:,} MB per process.", "",
              "| stage | main process | largest worker (workers) | tree | main under limit | workers under limit |",
              "|---|---|---|---|---|---|"]
    for name, row in result.get("memory", {}).items():
        workers = "" if row["worker_processes"] is None else f" ({row['worker_processes']})"
        lines.append(f"| {name} | {_mb(row['main_peak_rss_mb'])} | {_mb(row['largest_worker_peak_rss_mb'])}"
                     f"{workers} | {_mb(row['tree_peak_rss_mb'])} | {_yes_no(row['main_under_limit'])} | "
                     f"{_yes_no(row['workers_under_limit'])} |")
    scale = result.get("memory_scale")
    if scale:
        lines += ["", "## Memory of the model stages at real data sizes", "",
                  f"Feature stores of random values with the real table's {scale['columns']:,} columns (no images; "
                  f"`benchmarks/memory_scale.py`, {scale['estimators']} boosting rounds at most); peak RSS in MB of "
                  f"the process, against {scale['limit_mb']:,} MB.", "",
                  "| studies | train-gbm: seconds | train-gbm: peak RSS | under limit | predict (models): seconds | "
                  "predict (models): peak RSS | under limit |", "|---|---|---|---|---|---|---|"]
        for studies, size in scale["sizes"].items():
            train, predict = size["train"], size["predict"]
            lines.append(f"| {int(studies):,} | {train['seconds']} | {_mb(train['peak_rss_mb'])} | "
                         f"{_yes_no(train['under_limit'])} | {predict['seconds']} | {_mb(predict['peak_rss_mb'])} | "
                         f"{_yes_no(predict['under_limit'])} |")
    lines.append("")
    for name, figures in result["stages"].items():
        lines.append(f"- `{name}`: {figures['seconds']} s wall, {figures['cpu_seconds']} s CPU, peak RSS "
                     f"{figures['peak_rss_mb']} MB (finished {figures['finished']}, load average then "
                     f"{figures['load_average_at_end']})")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
