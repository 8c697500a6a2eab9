"""Where a reader marks each label: the coordinates file of a synthetic study.

The real conventions (docs/design.md section 1): canal points on the Sagittal T2/STIR series (on the slice nearest
the canal, usually the mid slice), foraminal points on the Sagittal T1 series (on the parasagittal slice nearest
the foramen, so the left ones sit at higher instance numbers), subarticular points on the Axial T2 slice nearest
the disc (the left recess on the image's right). ``x, y`` are the pixel column and row of the landmark projected
onto that slice, scattered by the reader's hand (``annotation_jitter_mm``). A labelled target gets one point, and
now and then (``extra_point_rate``) a second one on another axial series or the neighbouring slice. A missing
label gets no point. When a study lacks the series a condition is marked on, the other sagittal series is used.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from radiospine import vocab
from radiospine.config import SynthConfig
from radiospine.geometry import patient_to_voxel, slice_step_vector
from radiospine.synth.anatomy import Anatomy
from radiospine.synth.labels import StudyLabels
from radiospine.synth.series import SeriesPlan, StackPlan, stack_affine

#: Columns of the rows :func:`annotate_study` returns (the coordinates file's, snake_case spelling).
COORDINATE_FIELDS: tuple[str, ...] = ("study_id", "series_id", "instance_number", "condition", "level", "x", "y")
#: Largest distance (mm) from a landmark to the nearest axial slice plane for that slice to be marked.
MAX_AXIAL_DISTANCE_MM = 6.0


@dataclass(frozen=True)
class SliceHit:
    """A landmark projected onto one slice: the series, stack, slice index (positions order) and pixel."""

    series: SeriesPlan
    stack: StackPlan
    slice_index: int
    distance_mm: float
    col: float
    row: float


def project(stack: StackPlan, point_lps: np.ndarray) -> tuple[int, float, float, float]:
    """``(nearest slice index, distance mm along the normal, col, row)`` of an LPS point on a stack."""
    affine = stack_affine(stack)
    slice_pos, row, col = patient_to_voxel(affine, point_lps[None, :])[0]
    index = int(np.clip(np.rint(slice_pos), 0, stack.n_slices - 1))
    step = float(np.linalg.norm(slice_step_vector(affine))) if stack.n_slices > 1 else stack.spacing_between_slices
    distance = abs(slice_pos - index) * step
    return index, distance, float(col), float(row)


def _hits(plans: list[SeriesPlan], point_lps: np.ndarray) -> list[SliceHit]:
    """The landmark on each stack of ``plans`` whose image contains it, nearest slice first."""
    hits = []
    for plan in plans:
        for stack in plan.stacks:
            index, distance, col, row = project(stack, point_lps)
            if 0 <= col <= stack.cols - 1 and 0 <= row <= stack.rows - 1:
                hits.append(SliceHit(plan, stack, index, distance, col, row))
    return sorted(hits, key=lambda hit: hit.distance_mm)


def _series_for(base: str, plans: list[SeriesPlan], rng: np.random.Generator) -> list[SeriesPlan]:
    """The series a base condition is marked on (one sagittal series; every axial series)."""
    wanted = vocab.SERIES_FOR_BASE_CONDITION[base]
    chosen = [p for p in plans if p.description == wanted]
    if not chosen and wanted != vocab.AXIAL_T2:  # the study lacks it: use the other sagittal series
        chosen = [p for p in plans if p.description in (vocab.SAGITTAL_T1, vocab.SAGITTAL_T2)]
    if wanted != vocab.AXIAL_T2 and len(chosen) > 1:
        chosen = [chosen[int(rng.integers(len(chosen)))]]
    return chosen


def landmark_lps(anatomy: Anatomy, condition: str, level: str) -> np.ndarray:
    """``(3,)`` LPS landmark a reader marks for a target."""
    parts = vocab.split_condition(condition)
    if parts.base == vocab.SPINAL:
        return anatomy.canal_point_lps(level)
    if parts.base == vocab.FORAMINAL:
        return anatomy.foramen_point_lps(level, parts.side)
    return anatomy.recess_point_lps(level, parts.side)


def annotate_study(study_id: int, anatomy: Anatomy, plans: list[SeriesPlan], labels: StudyLabels,
                   rng: np.random.Generator, config: SynthConfig) -> list[tuple]:
    """The coordinate rows of one study (``COORDINATE_FIELDS``), targets in TARGET_COLUMNS order.

    Raises:
        RuntimeError: a labelled target whose landmark no series shows (a generator bug, not a user error).
    """
    rows: list[tuple] = []
    series_by_base = {base: _series_for(base, plans, rng) for base in vocab.BASE_CONDITIONS}
    for column in vocab.TARGET_COLUMNS:
        condition, level = vocab.split_target_column(column)
        if labels.label_of(condition, level) < 0:
            continue
        base = vocab.split_condition(condition).base
        point = landmark_lps(anatomy, condition, level)
        hits = _hits(series_by_base[base], point)
        if base == vocab.SUBARTICULAR:
            hits = [hit for hit in hits if hit.distance_mm <= MAX_AXIAL_DISTANCE_MM]
        if not hits:
            raise RuntimeError(f"study {study_id}: no series shows the landmark of {column}")
        marks = [(hits[0], 0)]
        if rng.random() < config.extra_point_rate:
            if base == vocab.SUBARTICULAR and len(hits) > 1 and hits[1].series is not hits[0].series:
                marks.append((hits[1], 0))
            else:
                first = hits[0]
                step = 1 if first.slice_index + 1 < first.stack.n_slices else -1
                marks.append((first, step))
        for hit, step in marks:
            index = hit.slice_index + step
            spacing_row, spacing_col = hit.stack.pixel_spacing
            col = hit.col + rng.normal(0.0, config.annotation_jitter_mm) / spacing_col
            row = hit.row + rng.normal(0.0, config.annotation_jitter_mm) / spacing_row
            col = float(np.clip(col, 0.0, hit.stack.cols - 1.0))
            row = float(np.clip(row, 0.0, hit.stack.rows - 1.0))
            rows.append((int(study_id), int(hit.series.series_id), int(hit.stack.instance_numbers[index]), condition,
                         level, col, row))
    return rows
