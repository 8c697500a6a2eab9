"""Localising unseen studies: heatmaps of the trained networks -> the 25 points, with fallbacks and provenance.

See :mod:`radiospine.roi.localizer` for the order of the fallbacks. Points are decoded in LPS mm and put on the
nearest slice of the series they are reported on (:func:`point_on_stack`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import pandas as pd
import torch

from radiospine import vocab
from radiospine.catalog import Catalog
from radiospine.config import LocalizerConfig, RoiConfig
from radiospine.device import deterministic_torch
from radiospine.errors import DicomReadError
from radiospine.geometry import (
    StackGeometry,
    patient_to_pixel,
    project_onto_slice,
    slice_centre,
    slice_normal,
    slice_plane_distances,
    voxel_to_patient,
)
from radiospine.io.stacks import SeriesStack
from radiospine.roi.axial import assign_axial_levels, chosen_slices
from radiospine.roi.localizer.data import StudySeries, load_normalised, read_study_series
from radiospine.roi.localizer.grids import (
    AXIAL_CHANNELS,
    FORAMINAL_CONDITIONS,
    Peak,
    axial_grid_centre,
    axial_slab,
    decode_levels,
    decode_peak,
    grid_inside_image,
    resample_to_grid,
    sagittal_grid,
    stack_inputs,
)
from radiospine.roi.localizer.model import Localizer
from radiospine.roi.localizer.unet import UNet

log = logging.getLogger(__name__)

#: The note of a point whose target the localiser was trained without (:attr:`Localizer.untrained`).
UNTRAINED_NOTE = {
    "foraminal": "the localiser was trained without foraminal points (no Sagittal T1 labels)",
    "axial": "the localiser has no axial network (trained without Axial T2 series)",
}

#: Columns of the provenance table written beside the coordinates.
PROVENANCE_COLUMNS = ["study_id", "series_id", "instance_number", "condition", "level", "x", "y", "source",
                      "method", "peak", "note"]


def predict_heatmaps(net: UNet, images: np.ndarray, slice_indices: Sequence[int], neighbours: int,
                     device: torch.device, batch_size: int = 8) -> np.ndarray:
    """Heatmap probabilities ``(len(slice_indices), channels, h, w)`` float32 of grid images ``(slices, h, w)``."""
    out = []
    with torch.no_grad(), deterministic_torch(device):
        for start in range(0, len(slice_indices), batch_size):
            x = torch.from_numpy(stack_inputs(images, slice_indices[start:start + batch_size], neighbours))
            out.append(torch.sigmoid(net(x.to(device))).cpu().numpy())
    return np.concatenate(out) if out else np.zeros((0,), np.float32)


@dataclass
class SagittalPrediction:
    """Heatmaps of every slice of one sagittal stack."""

    series_id: int
    stack: SeriesStack
    grid: np.ndarray
    probabilities: np.ndarray  # (slices, channels, size, size), 0 outside the image

    def best(self, channel: int, slices: Sequence[int]) -> Peak | None:
        """The strongest peak of a channel among the given slices; None without slices."""
        if not len(slices):
            return None
        peaks = [float(self.probabilities[k, channel].max()) for k in slices]
        k = int(slices[int(np.argmax(peaks))])
        peak, row, col = decode_peak(self.probabilities[k, channel])
        return Peak(peak, voxel_to_patient(self.grid, np.array([[k, row, col]]))[0])


@dataclass(frozen=True)
class PointCandidate:
    """A point found for one (condition, level), before it is recorded.

    Attributes:
        lps: ``(3,)`` LPS mm.
        peak: its heatmap peak (NaN when interpolated).
        source, method, note: as in ``PROVENANCE_COLUMNS``.
    """

    lps: np.ndarray
    peak: float
    source: str
    method: str
    note: str


class StackPoint(NamedTuple):
    """A patient point on a stack's slice: the slice's instance and the pixel ``x`` (column), ``y`` (row)."""

    instance_number: int
    x: float
    y: float


def _sagittal_prediction(localizer: Localizer, series_id: int, stack: SeriesStack) -> SagittalPrediction:
    config = localizer.config
    grid = sagittal_grid(stack, config)
    images = resample_to_grid(load_normalised(stack, 0, stack.shape[0]), stack.affine, grid,
                              config.sagittal_grid_px, config.sagittal_grid_mm)
    probabilities = predict_heatmaps(localizer.sagittal, images, list(range(stack.shape[0])),
                                     config.neighbour_slices, localizer.device)
    probabilities *= grid_inside_image(stack, grid, config.sagittal_grid_px)[None, None]
    return SagittalPrediction(series_id, stack, grid, probabilities)


def lateral_offsets_mm(stack: StackGeometry, reference_lps: np.ndarray) -> np.ndarray:
    """``(slices,)`` how far each sagittal slice lies towards the patient's left (+x, LPS) of a reference point.

    Positive: the slice is on the patient's left. NaN for a stack whose planes are not sagittal enough to say.
    """
    normal = slice_normal(stack.affine)
    if abs(normal[0]) < 0.5:
        return np.full(stack.shape[0], np.nan)
    distances = slice_plane_distances(stack.affine, stack.shape[0], reference_lps)[0]  # reference minus plane
    return -distances / normal[0]


def side_slices(stack: StackGeometry, side: str, reference: dict[str, np.ndarray] | None, level: str,
                min_offset_mm: float) -> list[int]:
    """The slices of a sagittal stack on one side of the patient, at least ``min_offset_mm`` from the midline.

    The midline is the level's canal point (else the mean canal point); when that leaves no slice on this side
    (a canal point placed far off), the stack's centre, as sagittal series are centred on the spine.
    """
    sign = 1.0 if side == "left" else -1.0
    n = stack.shape[0]
    anchors = []
    if reference:
        anchors.append(reference[level] if level in reference else np.mean(list(reference.values()), axis=0))
    anchors.append(slice_centre(stack.affine, stack.shape, (n - 1) / 2))
    for anchor in anchors:
        offsets = lateral_offsets_mm(stack, anchor)
        slices = [k for k in range(n) if sign * offsets[k] >= min_offset_mm]
        if slices:
            return slices
    return []


def point_on_stack(stack: StackGeometry, lps: np.ndarray) -> StackPoint:
    """A ``(3,)`` LPS mm patient point put on its nearest slice of a stack (projected onto that slice's plane)."""
    slice_position, _, _ = patient_to_pixel(stack.affine, lps[None, :])
    k = int(np.clip(np.rint(slice_position[0]), 0, stack.shape[0] - 1))
    projected = project_onto_slice(stack.affine, k, lps[None, :])
    _, x, y = patient_to_pixel(stack.affine, projected)
    return StackPoint(int(stack.instance_numbers[k]), float(x[0]), float(y[0]))


def _interpolate_levels(found: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Missing levels from the found ones, linearly along the level index (extrapolated at the ends)."""
    known = [vocab.LEVELS.index(level) for level in vocab.LEVELS if level in found]
    if len(known) < 2:
        return {}
    values = np.array([found[vocab.LEVELS[i]] for i in known])
    filled = {}
    for i, level in enumerate(vocab.LEVELS):
        if level in found:
            continue
        lower = max([j for j in known if j < i], default=None)
        upper = min([j for j in known if j > i], default=None)
        a, b = (lower, upper) if lower is not None and upper is not None else (
            (known[0], known[1]) if upper is not None else (known[-2], known[-1]))
        weight = (i - a) / (b - a)
        filled[level] = values[known.index(a)] * (1 - weight) + values[known.index(b)] * weight
    return filled


def _record(study_id: int, condition: str, level: str, source: str, method: str, *,
            stack: StackGeometry | None = None, series_id: int | None = None, lps: np.ndarray | None = None,
            peak: float = float("nan"), note: str = "") -> dict:
    """One provenance row (``PROVENANCE_COLUMNS``); with ``stack`` and ``lps`` the point is put on that stack."""
    record = dict(study_id=int(study_id), series_id=pd.NA, instance_number=pd.NA, condition=condition, level=level,
                  x=float("nan"), y=float("nan"), source=source, method=method, peak=float(peak), note=note)
    if stack is not None and lps is not None:
        point = point_on_stack(stack, lps)
        record.update(series_id=int(series_id), instance_number=point.instance_number, x=point.x, y=point.y)
    return record


def predict_study(localizer: Localizer, study: StudySeries, roi_config: RoiConfig) -> list[dict]:
    """The 25 points of one study with their provenance (``PROVENANCE_COLUMNS``; ``source`` is ``predicted``,
    ``fallback`` or ``missing``). A sagittal series with a file that cannot be decoded is treated as missing
    (the other sagittal series stands in) and recorded in ``study.problems``."""
    config = localizer.config
    sagittal: dict[str, SagittalPrediction] = {}
    for description in (vocab.SAGITTAL_T2, vocab.SAGITTAL_T1):
        main = study.main_stack(description)
        if main is not None:
            try:
                sagittal[description] = _sagittal_prediction(localizer, main.series_id, main.stack)
            except DicomReadError as exc:
                study.problems.append(f"series {main.series_id} ({description}) cannot be decoded: {exc}")
                log.warning("study %s: %s series %s cannot be decoded: %s", study.study_id, description,
                            main.series_id, exc)
    records: list[dict] = []
    canal = _sagittal_points(study, sagittal, vocab.SAGITTAL_T2, vocab.SAGITTAL_T1, config, records,
                             channel_of=lambda level: vocab.LEVELS.index(level), conditions=[vocab.SPINAL],
                             reference=None)
    canal_lps = {level: lps for (_, level), lps in canal.items()}
    if "foraminal" in localizer.untrained:
        records.extend(_record(study.study_id, condition, level, "missing", "", note=UNTRAINED_NOTE["foraminal"])
                       for condition in FORAMINAL_CONDITIONS for level in vocab.LEVELS)
    else:
        _sagittal_points(study, sagittal, vocab.SAGITTAL_T1, vocab.SAGITTAL_T2, config, records,
                         channel_of=lambda level: 5 + vocab.LEVELS.index(level),
                         conditions=list(FORAMINAL_CONDITIONS), reference=canal_lps)
    records.extend(_axial_points(localizer, study, canal_lps, roi_config))
    return records


def _sagittal_points(study: StudySeries, sagittal: dict[str, SagittalPrediction], primary: str, secondary: str,
                     config: LocalizerConfig, records: list[dict], *, channel_of: Callable[[str], int],
                     conditions: list[str],
                     reference: dict[str, np.ndarray] | None) -> dict[tuple[str, str], np.ndarray]:
    """Canal (``reference`` None) or foraminal points (``reference``: the canal points, to tell the sides apart).

    The five levels are decoded together (:func:`decode_levels`). Per level, in order: the primary series'
    heatmaps (``predicted``); the secondary series' (``fallback``, through the shared patient frame);
    interpolation from the levels found so far (``fallback``); the strongest peak of the level's channel, however
    weak or out of order (``fallback``, noted with its value). Points go to
    ``records`` on the primary series (the secondary when the primary is missing). Returns (condition, level) ->
    LPS of the points placed.
    """
    target = sagittal.get(primary) or sagittal.get(secondary)
    placed: dict[tuple[str, str], np.ndarray] = {}
    for condition in conditions:
        side = vocab.split_condition(condition).side
        strong: dict[str, PointCandidate] = {}
        weak: dict[str, PointCandidate] = {}
        for description in (primary, secondary):
            prediction = sagittal.get(description)
            if prediction is None:
                continue
            slices = [list(range(prediction.stack.shape[0])) if side is None else
                      side_slices(prediction.stack, side, reference, level, config.foramen_min_offset_mm)
                      for level in vocab.LEVELS]
            channels = [channel_of(level) for level in vocab.LEVELS]
            decoded = decode_levels(prediction.probabilities[:, channels], prediction.grid, slices, config.min_peak)
            is_primary = description == primary
            method = f"{description} heatmap" + ("" if is_primary else " (shared patient frame)")
            note = "" if is_primary else f"weak {primary} peak" if primary in sagittal else f"no {primary} series"
            for i, level in enumerate(vocab.LEVELS):
                if decoded[i] is not None and level not in strong:
                    strong[level] = PointCandidate(decoded[i].lps, decoded[i].height,
                                                   "predicted" if is_primary else "fallback", method, note)
                best = prediction.best(channels[i], slices[i])
                if best is not None and (level not in weak or best.height > weak[level].peak):
                    weak[level] = PointCandidate(
                        best.lps, best.height, "fallback", method,
                        f"no peak of at least localizer.min_peak in order; strongest {best.height:.3f}")
        interpolated = _interpolate_levels({level: candidate.lps for level, candidate in strong.items()})
        for level in vocab.LEVELS:
            if level in strong:
                chosen = strong[level]
            elif level in interpolated:
                chosen = PointCandidate(interpolated[level], float("nan"), "fallback",
                                        "interpolated from the neighbouring levels", "no strong peak")
            elif level in weak:
                chosen = weak[level]
            else:
                note = "no sagittal series" if target is None else "no slice on this side of the canal"
                records.append(_record(study.study_id, condition, level, "missing", "", note=note))
                continue
            placed[(condition, level)] = chosen.lps
            records.append(_record(study.study_id, condition, level, chosen.source, chosen.method,
                                   stack=target.stack, series_id=target.series_id, lps=chosen.lps, peak=chosen.peak,
                                   note=chosen.note))
        if side is None:
            heights = [placed[(condition, level)][2] for level in vocab.LEVELS if (condition, level) in placed]
            if np.any(np.diff(heights) >= 0):
                log.warning("study %s: the %s points are not ordered from head to feet (z = %s)", study.study_id,
                            condition, np.round(heights, 1).tolist())
    return placed


def _axial_points(localizer: Localizer, study: StudySeries, canal: dict[str, np.ndarray], roi_config: RoiConfig
                  ) -> list[dict]:
    """The subarticular points: the axial slice per level from the canal points, then the axial heatmaps.

    A level whose axial slab holds a file that cannot be decoded is ``missing``, the reason in its note.
    """
    config = localizer.config
    axial = dict(study.by_type.get(vocab.AXIAL_T2, []))
    records: list[dict] = []

    def missing(level: str, note: str) -> None:
        records.extend(_record(study.study_id, condition, level, "missing", "", note=note)
                       for condition in AXIAL_CHANNELS)

    if localizer.axial is None or not axial or not canal:
        note = (UNTRAINED_NOTE["axial"] if localizer.axial is None else "no Axial T2 series" if not axial
                else "no canal points to tie axial slices to levels")
        for level in vocab.LEVELS:
            missing(level, note)
        return records
    assignment = assign_axial_levels(study.study_id, canal, axial, max_distance_mm=roi_config.axial_max_distance_mm)
    chosen = chosen_slices(assignment)
    line = np.array([canal[level] for level in vocab.LEVELS if level in canal])
    size, pixel_mm = config.axial_grid_px, config.axial_grid_mm
    middle = (size - 1) / 2
    for level in vocab.LEVELS:
        assigned_note = ""
        if level in chosen.index:
            row = chosen.loc[level]
        else:
            candidates = assignment[assignment["level"] == level]
            if candidates.empty:
                missing(level, "no canal point at this level")
                continue
            candidates = candidates[candidates["inside"]] if candidates["inside"].any() else candidates
            row = candidates.loc[candidates["distance_mm"].abs().idxmin()]
            assigned_note = (f"no axial slice within {roi_config.axial_max_distance_mm} mm of the level: nearest "
                             f"{abs(row.distance_mm):.1f} mm away{'' if row.inside else ', outside the image'}")
        stack = axial[int(row.series_id)][int(row.stack_index)]
        k, n = int(row.slice_index), stack.shape[0]
        slab = axial_slab(stack, k, axial_grid_centre(stack, k, line), config)
        first, grid = slab.first, slab.grid
        try:
            slices = load_normalised(stack, first, slab.stop)
        except DicomReadError as exc:
            missing(level, f"axial series {int(row.series_id)} cannot be decoded: {exc}")
            continue
        images = resample_to_grid(slices, stack.affine, grid, size, pixel_mm)
        candidates = [c for c in (k - 1, k, k + 1) if 0 <= c < n]
        probabilities = predict_heatmaps(localizer.axial, images, [c - first for c in candidates],
                                         config.neighbour_slices, localizer.device)
        probabilities *= grid_inside_image(stack, grid, size)[None, None]
        scores = probabilities.reshape(len(candidates), len(AXIAL_CHANNELS), -1).max(axis=2).sum(axis=1)
        best = int(np.argmax(scores))
        c = candidates[best]
        moved = "" if c == k else f"axial slice moved from the projected instance {int(stack.instance_numbers[k])}"
        note = "; ".join(filter(None, [assigned_note, moved]))
        for channel, condition in enumerate(AXIAL_CHANNELS):
            peak, r, col = decode_peak(probabilities[best, channel])
            source = "fallback" if assigned_note else "predicted"
            method = "axial heatmap on the slice the canal point projects to"
            if peak < config.min_peak:
                offset = np.asarray(localizer.subarticular_offsets_mm[condition]) / pixel_mm
                r, col = middle + offset[0], middle + offset[1]
                source, method = "fallback", "mean training offset from where the canal crosses the slice"
            lps = voxel_to_patient(grid, np.array([[c - first, r, col]]))[0]
            records.append(_record(study.study_id, condition, level, source, method, stack=stack,
                                   series_id=int(row.series_id), lps=lps, peak=peak, note=note))
    return records


def predict_studies(localizer: Localizer, catalog: Catalog, study_ids: Sequence[int], roi_config: RoiConfig
                    ) -> pd.DataFrame:
    """Provenance table (``PROVENANCE_COLUMNS``) of every study: 25 rows each, ``missing`` ones without a point."""
    records = []
    for number, study_id in enumerate(study_ids, 1):
        study = read_study_series(catalog, int(study_id))
        study_records = predict_study(localizer, study, roi_config)
        for problem in study.problems:
            for record in study_records:
                if record["source"] != "predicted":
                    record["note"] = "; ".join(filter(None, [record["note"], problem]))
        records.extend(study_records)
        counts = pd.Series([r["source"] for r in study_records]).value_counts().to_dict()
        log.info("localised study %s (%d/%d): %s", study_id, number, len(study_ids), counts)
    table = pd.DataFrame(records, columns=PROVENANCE_COLUMNS)
    return table.astype({"study_id": "int64", "series_id": "Int64", "instance_number": "Int64"})


def coordinates_from_provenance(provenance: pd.DataFrame) -> pd.DataFrame:
    """The placed points (not ``missing``) in the coordinates layout, with their ``source``."""
    placed = provenance[provenance["source"] != "missing"]
    return placed.astype({"series_id": "int64", "instance_number": "int64"})[
        ["study_id", "series_id", "instance_number", "condition", "level", "x", "y", "source"]
    ].reset_index(drop=True)
