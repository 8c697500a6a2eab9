"""Axial level assignment on tilted, multi-stack and multi-series geometry built in memory."""

from __future__ import annotations

import logging

import numpy as np
import pytest

from radiospine import vocab
from radiospine.geometry import make_affine, slice_normal
from radiospine.io.volume import Volume
from radiospine.roi.axial import assign_axial_levels, chosen_slices

#: A lordotic lumbar canal: level points 38 mm apart, curving posteriorly towards the sacrum (LPS mm).
CANAL = {
    "l1_l2": np.array([1.0, 10.0, 0.0]),
    "l2_l3": np.array([1.5, 14.0, -38.0]),
    "l3_l4": np.array([2.0, 20.0, -75.0]),
    "l4_l5": np.array([2.0, 29.0, -111.0]),
    "l5_s1": np.array([1.5, 42.0, -145.0]),
}


def unit(v: np.ndarray) -> np.ndarray:
    return np.asarray(v, float) / np.linalg.norm(v)


def axial_stack(centre: np.ndarray, normal: np.ndarray, n_slices: int, step_mm: float, *, first_instance: int = 1,
                reverse_instances: bool = False, size_px: int = 64, pixel_mm: float = 3.0) -> Volume:
    """An axial-ish stack of ``n_slices`` whose middle slice's centre is ``centre``, slices along ``normal``."""
    normal = unit(normal)
    row_direction = unit(np.array([1.0, 0, 0]) - normal[0] * normal)  # columns grow to the patient's left
    column_direction = np.cross(normal, row_direction)  # rows grow posteriorly (row x column = normal)
    middle = (n_slices - 1) / 2
    half_fov = (size_px - 1) / 2 * pixel_mm
    origin = centre - middle * step_mm * normal - half_fov * row_direction - half_fov * column_direction
    affine = make_affine(origin, np.concatenate([row_direction, column_direction]), (pixel_mm, pixel_mm),
                         normal * step_mm)
    instances = np.arange(first_instance, first_instance + n_slices)
    if reverse_instances:
        instances = instances[::-1]
    return Volume(voxels=np.zeros((n_slices, size_px, size_px), np.float32), affine=affine,
                  instance_numbers=instances, study_id=7, series_id=0)


def canal_direction(level: str) -> np.ndarray:
    """Local direction of the canal at a level (towards the head), from its neighbours."""
    i = vocab.LEVELS.index(level)
    upper = CANAL[vocab.LEVELS[max(i - 1, 0)]]
    lower = CANAL[vocab.LEVELS[min(i + 1, 4)]]
    return unit(upper - lower)


def chosen(table) -> dict[str, tuple[int, int, int]]:
    return {level: (int(r.series_id), int(r.stack_index), int(r.slice_index))
            for level, r in chosen_slices(table).iterrows()}


def test_tilted_stacks_one_per_disc_in_one_series(caplog: pytest.LogCaptureFixture) -> None:
    # one 5-slice stack per disc, each tilted along the canal at its level; the middle slice hits the disc
    stacks = [axial_stack(CANAL[level], canal_direction(level), 5, 4.0,
                          first_instance=1 + 5 * i) for i, level in enumerate(vocab.LEVELS)]
    # really tilted differently
    assert not np.allclose(slice_normal(stacks[0].affine), slice_normal(stacks[4].affine), atol=0.05)
    with caplog.at_level(logging.INFO, logger="radiospine.roi.axial"):
        table = assign_axial_levels(7, CANAL, {501: stacks}, max_distance_mm=6.0)
    assert chosen(table) == {level: (501, i, 2) for i, level in enumerate(vocab.LEVELS)}
    picked = chosen_slices(table)
    assert np.allclose(picked["distance_mm"], 0.0, atol=1e-6)
    assert picked["instance_number"].tolist() == [3, 8, 13, 18, 23]
    assert len(table) == 25 and table["chosen"].sum() == 5
    assert "level l4_l5 -> axial series 501 stack 3 slice 2" in caplog.text


def test_several_axial_series_and_a_repeated_stack() -> None:
    # series 601 covers L1/L2..L3/L4 with one straight stack; series 602 covers L3/L4..L5/S1 in two stacks, the
    # second a repeat of the first shifted by 1 mm along z; a slice must be chosen on the one that fits best.
    upper = axial_stack(np.array([0.0, 15.0, -37.0]), [0, 0, 1.0], 23, 4.0)
    lower_a = axial_stack(np.array([0.0, 30.0, -115.0]), [0, 0, 1.0], 15, 4.0, first_instance=1, reverse_instances=True)
    lower_b = axial_stack(np.array([0.0, 30.0, -114.0]), [0, 0, 1.0], 15, 4.0, first_instance=16)
    table = assign_axial_levels(7, CANAL, {601: [upper], 602: [lower_a, lower_b]}, max_distance_mm=6.0)
    result = chosen(table)
    for level in ("l1_l2", "l2_l3"):
        assert result[level][0] == 601
    # L3/L4 (z = -75): series 601's slices sit at z = -37 + (k - 11) * 4, so the nearest is 2 mm away (k = 1 or 2);
    # series 602 ends at z = -87, 12 mm below
    row = chosen_slices(table).loc["l3_l4"]
    assert row.series_id == 601 and row.slice_index in (1, 2) and abs(row.distance_mm) == pytest.approx(2.0)
    # L4/L5 at z = -111: stack a has a slice at z = -111 exactly (k = 8), stack b is 1 mm off
    assert result["l4_l5"] == (602, 0, 8)
    assert chosen_slices(table).loc["l4_l5", "instance_number"] == 15 - 8  # reversed instance numbers
    # L5/S1 at z = -145: stack b at z = -114 + (k - 7) * 4 -> -146 at k = -1 (outside), stack a -143 at k = 0
    assert result["l5_s1"] == (602, 0, 0)
    np.testing.assert_allclose(chosen_slices(table).loc["l5_s1", "distance_mm"], -2.0, atol=1e-9)


def test_unreachable_level_is_left_unassigned_and_logged(caplog: pytest.LogCaptureFixture) -> None:
    stack = axial_stack(CANAL["l4_l5"], canal_direction("l4_l5"), 3, 4.0)
    # a stack whose FOV lies 200 mm to the patient's left: the L4/L5 plane is close but the point is outside
    far = axial_stack(CANAL["l4_l5"] + np.array([200.0, 0, 0]), canal_direction("l4_l5"), 3, 4.0)
    table = assign_axial_levels(7, CANAL, {1: [stack], 2: [far]}, max_distance_mm=6.0)
    assert chosen(table) == {"l4_l5": (1, 0, 1)}
    assert not table[(table["series_id"] == 2) & (table["level"] == "l4_l5")]["inside"].any()
    assert "level l1_l2: no axial slice within 6.0 mm" in caplog.text
    assert assign_axial_levels(7, CANAL, {}, max_distance_mm=6.0).empty
    with pytest.raises(ValueError, match="unknown level"):
        assign_axial_levels(7, {"l6_l7": np.zeros(3)}, {1: [stack]}, max_distance_mm=6.0)
