"""The synthetic data set driver: writes a folder in the Kaggle layout, plus the truth no pipeline stage reads.

Layout written (docs/design.md section 1)::

    DIR/train.csv, train_label_coordinates.csv, train_series_descriptions.csv
    DIR/test_series_descriptions.csv, sample_submission.csv (25 rows per test study, 1/3 each)
    DIR/{train,test}_images/<study_id>/<series_id>/<instance_number>.dcm
    DIR/truth/test_labels.csv              the train.csv format, for the test studies
    DIR/truth/test_label_coordinates.csv   the coordinates format, for the test studies
    DIR/truth/oracle_{train,test}.csv      row_id,normal_mild,moderate,severe: P(label | latent), exactly
    DIR/truth/latent_{train,test}.csv      row_id, the latent grade, narrowing index and what it did (mm)
    DIR/truth/manifest.json                seed, generator version, parameters, scores

Determinism: study ``i`` of a split draws everything from generators seeded by ``(seed, split, i)``
(:func:`study_generators`), one stream per purpose (labels, anatomy, series, pixels, annotation), so a study
does not depend on the other studies, on how many there are, or on ``jobs``; and nothing written depends on
the clock. The same seed and parameters give the same bytes.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from joblib import Parallel, delayed

from radiospine import vocab
from radiospine.artifacts import atomic_path, atomic_write_text, prepare_output_folder
from radiospine.config import SynthConfig
from radiospine.io.write import MrImageHeader, derived_uid, write_mr_image
from radiospine.labels import write_label_coordinates
from radiospine.synth.anatomy import Anatomy, draw_anatomy
from radiospine.synth.annotate import COORDINATE_FIELDS, annotate_study
from radiospine.synth.labels import (
    StudyLabels,
    build_label_model,
    draw_labels,
    draw_study_labels,
    labels_frame,
    oracle_frame,
)
from radiospine.synth.render import MAX_STORED, draw_appearance, render_slice
from radiospine.synth.series import SeriesPlan, draw_id, plan_study_series

log = logging.getLogger(__name__)

#: Bumped whenever the same seed would give different data.
GENERATOR_VERSION = "1.0"
SPLIT_KEYS: dict[str, int] = {"train": 0, "test": 1, "population": 2}
_ID_STREAM = 7
_STREAMS = ("labels", "anatomy", "series", "pixels", "annotation")
#: Studies in the label-only sample behind the population prior of the manifest.
POPULATION_STUDIES = 20_000
#: Pseudo-count of the weighted prior fitted on the (often small) train split, so unseen classes stay finite.
TRAIN_PRIOR_PSEUDO_COUNT = 1.0
#: What the generator writes into DIR (``--overwrite`` removes only these).
OUTPUT_ENTRIES = ("train.csv", "train_label_coordinates.csv", "train_series_descriptions.csv",
                  "test_series_descriptions.csv", "sample_submission.csv", "train_images", "test_images", "truth")


def study_generators(seed: int, split: str, index: int) -> dict[str, np.random.Generator]:
    """One generator per purpose for study ``index`` of ``split`` (independent of every other study)."""
    children = np.random.SeedSequence(int(seed), spawn_key=(SPLIT_KEYS[split], int(index))).spawn(len(_STREAMS))
    return {name: np.random.default_rng(child) for name, child in zip(_STREAMS, children)}


def draw_study_ids(seed: int, counts: dict[str, int]) -> dict[str, list[int]]:
    """Kaggle-like study ids per split, unique over the whole run; study ``i``'s id depends only on
    ``(seed, split, i)`` unless it collides with an earlier one (then it is drawn again)."""
    used: set[int] = set()
    ids: dict[str, list[int]] = {}
    for split, count in counts.items():
        ids[split] = []
        for index in range(count):
            attempt = 0
            while True:
                sequence = np.random.SeedSequence(int(seed), spawn_key=(SPLIT_KEYS[split], index, _ID_STREAM, attempt))
                candidate = draw_id(np.random.default_rng(sequence))
                if candidate not in used:
                    break
                attempt += 1
            used.add(candidate)
            ids[split].append(candidate)
    return ids


def draw_label_sample(n_studies: int, seed: int, reader_noise_sd: float) -> StudyLabels:
    """Labels of ``n_studies`` studies without anything else (no images), drawn at once from the label model
    with a generator of its own (arrays with a leading study axis, see :func:`~radiospine.synth.labels.
    draw_labels`)."""
    sequence = np.random.SeedSequence(int(seed), spawn_key=(SPLIT_KEYS["population"],))
    return draw_labels(build_label_model(reader_noise_sd), np.random.default_rng(sequence), n_studies)


def _grade_by_target(labels: StudyLabels) -> dict[tuple[str, str], float]:
    return {vocab.split_target_column(column): float(labels.grade[i]) for i, column in enumerate(vocab.TARGET_COLUMNS)}


@dataclass(frozen=True)
class StudyResult:
    """What one generated study contributes to the CSV files."""

    split: str
    study_id: int
    labels: StudyLabels
    series: tuple[tuple[int, str], ...]
    coordinates: tuple[tuple, ...]
    latent: tuple[tuple, ...]
    n_files: int
    n_bytes: int


def _latent_rows(study_id: int, labels: StudyLabels, anatomy: Anatomy) -> tuple[tuple, ...]:
    """``row_id, grade, narrowing_index, measure, measure_mm`` per target: what the latent did to the anatomy."""
    by_level = {level.level: level for level in anatomy.levels}
    rows = []
    for i, column in enumerate(vocab.TARGET_COLUMNS):
        condition, level = vocab.split_target_column(column)
        parts = vocab.split_condition(condition)
        found = by_level[level]
        if parts.base == vocab.SPINAL:
            index, measure, value = found.canal_index, "sac_ap_mm", found.sac_ap_mm
        elif parts.base == vocab.FORAMINAL:
            index, measure, value = (found.foramen_index[parts.side], "foramen_fat_ap_mm",
                                     found.foramen_fat_ap_mm[parts.side])
        else:
            index, measure, value = (found.recess_index[parts.side], "recess_height_mm",
                                     found.recess_height_mm[parts.side])
        rows.append((vocab.make_row_id(study_id, condition, level), float(labels.grade[i]), float(index), measure,
                     float(value)))
    return tuple(rows)


def _write_series(folder: Path, study_id: int, plan: SeriesPlan, anatomy: Anatomy, config: SynthConfig,
                  rng: np.random.Generator, study_uid: str, frame_uid: str, study_date: str) -> tuple[int, int]:
    """Render and write every slice of a series; ``(files, bytes)``."""
    folder.mkdir(parents=True, exist_ok=True)
    appearance = draw_appearance(rng, plan.sequence, config.noise_sd)
    repetition, echo, inversion = plan.timing
    series_uid = derived_uid(study_uid, plan.series_id)
    n_files = n_bytes = 0
    for stack in plan.stacks:
        for index in range(stack.n_slices):
            pixels = render_slice(anatomy, stack, index, appearance, rng,
                                  partial_volume_samples=config.partial_volume_samples,
                                  render_spacing_mm=config.render_spacing_mm)
            instance = int(stack.instance_numbers[index])
            header = MrImageHeader(
                patient_id=str(study_id), study_id=str(study_id), study_instance_uid=study_uid,
                series_instance_uid=series_uid, sop_instance_uid=derived_uid(series_uid, instance),
                frame_of_reference_uid=frame_uid, study_date=study_date, series_number=plan.series_number,
                series_description=plan.description, instance_number=instance,
                image_position=stack.positions[index].tolist(), image_orientation=stack.orientation.tolist(),
                pixel_spacing=stack.pixel_spacing, slice_thickness=stack.slice_thickness,
                spacing_between_slices=stack.spacing_between_slices, repetition_time=repetition, echo_time=echo,
                inversion_time=inversion, bits_stored=int(MAX_STORED).bit_length())
            path = write_mr_image(folder / f"{instance}.dcm", pixels, header)
            n_files += 1
            n_bytes += path.stat().st_size
    return n_files, n_bytes


def generate_study(out_dir: str | Path | None, split: str, index: int, study_id: int, config: SynthConfig
                   ) -> StudyResult:
    """Draw study ``index`` of ``split`` and, unless ``out_dir`` is None, render and write its DICOM files
    to ``out_dir/{split}_images/<study_id>/``."""
    rngs = study_generators(config.seed, split, index)
    labels = draw_study_labels(build_label_model(config.reader_noise_sd), rngs["labels"])
    anatomy = draw_anatomy(_grade_by_target(labels), rngs["anatomy"])
    plans = plan_study_series(anatomy, labels.axial_levels, rngs["series"], config, config.small)
    coordinates = annotate_study(study_id, anatomy, plans, labels, rngs["annotation"], config)
    n_files = n_bytes = 0
    if out_dir is not None:
        study_uid = derived_uid("radiospine-synth", GENERATOR_VERSION, config.seed, split, study_id)
        frame_uid = derived_uid(study_uid, "frame-of-reference")
        day = int(rngs["pixels"].integers(0, 3650))
        study_date = (np.datetime64("2012-01-01") + np.timedelta64(day, "D")).astype(str).replace("-", "")
        for plan in plans:
            folder = Path(out_dir) / f"{split}_images" / str(study_id) / str(plan.series_id)
            files, size = _write_series(folder, study_id, plan, anatomy, config, rngs["pixels"], study_uid,
                                        frame_uid, study_date)
            n_files += files
            n_bytes += size
    return StudyResult(split=split, study_id=study_id, labels=labels,
                       series=tuple((p.series_id, p.description) for p in plans), coordinates=tuple(coordinates),
                       latent=_latent_rows(study_id, labels, anatomy), n_files=n_files, n_bytes=n_bytes)


def _write_csv(frame: pd.DataFrame, path: Path) -> None:
    """Write a CSV atomically, ``\\n`` line ends, no index."""
    with atomic_path(path) as temporary:
        frame.to_csv(temporary, index=False, lineterminator="\n")


def _stacked(results: list[StudyResult], field: str) -> np.ndarray:
    """``(n, 25, ...)`` one StudyLabels field of the studies."""
    if not results:
        return np.zeros((0, 25, 3) if field == "oracle" else (0, 25))
    return np.stack([getattr(r.labels, field) for r in results])


def _sorted_results(results: list[StudyResult], split: str) -> list[StudyResult]:
    return sorted((r for r in results if r.split == split), key=lambda r: r.study_id)


def _write_split_tables(out_dir: Path, split: str, results: list[StudyResult]) -> None:
    ids = [r.study_id for r in results]
    series = pd.DataFrame([(r.study_id, sid, desc) for r in results for sid, desc in sorted(r.series)],
                          columns=["study_id", "series_id", "series_description"])
    _write_csv(series, out_dir / f"{split}_series_descriptions.csv")
    labels = labels_frame(ids, _stacked(results, "labels"))
    coordinates = pd.DataFrame([row for r in results for row in r.coordinates], columns=list(COORDINATE_FIELDS))
    order = {column: i for i, column in enumerate(vocab.TARGET_COLUMNS)}
    coordinates["_order"] = [order[vocab.target_column(c, lv)] for c, lv in
                             zip(coordinates["condition"], coordinates["level"])]
    coordinates = coordinates.sort_values(["study_id", "series_id", "_order", "instance_number"], kind="stable")
    truth = out_dir / "truth"
    if split == "train":
        _write_csv(labels, out_dir / "train.csv")
        write_label_coordinates(coordinates, out_dir / "train_label_coordinates.csv")
    else:
        _write_csv(labels, truth / "test_labels.csv")
        write_label_coordinates(coordinates, truth / "test_label_coordinates.csv")
        row_ids = [row_id for study_id in ids for row_id in vocab.study_row_ids(study_id)]
        sample = pd.DataFrame({"row_id": row_ids, **dict.fromkeys(vocab.SEVERITIES, 1.0 / 3.0)})
        _write_csv(sample, out_dir / "sample_submission.csv")
    _write_csv(oracle_frame(ids, _stacked(results, "oracle")), truth / f"oracle_{split}.csv")
    latent = pd.DataFrame([row for r in results for row in r.latent],
                          columns=["row_id", "grade", "narrowing_index", "measure", "measure_mm"])
    _write_csv(latent, truth / f"latent_{split}.csv")


def _scores(config: SynthConfig, train: list[StudyResult], test: list[StudyResult]) -> dict:
    """The oracle's and the weighted priors' metric on the test studies (None where undefined)."""
    from radiospine.metrics import score, weighted_prior_predictions

    if not test:
        return {"oracle": None, "weighted_prior_train": None, "weighted_prior_population": None}
    test_ids = [r.study_id for r in test]
    test_labels = labels_frame(test_ids, _stacked(test, "labels"))

    def scored(predictions: pd.DataFrame) -> dict | None:
        try:
            return score(test_labels, predictions).as_dict()
        except ValueError as exc:  # too few test studies to hold every part of the metric
            log.warning("cannot score the %d test studies: %s", len(test_ids), exc)
            return None

    scores = {"oracle": scored(oracle_frame(test_ids, _stacked(test, "oracle")))}
    scores["weighted_prior_train"] = None
    if train:
        train_labels = labels_frame([r.study_id for r in train], _stacked(train, "labels"))
        scores["weighted_prior_train"] = scored(
            weighted_prior_predictions(train_labels, test_ids, pseudo_count=TRAIN_PRIOR_PSEUDO_COUNT))
    population = draw_label_sample(POPULATION_STUDIES, config.seed, config.reader_noise_sd)
    population_labels = labels_frame(list(range(1, POPULATION_STUDIES + 1)), population.labels)
    scores["weighted_prior_population"] = scored(weighted_prior_predictions(population_labels, test_ids))
    return scores


def generate_dataset(out_dir: str | Path, config: SynthConfig, *, jobs: int = 1, overwrite: bool = False) -> dict:
    """Write a synthetic data set (see the module docstring) and return its manifest.

    Args:
        out_dir: the folder to write (created; one holding a data set needs ``overwrite``).
        config: the generator's parameters (train/test studies, seed, small, rates ...).
        jobs: studies generated in parallel (joblib processes); the output does not depend on it.
        overwrite: replace the generator's files in ``out_dir`` (other files there are left alone).

    Raises:
        UserError: ``out_dir`` already holds a data set and ``overwrite`` is False.
    """
    out_dir = prepare_output_folder(out_dir, OUTPUT_ENTRIES, overwrite=overwrite)
    counts = {"train": config.train_studies, "test": config.test_studies}
    ids = draw_study_ids(config.seed, counts)
    tasks = [(split, index, study_id) for split in counts for index, study_id in enumerate(ids[split])]
    started, cpu_started = time.perf_counter(), time.process_time()
    if jobs == 1:
        results = [generate_study(out_dir, split, index, study_id, config) for split, index, study_id in tasks]
    else:
        results = Parallel(n_jobs=jobs)(delayed(generate_study)(out_dir, split, index, study_id, config)
                                        for split, index, study_id in tasks)
    elapsed = time.perf_counter() - started
    train, test = _sorted_results(results, "train"), _sorted_results(results, "test")
    for split, split_results in (("train", train), ("test", test)):
        _write_split_tables(out_dir, split, split_results)
    n_files = sum(r.n_files for r in results)
    n_bytes = sum(r.n_bytes for r in results)
    log.info("wrote %d studies (%d files, %.1f MB) in %.1f s wall (%.1f s CPU in this process)", len(results),
             n_files, n_bytes / 1e6, elapsed, time.process_time() - cpu_started)
    manifest = {
        "generator": "radiospine.synth",
        "generator_version": GENERATOR_VERSION,
        "seed": config.seed,
        "parameters": config.model_dump(mode="json"),
        "studies": {"train": len(train), "test": len(test)},
        "files": n_files,
        "bytes": n_bytes,
        "scores_on_test": _scores(config, train, test),
        "weighted_prior_train_pseudo_count": TRAIN_PRIOR_PSEUDO_COUNT,
        "population_prior_studies": POPULATION_STUDIES,
    }
    atomic_write_text(out_dir / "truth" / "manifest.json", json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    return manifest
