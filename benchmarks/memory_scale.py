"""`make bench` stage `memory-scale`: peak memory of train-gbm and of predict's model part at real data sizes.

    python -m benchmarks.memory_scale [--studies 200 1975] [--work bench/memory] [--config configs/default.yaml]
                                      [--estimators 20] [--jobs 2] [--out FILE.json]

No images are needed. For each number of studies N, a feature store of N studies with the real table's columns
(the ``--config``'s extractors and views: 4,487 columns with ``configs/default.yaml``) is written through the
store's own writer (:class:`radiospine.features.store.FeatureStore`) and compacted, as the feature stage leaves
it (about 0.6 s of CPU per study to write and compact; 1.8 GB of compacted file and as much of shards at 1,975
studies); values are random normal (2% NaN), labels random with about the real set's class shares. Then two child
processes run, each monitored (:class:`benchmarks.monitor.TreeMonitor`):

``train``    what ``radiospine train-gbm`` does after its feature step: the table prepared from the store
             (:func:`~radiospine.models.condition_models.prepare_stored_features`), the models trained, cross-validated,
             calibrated and saved; ``--estimators`` boosting rounds at most (memory is the data's, not the trees').
``predict``  ``predict``'s model part: the models loaded, the N studies' table read and predicted a chunk at a time
             (:meth:`~radiospine.models.condition_models.TrainedModels.predict_stored_studies`).

The stores are kept in ``--work`` (``n<N>/features/train``, written once per N, column set and seed) and reused.
The last stdout line is JSON: per N and step, seconds, CPU seconds and the peak RSS (MB, 2**20 bytes) of the step's
process, against the limit of 2 GB per process.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

from benchmarks.monitor import TreeMonitor
from radiospine import vocab
from radiospine.config import load_config
from radiospine.features.base import STATUS_OK
from radiospine.features.columns import CNN_PROBABILITY_FEATURES
from radiospine.features.driver import table_columns
from radiospine.features.radiomics import RadiomicsExtractor
from radiospine.features.store import FeatureStore, table_schema
from radiospine.hashing import json_hash

REPO = Path(__file__).resolve().parents[1]
#: The memory limit of one process (issue 18), in MB (2**20 bytes).
MEMORY_LIMIT_MB = 2000
#: Share of NaN values (failed or empty crops) in the synthetic table.
NAN_SHARE = 0.02
#: Class shares of the synthetic labels (normal/mild, moderate, severe), about the real training set's.
SEVERITY_SHARES = (0.75, 0.17, 0.08)
SEED = 2026


class _CnnColumns:
    """The CNN extractor's name and feature names (its probability of each severity), without a network."""

    name = "cnn"

    @staticmethod
    def feature_names() -> list[str]:
        return list(CNN_PROBABILITY_FEATURES)


def real_columns(config_path: Path) -> tuple[list[str], set[str]]:
    """The feature table's columns (and its string columns) for ``config_path``'s extractors and views."""
    config = load_config(config_path)
    extractors = []
    if config.features.radiomics.enabled:
        extractors.append(RadiomicsExtractor(config.features.radiomics.params_path(),
                                             slice_mean=config.features.radiomics.slice_mean))
    if config.features.cnn.enabled:
        extractors.append(_CnnColumns())
    return table_columns(extractors, config.features.views)


def synthetic_labels(study_ids: list[int]) -> pd.DataFrame:
    """Long labels (study_id, condition, level, severity) of ``study_ids``, drawn with :data:`SEVERITY_SHARES`."""
    rng = np.random.default_rng(SEED)
    keys = [(study_id, condition, level) for study_id in study_ids for condition in vocab.CONDITIONS
            for level in vocab.LEVELS]
    labels = pd.DataFrame(keys, columns=list(vocab.KEY_COLUMNS))
    labels["severity"] = pd.array(rng.choice(3, size=len(labels), p=SEVERITY_SHARES), dtype="Int64")
    return labels


def _write_studies(root: Path, study_ids: range, columns: list[str], strings: set[str]) -> None:
    """Write the shards of ``study_ids`` (those not there yet) into the opened store at ``root``; each study's
    values come from its own seeded generator, so the table does not depend on which process wrote what."""
    store = FeatureStore(root)
    store.schema = table_schema(columns, strings)  # the folder is open: FeatureStore.open ran in the parent
    float_columns = [c for c in columns if c not in strings and c != "study_id"]
    status_columns = [c for c in strings if c not in vocab.KEY_COLUMNS]
    keys = pd.DataFrame([(condition, level) for condition in vocab.CONDITIONS for level in vocab.LEVELS],
                        columns=["condition", "level"])
    for study_id in study_ids:
        if store.shard_path(study_id).is_file():
            continue
        rng = np.random.default_rng([SEED, study_id])
        values = rng.standard_normal((len(keys), len(float_columns)))
        values[rng.random(values.shape) < NAN_SHARE] = np.nan
        frame = pd.concat([keys.assign(study_id=study_id, **dict.fromkeys(status_columns, STATUS_OK)),
                           pd.DataFrame(values, columns=float_columns)], axis=1)
        store.write_study(study_id, frame)


def write_store(root: Path, n_studies: int, columns: list[str], strings: set[str], jobs: int) -> float:
    """A feature store of ``n_studies`` random studies with ``columns`` at ``root`` (shards written by ``jobs``
    processes), compacted; reused when one with the same parameters is there. Returns the seconds spent writing
    (0 when reused). A stopped run resumes: the shards written are kept."""
    from joblib import Parallel, delayed

    key = json_hash({"studies": n_studies, "columns": columns, "seed": SEED, "nan": NAN_SHARE})
    store = FeatureStore(root)
    marker = root / "_memory_scale.json"
    if marker.is_file() and json.loads(marker.read_text()).get("key") == key and store.compact_path.is_file():
        return 0.0
    started = time.perf_counter()
    with store.lock():
        store.open(config=load_config(None).models, inputs={"memory_scale": key},
                   schema=table_schema(columns, strings))
        Parallel(n_jobs=jobs)(delayed(_write_studies)(root, range(1 + k, n_studies + 1, jobs), columns, strings)
                              for k in range(jobs))
        store.compact()
    marker.write_text(json.dumps({"key": key}))
    return time.perf_counter() - started


def run_step(step: str, features: Path, models: Path, config: Path, estimators: int) -> None:
    """One measured step, in this (child) process: ``train`` or ``predict`` (see the module docstring)."""
    from radiospine.metrics import weighted_prior
    from radiospine.models.condition_models import TrainedModels, prepare_stored_features, train_condition_models

    settings = load_config(config).models
    settings = settings.model_copy(update={"gbm": settings.gbm.model_copy(update={"n_estimators": estimators})})
    study_ids = sorted(FeatureStore(features).done_studies())
    labels = synthetic_labels(study_ids)
    if step == "train":
        trained = train_condition_models(prepare_stored_features(features, settings.extractors), labels, settings)
        trained.save(models)
        print(json.dumps({"oof": trained.report["cv_scores"]["final"]["all"]["score"]}))
    else:
        loaded = TrainedModels.load(models)
        predictions, _ = loaded.predict_stored_studies(features, study_ids, weighted_prior(labels, pseudo_count=1.0))
        print(json.dumps({"rows": len(predictions)}))


def measure(step: str, features: Path, models: Path, config: Path, estimators: int) -> dict:
    """Run :func:`run_step` in a child process, monitored: seconds, CPU seconds, peak RSS of the child (MB)."""
    command = [sys.executable, "-m", "benchmarks.memory_scale", "--step", step, "--features", str(features),
               "--models", str(models), "--config", str(config), "--estimators", str(estimators)]
    with TreeMonitor(interval=0.1) as monitor:
        started = time.perf_counter()
        process = subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, text=True)
        out, _ = process.communicate()
        seconds = time.perf_counter() - started
    if process.returncode != 0:
        raise SystemExit(f"memory-scale step {step} failed (exit {process.returncode}): {' '.join(command)}")
    peak = monitor.peak_rss_by_pid.get(process.pid, 0) / 2**20
    return {"seconds": round(seconds, 1), "cpu_seconds": round(monitor.cpu_seconds, 1),
            "peak_rss_mb": round(peak, 1), "under_limit": peak < MEMORY_LIMIT_MB,
            "output": json.loads(out.strip().splitlines()[-1])}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--studies", type=int, nargs="+", default=[200, 1975])
    parser.add_argument("--work", type=Path, default=REPO / "bench" / "memory")
    parser.add_argument("--config", type=Path, default=REPO / "configs" / "default.yaml")
    parser.add_argument("--estimators", type=int, default=20, help="boosting rounds per booster at most")
    parser.add_argument("--jobs", type=int, default=2, help="processes writing the stores' shards")
    parser.add_argument("--out", type=Path, default=None, help="also write the result to this JSON file")
    parser.add_argument("--step", choices=["train", "predict"], help=argparse.SUPPRESS)
    parser.add_argument("--features", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--models", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.step is not None:
        run_step(args.step, args.features, args.models, args.config, args.estimators)
        return 0
    columns, strings = real_columns(args.config)
    result = {"columns": len(columns), "estimators": args.estimators, "limit_mb": MEMORY_LIMIT_MB, "sizes": {}}
    for n_studies in args.studies:
        root = args.work / f"n{n_studies}"
        features, models = root / "features" / "train", root / "models"
        write_seconds = write_store(features, n_studies, columns, strings, args.jobs)
        print(f"[memory-scale] {n_studies} studies: store ready ({write_seconds:.0f} s)", file=sys.stderr, flush=True)
        size = {"write_seconds": round(write_seconds, 1)}
        for step in ("train", "predict"):
            size[step] = measure(step, features, models, args.config, args.estimators)
            print(f"[memory-scale] {n_studies} studies, {step}: {size[step]['seconds']} s, peak RSS "
                  f"{size[step]['peak_rss_mb']} MB", file=sys.stderr, flush=True)
        result["sizes"][str(n_studies)] = size
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
