"""The localiser's data: one study's series and label points, and the resampled training stacks.

Stacks are header-only ``SeriesStack`` s (:func:`radiospine.io.headers.read_series_headers`); slices are decoded only
when a grid is resampled (:func:`load_normalised`). Points are LPS mm (:mod:`radiospine.geometry`). Training slices
are decoded and resampled once, in worker processes, into a :class:`SliceCache` on disk (:func:`prepare_training`);
training reads them from there, so its memory does not grow with the number of studies.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pandas as pd
from joblib import Parallel, delayed

from radiospine import vocab
from radiospine.artifacts import atomic_path
from radiospine.catalog import Catalog
from radiospine.config import LocalizerConfig
from radiospine.errors import DicomReadError
from radiospine.geometry import coordinate_to_patient, find_stack, slice_index_of_instance, slice_plane_distances
from radiospine.hashing import json_hash
from radiospine.io.decode import load_volume
from radiospine.io.headers import read_series_headers
from radiospine.io.stacks import SeriesStack
from radiospine.roi.cut import normalise_intensity
from radiospine.roi.localizer.grids import (
    AXIAL_CHANNELS,
    AXIAL_SLAB_HALF_WIDTH,
    FORAMINAL_CONDITIONS,
    INPUT_PERCENTILES,
    SAGITTAL_CHANNELS,
    SUBARTICULAR_CONDITIONS,
    Kind,
    axial_grid_centre,
    axial_slab,
    resample_to_grid,
    sagittal_grid,
)
from radiospine.threads import thread_budget

log = logging.getLogger(__name__)


class SeriesStacks(NamedTuple):
    """One readable series: its id and its stacks (a pair, so ``dict(study.by_type[description])`` works)."""

    series_id: int
    stacks: list[SeriesStack]


@dataclass(frozen=True)
class MainStack:
    """The stack a series type is localised on: the largest stack of the first series of that type."""

    series_id: int
    stack_index: int
    stack: SeriesStack


@dataclass(frozen=True)
class PlacedPoint:
    """One coordinate row of a study put in the patient frame.

    Attributes:
        lps: ``(3,)`` LPS mm.
        affine: ``(4, 4)`` affine of the stack the row names.
        series_id, instance_number: the row's series and instance.
    """

    lps: np.ndarray
    affine: np.ndarray
    series_id: int
    instance_number: int


def largest_stack_index(stacks: list[SeriesStack]) -> int:
    """Index of the stack with the most slices (the first of equals)."""
    return int(np.argmax([stack.shape[0] for stack in stacks]))


@dataclass
class StudySeries:
    """The readable series of one study: description -> its series (:class:`SeriesStacks`); plus what failed."""

    study_id: int
    by_type: dict[str, list[SeriesStacks]] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)

    def stacks_by_series(self) -> dict[int, list[SeriesStack]]:
        return {series_id: stacks for entries in self.by_type.values() for series_id, stacks in entries}

    def main_stack(self, description: str) -> MainStack | None:
        """The largest stack of the first series of a type, or None without such a series."""
        for series_id, stacks in self.by_type.get(description, []):
            index = largest_stack_index(stacks)
            return MainStack(series_id, index, stacks[index])
        return None


def read_study_series(catalog: Catalog, study_id: int) -> StudySeries:
    """Read the headers of every series of a study that the catalog types; unreadable series are recorded."""
    study = StudySeries(int(study_id))
    for description in vocab.SERIES_DESCRIPTIONS:
        for row in catalog.series_of(study_id, description).itertuples():
            try:
                stacks = read_series_headers(Path(row.path), study_id=int(study_id), series_id=int(row.series_id))
            except (DicomReadError, FileNotFoundError) as exc:
                study.problems.append(f"series {row.series_id} ({description}) unreadable: {exc}")
                log.warning("study %s: %s series %s cannot be read: %s", study_id, description, row.series_id, exc)
                continue
            study.by_type.setdefault(description, []).append(SeriesStacks(int(row.series_id), stacks))
    return study


def label_points(study: StudySeries, coords: pd.DataFrame) -> dict[tuple[str, str], np.ndarray]:
    """(condition, level) -> ``(3,)`` LPS mm of a study's coordinates: the first row of each (condition, level);
    rows naming an unreadable series or an absent instance are left out and logged."""
    return {key: entries[0].lps for key, entries in placed_points(study, coords).items()}


def placed_points(study: StudySeries, coords: pd.DataFrame) -> dict[tuple[str, str], list[PlacedPoint]]:
    """(condition, level) -> one :class:`PlacedPoint` per row of the study's coordinates, in file order (the real
    file marks a few targets twice)."""
    stacks_by_series = study.stacks_by_series()
    placed: dict[tuple[str, str], list[PlacedPoint]] = {}
    for row in coords[coords["study_id"] == study.study_id].itertuples(index=False):
        stacks = stacks_by_series.get(int(row.series_id))
        if stacks is None:
            log.warning("study %s: coordinate %s %s names series %s, which is not readable", study.study_id,
                        row.condition, row.level, row.series_id)
            continue
        try:
            stack = stacks[find_stack(stacks, int(row.instance_number))]
        except KeyError as exc:
            log.warning("study %s: coordinate %s %s: %s", study.study_id, row.condition, row.level, exc.args[0])
            continue
        lps = coordinate_to_patient(stack, int(row.instance_number), float(row.x), float(row.y))
        placed.setdefault((str(row.condition), str(row.level)), []).append(
            PlacedPoint(lps, stack.affine, int(row.series_id), int(row.instance_number)))
    return placed


def canal_line(points: dict[tuple[str, str], np.ndarray]) -> np.ndarray:
    """``(n, 3)`` the canal points from L1/L2 down to L5/S1 (levels without a point are skipped)."""
    return np.array([points[(vocab.SPINAL, level)] for level in vocab.LEVELS if (vocab.SPINAL, level) in points])


def load_normalised(stack: SeriesStack, first: int, stop: int) -> np.ndarray:
    """Stack slices ``first .. stop - 1`` decoded and normalised to ``[0, 1]`` (``INPUT_PERCENTILES`` of them):
    ``(stop - first, rows, cols)`` float32."""
    return normalise_intensity(load_volume(stack, slice(first, stop)).voxels, INPUT_PERCENTILES)


#: Bumped when what a slice cache file holds changes; it is part of every cache key.
SLICE_CACHE_FORMAT = 1


@dataclass(frozen=True)
class TrainingStack:
    """Resampled slices of one stack (sagittal) or one slab around a level (axial) and their label points.

    The images live in the slice cache (:class:`SliceCache`), not in memory: :meth:`images` maps them.

    Attributes:
        study_id: the study (folds and the early-stopping split are drawn by it).
        kind: which network it trains.
        path: the cache file holding ``(slices, size, size)`` float16 grid images in ``[0, 1]``.
        grid: ``(4, 4)`` grid affine; grid slice ``k`` is ``images()[k]``.
        points_lps: ``(channels, points, 3)`` LPS mm target points (NaN: absent).
        weights: ``(slices,)`` sampling weight of each slice as a training centre (0: context only).
    """

    study_id: int
    kind: Kind
    path: Path
    grid: np.ndarray
    points_lps: np.ndarray
    weights: np.ndarray

    def images(self) -> np.ndarray:
        """``(slices, size, size)`` float16, a read-only memory map of the cache file (indexing reads only the
        slices asked for)."""
        return np.load(self.path, mmap_mode="r")


class SliceCache:
    """Decoded, normalised and resampled training slices on disk, one ``<key>.npy`` per stack or slab.

    The key hashes what the images depend on: the slice files (path, size, modification time), the stack's
    affine, the grid (affine, pixels, mm per pixel), the slice range, the input percentiles and
    :data:`SLICE_CACHE_FORMAT`. Files are written atomically (:func:`radiospine.artifacts.atomic_path`), so a
    killed write leaves no file under a key; a file that does not read back with the expected shape is made again.
    The cache is shared by the final and the out-of-fold models and by later runs; deleting it only costs time.
    """

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)
        self.hits = 0
        self.misses = 0

    def resampled(self, stack: SeriesStack, first: int, stop: int, grid: np.ndarray, size: int,
                  pixel_mm: float) -> Path:
        """The cache file of stack slices ``first .. stop - 1`` resampled onto ``grid`` (``size`` px of
        ``pixel_mm``): ``(stop - first, size, size)`` float16, made (decoded, normalised, resampled) on a miss.

        Raises:
            DicomReadError: a slice cannot be decoded (nothing is cached).
        """
        files = []
        for header in stack.slices[first:stop]:
            status = Path(header.path).stat()
            files.append([str(header.path), status.st_size, status.st_mtime_ns])
        key = json_hash({"format": SLICE_CACHE_FORMAT, "files": files, "stack_affine": stack.affine.tolist(),
                         "grid": grid.tolist(), "size": size, "pixel_mm": pixel_mm,
                         "percentiles": list(INPUT_PERCENTILES)})
        path = self.folder / f"{key}.npy"
        if self._holds(path, (stop - first, size, size)):
            self.hits += 1
            return path
        slices = load_normalised(stack, first, stop)
        images = resample_to_grid(slices, stack.affine, grid, size, pixel_mm).astype(np.float16)
        with atomic_path(path) as tmp, open(tmp, "wb") as handle:
            np.save(handle, images)
        self.misses += 1
        return path

    @staticmethod
    def _holds(path: Path, shape: tuple[int, int, int]) -> bool:
        if not path.is_file():
            return False
        try:
            images = np.load(path, mmap_mode="r")
        except (ValueError, OSError, EOFError) as exc:
            log.warning("slice cache file %s cannot be read (%s): it is made again", path, exc)
            return False
        if images.shape != shape or images.dtype != np.float16:
            log.warning("slice cache file %s holds %s %s, not %s float16: it is made again", path, images.shape,
                        images.dtype, shape)
            return False
        return True


def _slice_weights(grid: np.ndarray, n_slices: int, points_lps: np.ndarray, sigma_normal_mm: float) -> np.ndarray:
    """Sampling weights: a floor for every slice plus the strongest target amplitude on it."""
    flat = points_lps.reshape(-1, 3)
    flat = flat[np.isfinite(flat).all(axis=1)]
    if not len(flat):
        return np.full(n_slices, 0.25)
    distance = slice_plane_distances(grid, n_slices, flat)
    return 0.25 + np.exp(-distance**2 / (2 * sigma_normal_mm**2)).max(axis=0)


def training_stacks_for_study(study: StudySeries, coords: pd.DataFrame, config: LocalizerConfig,
                              cache: SliceCache) -> list[TrainingStack]:
    """Every sagittal stack of a study and an axial slab per labelled level, with their target points; their
    resampled images are in ``cache`` (decoded there on a miss).

    A stack or slab holding a file that cannot be decoded is left out (logged); the study keeps the others.
    """
    points = label_points(study, coords)
    stacks: list[TrainingStack] = []
    sagittal_points = np.full((len(SAGITTAL_CHANNELS), 2, 3), np.nan)
    for i, level in enumerate(vocab.LEVELS):
        if (vocab.SPINAL, level) in points:
            sagittal_points[i, 0] = points[(vocab.SPINAL, level)]
        for j, condition in enumerate(FORAMINAL_CONDITIONS):
            if (condition, level) in points:
                sagittal_points[5 + i, j] = points[(condition, level)]
    if np.isfinite(sagittal_points).any():
        for description in (vocab.SAGITTAL_T1, vocab.SAGITTAL_T2):
            for _, series_stacks in study.by_type.get(description, []):
                stack = series_stacks[largest_stack_index(series_stacks)]
                grid = sagittal_grid(stack, config)
                try:
                    path = cache.resampled(stack, 0, stack.shape[0], grid, config.sagittal_grid_px,
                                           config.sagittal_grid_mm)
                except DicomReadError as exc:
                    log.warning("study %s: %s stack left out of training: %s", study.study_id, description, exc)
                    continue
                stacks.append(TrainingStack(study.study_id, "sagittal", path, grid, sagittal_points,
                                            _slice_weights(grid, stack.shape[0], sagittal_points,
                                                           config.sigma_normal_mm)))
    canal = canal_line(points)
    stacks_by_series = study.stacks_by_series()
    for row in coords[(coords["study_id"] == study.study_id)
                      & coords["condition"].isin(SUBARTICULAR_CONDITIONS)].drop_duplicates("level").itertuples():
        level_points = np.array([[points.get((condition, row.level), np.full(3, np.nan))]
                                 for condition in AXIAL_CHANNELS])
        series_stacks = stacks_by_series.get(int(row.series_id))
        if series_stacks is None or not np.isfinite(level_points).any():
            continue
        try:
            stack = series_stacks[find_stack(series_stacks, int(row.instance_number))]
        except KeyError:
            continue
        k = slice_index_of_instance(stack, int(row.instance_number))
        centre = axial_grid_centre(stack, k, canal) if len(canal) else np.nanmean(level_points.reshape(-1, 3), axis=0)
        slab = axial_slab(stack, k, centre, config)
        try:
            path = cache.resampled(stack, slab.first, slab.stop, slab.grid, config.axial_grid_px,
                                   config.axial_grid_mm)
        except DicomReadError as exc:
            log.warning("study %s: axial slab of %s left out of training: %s", study.study_id, row.level, exc)
            continue
        weights = _slice_weights(slab.grid, slab.stop - slab.first, level_points, config.sigma_normal_mm)
        weights[np.abs(np.arange(slab.first, slab.stop) - k) > AXIAL_SLAB_HALF_WIDTH] = 0.0
        stacks.append(TrainingStack(study.study_id, "axial", path, slab.grid, level_points, weights))
    return stacks


@dataclass
class PreparedTraining:
    """The training stacks of every study (their images in the cache) and what preparing them cost.

    Attributes:
        by_study: study id -> its training stacks (ascending study ids; a study may have none).
        cache_hits, cache_misses: stacks or slabs found in the cache / decoded and written to it.
    """

    by_study: dict[int, list[TrainingStack]]
    cache_hits: int
    cache_misses: int


def _prepare_studies(catalog: Catalog, study_ids: list[int], coords: pd.DataFrame, config: LocalizerConfig,
                     cache_folder: Path) -> tuple[list[tuple[int, list[TrainingStack]]], int, int]:
    """One worker's share of :func:`prepare_training`: a few studies, one compute thread."""
    cache = SliceCache(cache_folder)
    with thread_budget(1):
        stacks = [(study_id, training_stacks_for_study(read_study_series(catalog, study_id), coords, config, cache))
                  for study_id in study_ids]
    return stacks, cache.hits, cache.misses


def prepare_training(catalog: Catalog, study_ids: Sequence[int], coords: pd.DataFrame, config: LocalizerConfig,
                     cache_folder: str | Path, *, jobs: int = 1, chunk: int = 4) -> PreparedTraining:
    """The training stacks of ``study_ids``, their slices decoded and resampled into the slice cache in
    ``cache_folder`` by ``jobs`` worker processes (joblib; ``chunk`` studies per task). The result is the same
    whatever ``jobs``: the cache files are keyed by their inputs, the stacks ordered by study."""
    ids = sorted(int(study_id) for study_id in study_ids)
    chunks = [ids[start:start + chunk] for start in range(0, len(ids), chunk)]
    tasks = (delayed(_prepare_studies)(catalog.subset(part), part, coords[coords["study_id"].isin(part)], config,
                                       Path(cache_folder)) for part in chunks)
    results = Parallel(n_jobs=max(1, min(jobs, len(chunks))))(tasks)
    by_study = dict(sorted((study_id, stacks) for done, _, _ in results for study_id, stacks in done))
    return PreparedTraining(by_study, sum(hits for _, hits, _ in results), sum(misses for _, _, misses in results))
