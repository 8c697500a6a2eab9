"""Axial level assignment: which axial slice passes through which disc level.

The sagittal canal points (one per level, in patient LPS mm) are shared by every series of a study, because all
series of one session live in the same patient frame. Each level point is measured against every slice plane of
every axial stack (several axial series, several stacks in a series, stacks tilted per disc): the distance along
that stack's own slice normal (:func:`radiospine.geometry.slice_normal`) says how far the slice is from the level,
and the point's projection onto the plane must fall inside the image. Per level, the slice with the smallest
distance wins, if it is within ``max_distance_mm``.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd

from radiospine import vocab
from radiospine.geometry import StackGeometry, inside_image, patient_to_pixel, slice_plane_distances, slice_spacing_mm

log = logging.getLogger(__name__)

#: Columns of :func:`assign_axial_levels`' table.
ASSIGNMENT_COLUMNS = ["study_id", "series_id", "stack_index", "level", "slice_index", "instance_number",
                      "distance_mm", "slice_step_mm", "x", "y", "inside", "chosen"]


def assign_axial_levels(study_id: int, level_points_lps: Mapping[str, np.ndarray],
                        axial_stacks: Mapping[int, Sequence[StackGeometry]], *,
                        max_distance_mm: float) -> pd.DataFrame:
    """Tie axial slices to disc levels by projecting the level points into each axial stack's geometry.

    Args:
        study_id: for the table and the log.
        level_points_lps: level (``"l4_l5"``) -> ``(3,)`` LPS mm, usually the sagittal canal points.
        axial_stacks: axial series id -> its stacks (anything with ``affine``, ``instance_numbers``, ``shape``).
        max_distance_mm: a level is left unassigned when no slice plane is this close to its point.

    Returns:
        One row per (series, stack, level) with ``ASSIGNMENT_COLUMNS``: the stack's nearest slice to the level
        point, its signed ``distance_mm`` along the stack's slice normal (point minus plane), the point's projected
        pixel ``x`` (column) / ``y`` (row) on that slice, ``inside`` (projection inside the image), and ``chosen``: True
        on the single row per level picked (smallest absolute distance among rows that are inside and within
        ``max_distance_mm``). A level with no chosen row could not be assigned (logged as a warning).
    """
    rows = []
    for series_id, stacks in axial_stacks.items():
        for stack_index, stack in enumerate(stacks):
            n_slices = int(stack.shape[0])
            step = slice_spacing_mm(stack.affine)
            for level, point in level_points_lps.items():
                if level not in vocab.LEVELS:
                    raise ValueError(f"unknown level {level!r}; expected one of {', '.join(vocab.LEVELS)}")
                distances = slice_plane_distances(stack.affine, n_slices, point)[0]
                nearest = int(np.argmin(np.abs(distances)))
                _, x, y = patient_to_pixel(stack.affine, np.asarray(point, float)[None, :])
                rows.append(dict(study_id=int(study_id), series_id=int(series_id), stack_index=stack_index,
                                 level=level, slice_index=nearest,
                                 instance_number=int(np.asarray(stack.instance_numbers)[nearest]),
                                 distance_mm=float(distances[nearest]), slice_step_mm=step, x=float(x[0]),
                                 y=float(y[0]), inside=bool(inside_image(stack.shape, x, y)[0]), chosen=False))
    table = pd.DataFrame(rows, columns=ASSIGNMENT_COLUMNS)
    if table.empty:
        log.warning("study %s: no axial stack to assign levels to", study_id)
        return table
    eligible = table["inside"] & (table["distance_mm"].abs() <= max_distance_mm)
    for level in level_points_lps:
        candidates = table[eligible & (table["level"] == level)]
        if candidates.empty:
            nearest = table[table["level"] == level]
            best = nearest.loc[nearest["distance_mm"].abs().idxmin()]
            log.warning("study %s level %s: no axial slice within %.1f mm (nearest: series %s stack %s slice %s "
                        "at %.1f mm, %s the image)", study_id, level, max_distance_mm, best.series_id,
                        best.stack_index, best.slice_index, best.distance_mm,
                        "inside" if best.inside else "outside")
            continue
        chosen = candidates["distance_mm"].abs().idxmin()
        table.loc[chosen, "chosen"] = True
        row = table.loc[chosen]
        log.info("study %s level %s -> axial series %s stack %s slice %s (instance %s), %.2f mm from the plane",
                 study_id, level, row.series_id, row.stack_index, row.slice_index, row.instance_number,
                 row.distance_mm)
    return table


def chosen_slices(assignment: pd.DataFrame) -> pd.DataFrame:
    """The chosen row per level of an :func:`assign_axial_levels` table, indexed by level (levels in order)."""
    chosen = assignment[assignment["chosen"]].set_index("level")
    return chosen.reindex([level for level in vocab.LEVELS if level in chosen.index])
