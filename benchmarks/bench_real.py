"""`make bench-real`: the level localiser on real MRI (SPIDER), trained on SPIDER folds and on synthetic studies.

    python -m benchmarks.bench_real --real SPIDER_DIR [--work bench_real] [--out reports]
                                    [--folds 5] [--synth-studies 16] [--jobs 1] [--config FILE] [--set key=value ...]

Steps, each timed (wall seconds, ``times`` in the JSON; each training task's own seconds in ``task_timings``).
The K fold localisers and the synthetic one are independent tasks, run in ``--jobs`` processes:

=================  ==============================================================================================
import             ``REAL/volumes`` (+ ``REAL/radiological_gradings.csv``) -> ``WORK/data`` with
                   :func:`radiospine.volume_import.import_volumes`: one Sagittal T2 series per patient and the canal
                   point of each RSNA level derived from the masks (the truth of every table)
prepare            the localiser's sagittal training stacks of every patient (decoded once by ``--jobs`` processes
                   into the slice cache ``WORK/cache/localizer_slices``, shared by the folds), and of the
                   synthetic studies
spider folds       patient-grouped K-fold cross-validation (one study per patient, ``KFold`` shuffled with
                   ``localizer.seed``): per fold the localiser is trained on K-1 folds and localises the held-out
                   patients; their canal points are compared with the mask-derived ones
synth              ``radiospine synth`` (``--synth-studies`` training studies, ``synth`` section of the config)
                   into ``WORK/synth`` when it holds no data set yet (else reused and not timed)
synthetic          the localiser trained on the synthetic studies only, applied to every SPIDER patient
picture            ``OUT/bench_real_points.png``: derived and predicted points on one patient's slice
=================  ==============================================================================================

Both localisers are trained on sagittal stacks only (SPIDER has no Axial T2 series; the axial network is not
trained, :func:`radiospine.roi.localizer.training.fit_localizer`). The figures (per table): the canal points
evaluated (:func:`radiospine.roi.localizer.evaluation.evaluate_points`), the share found, the 3D error in mm
(median, 95th percentile) and the share of found points closer to another level's derived point than to their
own (wrong level). Results go to ``OUT/bench_real.json`` and ``OUT/bench_real.md``, with the aims of issue 16.
The benchmark's grading table (the spider task out of fold) is :mod:`benchmarks.real_grading`, which
``make bench-real`` runs after this module.
"""

from __future__ import annotations

import argparse
import datetime
import json
import logging
import multiprocessing
import time
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import pandas as pd
from sklearn.model_selection import KFold

from radiospine import vocab
from radiospine.artifacts import atomic_write_text
from radiospine.catalog import Catalog, scan
from radiospine.config import RadiospineConfig, add_config_arguments, config_from_arguments, config_hash
from radiospine.labels import load_label_coordinates
from radiospine.roi.localizer.data import TrainingStack, prepare_training
from radiospine.roi.localizer.evaluation import evaluate_points, summarise_evaluation
from radiospine.roi.localizer.inference import coordinates_from_provenance, predict_studies
from radiospine.roi.localizer.training import fit_localizer
from radiospine.synth.generate import generate_dataset
from radiospine.threads import thread_budget
from radiospine.volume_import import import_volumes
from radiospine.workspace import Workspace

log = logging.getLogger("benchmarks.bench_real")

REPO = Path(__file__).resolve().parents[1]
#: The aims of issue 16 for the localiser tables: (figure, largest allowed value).
AIMS = {
    "spider_folds": {"error_mm_median": 2.0, "error_mm_p95": 6.0, "wrong_level_share": 0.02},
    "synthetic": {"error_mm_median": 5.0, "wrong_level_share": 0.10},
}
#: The table figures, from :func:`radiospine.roi.localizer.evaluation.summarise_evaluation` of the canal points.
FIGURES = ("points", "found_share", "error_mm_median", "error_mm_p95", "in_plane_error_mm_median",
           "wrong_level_share")
#: The picture of derived and predicted points.
PICTURE = "bench_real_points.png"

def patient_folds(study_ids: Sequence[int], folds: int, seed: int) -> list[list[int]]:
    """The held-out study ids of each fold: ``KFold`` over the patients (one study each), shuffled by ``seed``."""
    ids = sorted(int(s) for s in study_ids)
    splitter = KFold(n_splits=min(folds, len(ids)), shuffle=True, random_state=seed)
    return [[ids[i] for i in held_out] for _, held_out in splitter.split(ids)]


def sagittal_training_stacks(catalog: Catalog, coords: pd.DataFrame, config: RadiospineConfig, cache: Path,
                             jobs: int) -> dict[int, list[TrainingStack]]:
    """Study id -> its sagittal training stacks (axial slabs dropped: SPIDER has no axial series, and the
    synthetic localiser is measured on the canal points only), their slices decoded by ``jobs`` processes into
    the slice cache folder ``cache`` (:func:`radiospine.roi.localizer.data.prepare_training`)."""
    ids = sorted(set(catalog.study_ids) & set(coords["study_id"].tolist()))
    prepared = prepare_training(catalog, ids, coords, config.localizer, cache, jobs=jobs)
    return {sid: [s for s in stacks if s.kind == "sagittal"] for sid, stacks in prepared.by_study.items()}


def table(catalog: Catalog, provenance: pd.DataFrame, truth: pd.DataFrame) -> tuple[dict[str, Any], pd.DataFrame]:
    """The canal points of ``provenance`` against ``truth``: the table's figures and the per-point evaluation."""
    evaluation = evaluate_points(catalog, coordinates_from_provenance(provenance), truth)
    summary = summarise_evaluation(evaluation)[vocab.SPINAL]
    return {name: summary[name] for name in FIGURES}, evaluation


def per_patient(evaluation: pd.DataFrame) -> dict[int, float]:
    """Study id -> median error in mm of its found canal points (studies without any left out)."""
    medians = evaluation.groupby("study_id")["error_mm"].median().dropna()
    return {int(study): round(float(value), 2) for study, value in medians.items()}


def aims_met(figures: dict[str, Any], aims: dict[str, float]) -> dict[str, bool | None]:
    """Per aim: whether the figure is at most its limit (None when the figure is undefined)."""
    return {name: None if figures[name] is None else bool(figures[name] <= limit) for name, limit in aims.items()}


def fit_and_localise(training: list[TrainingStack], data_dir: Path, study_ids: list[int], config: RadiospineConfig,
                     threads: int) -> tuple[pd.DataFrame, dict[str, Any]]:
    """Train a localiser on ``training`` and localise ``study_ids`` of ``data_dir``'s training split: the
    provenance table and the seconds of each part (one task: a fold, or the synthetic localiser)."""
    catalog = scan(data_dir, "train")
    started = time.perf_counter()
    with thread_budget(threads):
        localizer, _ = fit_localizer(training, config.localizer)
        trained = time.perf_counter()
        provenance = predict_studies(localizer, catalog, study_ids, config.roi)
    return provenance, {"train_seconds": round(trained - started, 1),
                        "localize_seconds": round(time.perf_counter() - trained, 1), "studies": len(study_ids)}


def run_tasks(tasks: dict[str, tuple], jobs: int) -> dict[str, tuple[pd.DataFrame, dict[str, Any]]]:
    """:func:`fit_and_localise` of each task's arguments, in ``jobs`` processes (one process: in this one).

    Every task seeds its own generators from the config, so the results do not depend on ``jobs``."""
    if jobs <= 1:
        return {name: fit_and_localise(*arguments) for name, arguments in tasks.items()}
    with ProcessPoolExecutor(max_workers=jobs, mp_context=multiprocessing.get_context("fork")) as pool:
        futures = {name: pool.submit(fit_and_localise, *arguments) for name, arguments in tasks.items()}
        return {name: future.result() for name, future in futures.items()}


def ensure_synthetic(folder: Path, studies: int, config: RadiospineConfig, jobs: int) -> float | None:
    """Generate the synthetic training set into ``folder`` unless it already holds one; the seconds it took."""
    if (folder / "truth" / "manifest.json").is_file():
        log.info("synthetic studies in %s reused", folder)
        return None
    started = time.perf_counter()
    synth = config.synth.model_validate({**config.synth.model_dump(), "train_studies": studies, "test_studies": 0})
    generate_dataset(folder, synth, jobs=jobs, overwrite=True)
    return round(time.perf_counter() - started, 1)


def draw_points(data_dir: Path, study_id: int, truth: pd.DataFrame, predictions: dict[str, pd.DataFrame],
                path: Path) -> Path:
    """The slice of ``study_id`` through its derived canal points, with those (green) and each prediction's
    canal points (one colour each, labelled with their level), written as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from radiospine.io.decode import read_volume

    spinal = truth[(truth["study_id"] == study_id) & (truth["condition"] == vocab.SPINAL)]
    series_id = int(spinal["series_id"].iloc[0])
    volume = read_volume(data_dir / "train_images" / str(study_id) / str(series_id))
    instance = int(spinal["instance_number"].median())
    image = volume.voxels[list(volume.instance_numbers).index(instance)]
    figure, axes = plt.subplots(figsize=(6, 6 * image.shape[0] / image.shape[1]), dpi=120)
    axes.imshow(image, cmap="gray")
    styles = [("derived from the mask", spinal, "lime", "o")] + [
        (name, frame[(frame["study_id"] == study_id) & (frame["condition"] == vocab.SPINAL)], colour, marker)
        for (name, frame), colour, marker in zip(predictions.items(), ("red", "deepskyblue"), ("x", "+"))]
    for name, points, colour, marker in styles:
        axes.scatter(points["x"], points["y"], s=60, c=colour, marker=marker, label=name, linewidths=1.5)
    for row in spinal.itertuples():
        axes.annotate(row.level, (row.x, row.y), xytext=(12, 0), textcoords="offset points", color="lime", fontsize=8)
    axes.set_title(f"SPIDER patient {study_id}, instance {instance}: canal points", fontsize=9)
    axes.legend(loc="lower left", fontsize=7)
    axes.set_axis_off()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, bbox_inches="tight")
    plt.close(figure)
    return path


def _cell(value: Any) -> str:
    return "n/a" if value is None else f"{value:g}" if isinstance(value, float) else str(value)


def render_markdown(result: dict[str, Any]) -> str:
    """The results as Markdown: the two localiser tables with their aims, and the times."""
    lines = [f"# Real MRI benchmark (SPIDER, {result['patients']} patients)", "",
             f"Run {result['finished_at']}; {result['folds']}-fold patient-grouped cross-validation; localiser "
             f"config hash `{result['localizer_config_hash']}`.", "",
             "| localiser trained on | points | found | median mm | p95 mm | in-plane median mm | wrong level |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    names = {"spider_folds": "SPIDER folds (held-out patients)",
             "synthetic": f"synthetic studies only ({result['synthetic_studies']}), all patients"}
    for key, name in names.items():
        figures = result["tables"][key]
        lines.append(f"| {name} | " + " | ".join(_cell(figures[f]) for f in FIGURES) + " |")
    lines += ["", "| aim (issue 16) | limit | measured | met |", "| --- | --- | --- | --- |"]
    for key, aims in AIMS.items():
        for figure, limit in aims.items():
            lines.append(f"| {names[key].split(' (')[0].split(',')[0]}: {figure} | {limit:g} | "
                         f"{_cell(result['tables'][key][figure])} | {_cell(result['aims'][key][figure])} |")
    lines += ["", "| step | seconds |", "| --- | --- |"]
    lines += [f"| {step} | {_cell(seconds)} |" for step, seconds in result["times"].items()]
    lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--real", type=Path, required=True,
                        help="SPIDER folder: volumes/ and radiological_gradings.csv (SPIDER, Zenodo record 10159290)")
    parser.add_argument("--work", type=Path, default=REPO / "bench_real")
    parser.add_argument("--out", type=Path, default=REPO / "reports")
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--synth-studies", type=int, default=16)
    parser.add_argument("--jobs", type=int, default=1, help="processes: the folds and the synthetic localiser are "
                                                            "trained in parallel; the generator's processes")
    parser.add_argument("--threads", type=int, default=1, help="torch compute threads of the localiser")
    add_config_arguments(parser)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    config = config_from_arguments(args)
    result = run(args.real, args.work, args.out, config, folds=args.folds, synth_studies=args.synth_studies,
                 jobs=args.jobs, threads=args.threads)
    print(json.dumps({"tables": result["tables"], "aims": result["aims"], "times": result["times"]}))
    return 0


def run(real: Path, work: Path, out: Path, config: RadiospineConfig, *, folds: int, synth_studies: int,
        jobs: int = 1, threads: int = 1) -> dict[str, Any]:
    """Every step of the module docstring; writes ``out/bench_real.json``, ``.md`` and the picture."""
    times: dict[str, float | None] = {}
    started = time.perf_counter()
    data_dir = work / "data"
    import_volumes(real / "volumes", data_dir, gradings=real / "radiological_gradings.csv", overwrite=True)
    times["import"] = round(time.perf_counter() - started, 1)
    catalog = scan(data_dir, "train")
    truth = load_label_coordinates(data_dir / "train_label_coordinates.csv")

    started = time.perf_counter()
    cache = Workspace(work).localizer_slice_cache
    stacks = sagittal_training_stacks(catalog, truth, config, cache, jobs)
    times["prepare (SPIDER training stacks)"] = round(time.perf_counter() - started, 1)
    held_out = patient_folds(list(stacks), folds, config.localizer.seed)

    times["synth"] = ensure_synthetic(work / "synth", synth_studies, config, jobs)
    started = time.perf_counter()
    synthetic_stacks = sagittal_training_stacks(scan(work / "synth", "train"),
                                                load_label_coordinates(work / "synth" / "train_label_coordinates.csv"),
                                                config, cache, jobs)
    times["prepare (synthetic training stacks)"] = round(time.perf_counter() - started, 1)

    tasks = {f"fold {number}": ([s for sid, study_stacks in stacks.items() if sid not in fold for s in study_stacks],
                                data_dir, fold, config, threads) for number, fold in enumerate(held_out, 1)}
    tasks["synthetic"] = ([s for study_stacks in synthetic_stacks.values() for s in study_stacks], data_dir,
                          sorted(stacks), config, threads)
    started = time.perf_counter()
    results = run_tasks(tasks, jobs)
    times[f"train + localise ({len(held_out)} folds and the synthetic localiser, {jobs} processes)"] = round(
        time.perf_counter() - started, 1)
    fold_provenance = pd.concat([results[f"fold {n}"][0] for n in range(1, len(held_out) + 1)], ignore_index=True)
    synthetic_provenance = results["synthetic"][0]
    fold_table, fold_evaluation = table(catalog, fold_provenance, truth)
    synthetic_table, synthetic_evaluation = table(catalog, synthetic_provenance, truth)

    errors = pd.Series(per_patient(fold_evaluation)).sort_values()
    picture_study = int(errors.index[len(errors) // 2])
    started = time.perf_counter()
    draw_points(data_dir, picture_study, truth,
                {"SPIDER folds": coordinates_from_provenance(fold_provenance),
                 "synthetic only": coordinates_from_provenance(synthetic_provenance)}, out / PICTURE)
    times["picture"] = round(time.perf_counter() - started, 1)

    tables = {"spider_folds": fold_table, "synthetic": synthetic_table}
    result = {
        "finished_at": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "patients": len(stacks), "folds": len(held_out), "synthetic_studies": len(synthetic_stacks),
        "localizer_config_hash": config_hash(config.localizer), "localizer_config": config.localizer.model_dump(),
        "tables": tables, "aims": {key: aims_met(tables[key], AIMS[key]) for key in AIMS},
        "times": times, "task_timings": {name: timing for name, (_, timing) in results.items()},
        "held_out": held_out, "picture": {"file": PICTURE, "study_id": picture_study},
        "per_patient_median_error_mm": {"spider_folds": per_patient(fold_evaluation),
                                        "synthetic": per_patient(synthetic_evaluation)},
    }
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "bench_real.json", json.dumps(result, indent=2, default=str, allow_nan=False))
    atomic_write_text(out / "bench_real.md", render_markdown(result))
    return result


if __name__ == "__main__":
    raise SystemExit(main())
