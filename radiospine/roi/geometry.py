"""Pixel <-> patient geometry of one series stack, plane distances and line/plane intersection.

Frames (see :mod:`radiospine.io.volume`): a *coordinate* in the competition files is ``(instance_number, x, y)``
with ``x`` the pixel column and ``y`` the pixel row of that instance; a *voxel point* is ``[slice, row, col]``
(``src``) where ``slice`` is the index along the stack's normal (not the instance number); a *patient point*
is LPS millimetres ``[x, y, z]`` (``lps``). Everything here is derived from the stack's 4x4 ``(col, row, slice, 1)``
-> LPS affine, so it works alike on a decoded :class:`~radiospine.io.volume.Volume` and on a header-only
``SeriesStack`` from :mod:`radiospine.io.dicom`.
"""

from __future__ import annotations

from typing import Protocol

import numpy as np

from radiospine.io.volume import patient_to_voxel, unit, voxel_to_patient


class StackGeometry(Protocol):
    """What geometry needs of a stack: a decoded ``Volume`` and a header-only ``SeriesStack`` both qualify.

    Attributes:
        affine: ``(4, 4)`` ``(col, row, slice, 1)`` -> LPS mm.
        instance_numbers: ``(slice,)`` instance number of each slice, in slice (normal) order.
        shape: ``(n_slices, n_rows, n_cols)``.
    """

    @property
    def affine(self) -> np.ndarray: ...

    @property
    def instance_numbers(self) -> np.ndarray: ...

    @property
    def shape(self) -> tuple[int, int, int]: ...


def stack_normal(affine: np.ndarray) -> np.ndarray:
    """Unit LPS normal of the image planes, pointing the way the slice index grows.

    Taken from the in-plane directions (row x column), so it is defined for a single-slice stack too.
    """
    affine = np.asarray(affine, dtype=float)
    normal = unit(np.cross(affine[:3, 0], affine[:3, 1]))
    return -normal if affine[:3, 2] @ normal < 0 else normal


def slice_step_mm(affine: np.ndarray) -> float:
    """Distance between neighbouring slice planes in mm (0 for a single-slice stack)."""
    return float(abs(np.asarray(affine, dtype=float)[:3, 2] @ stack_normal(affine)))


def slice_index_of_instance(stack: StackGeometry, instance_number: int) -> int:
    """The slice index of ``instance_number`` in ``stack``; ``KeyError`` when the stack lacks it."""
    hits = np.flatnonzero(np.asarray(stack.instance_numbers) == int(instance_number))
    if hits.size == 0:
        raise KeyError(f"instance {int(instance_number)} is not in this stack "
                       f"(instances {sorted(int(i) for i in stack.instance_numbers)[:3]}...)")
    return int(hits[0])


def find_stack(stacks: list, instance_number: int) -> int:
    """Index into ``stacks`` of the stack holding ``instance_number``; ``KeyError`` when none does."""
    for index, stack in enumerate(stacks):
        if np.any(np.asarray(stack.instance_numbers) == int(instance_number)):
            return index
    raise KeyError(f"instance {int(instance_number)} is in none of the series' {len(stacks)} stack(s)")


def pixel_to_patient(affine: np.ndarray, slice_index: np.ndarray, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Pixel ``(slice index, x = column, y = row)`` -> ``(n, 3)`` LPS mm. Inputs broadcast to ``(n,)``."""
    slice_index, x, y = np.broadcast_arrays(np.atleast_1d(np.asarray(slice_index, float)),
                                            np.atleast_1d(np.asarray(x, float)), np.atleast_1d(np.asarray(y, float)))
    return voxel_to_patient(affine, np.stack([slice_index, y, x], axis=1))


def patient_to_pixel(affine: np.ndarray, points_lps: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(n, 3)`` LPS mm -> fractional ``(slice index, x = column, y = row)``, each ``(n,)``."""
    src = patient_to_voxel(affine, points_lps)
    return src[:, 0], src[:, 2], src[:, 1]


def coordinate_to_patient(stack: StackGeometry, instance_number: int, x: float, y: float) -> np.ndarray:
    """A competition coordinate on ``stack`` -> ``(3,)`` LPS mm."""
    return pixel_to_patient(stack.affine, slice_index_of_instance(stack, instance_number), x, y)[0]


def slice_plane_distances(affine: np.ndarray, n_slices: int, points_lps: np.ndarray) -> np.ndarray:
    """Signed distance in mm from each point to each slice plane, along the stack normal.

    Returns:
        ``(n_points, n_slices)``: positive where the point lies on the side the slice index grows towards.
    """
    points_lps = np.atleast_2d(np.asarray(points_lps, dtype=float))
    normal = stack_normal(affine)
    origins = voxel_to_patient(affine, np.stack([np.arange(n_slices, dtype=float),
                                                 np.zeros(n_slices), np.zeros(n_slices)], axis=1))
    return (points_lps @ normal)[:, None] - (origins @ normal)[None, :]


def project_onto_slice(affine: np.ndarray, slice_index: int, points_lps: np.ndarray) -> np.ndarray:
    """Orthogonal projection of ``(n, 3)`` LPS points onto the plane of slice ``slice_index`` -> ``(n, 3)`` LPS."""
    points_lps = np.atleast_2d(np.asarray(points_lps, dtype=float))
    normal = stack_normal(affine)
    origin = voxel_to_patient(affine, np.array([[slice_index, 0.0, 0.0]]))[0]
    return points_lps - ((points_lps - origin) @ normal)[:, None] * normal[None, :]


def line_plane_intersection(line_point: np.ndarray, line_direction: np.ndarray, plane_point: np.ndarray,
                            plane_normal: np.ndarray) -> np.ndarray | None:
    """Where the line ``line_point + t * line_direction`` crosses the plane; ``None`` when they are parallel.

    All arguments are ``(3,)`` LPS mm (directions need not be unit length); returns ``(3,)`` LPS mm.
    """
    line_point, line_direction = np.asarray(line_point, float), np.asarray(line_direction, float)
    plane_normal = np.asarray(plane_normal, float)
    denominator = float(line_direction @ plane_normal)
    if abs(denominator) < 1e-9 * np.linalg.norm(line_direction) * np.linalg.norm(plane_normal):
        return None
    t = float((np.asarray(plane_point, float) - line_point) @ plane_normal) / denominator
    return line_point + t * line_direction


def polyline_plane_intersection(points_lps: np.ndarray, plane_point: np.ndarray,
                                plane_normal: np.ndarray) -> np.ndarray | None:
    """Where an ordered polyline (e.g. the canal points from L1/L2 down to L5/S1) crosses a plane.

    The segment whose end points lie on opposite sides of the plane is intersected; when no segment crosses it,
    the nearest end segment is extended. Returns ``(3,)`` LPS mm, or ``None`` for fewer than two points or a
    polyline parallel to the plane.
    """
    points_lps = np.atleast_2d(np.asarray(points_lps, dtype=float))
    if len(points_lps) < 2:
        return None
    signed = (points_lps - np.asarray(plane_point, float)) @ unit(plane_normal)
    for i in range(len(points_lps) - 1):
        if signed[i] == 0:
            return points_lps[i].copy()
        if signed[i] * signed[i + 1] < 0:
            return line_plane_intersection(points_lps[i], points_lps[i + 1] - points_lps[i], plane_point,
                                           plane_normal)
    if signed[-1] == 0:
        return points_lps[-1].copy()
    segment = 0 if abs(signed[0]) < abs(signed[-1]) else len(points_lps) - 2
    return line_plane_intersection(points_lps[segment], points_lps[segment + 1] - points_lps[segment], plane_point,
                                   plane_normal)


def polyline_crossing_on_slice(affine: np.ndarray, slice_index: int, points_lps: np.ndarray) -> np.ndarray:
    """Where an ordered polyline (the canal points from L1/L2 down) crosses the plane of a stack slice.

    With a single point, or a polyline parallel to the plane, the point nearest the plane projected onto it.
    ``points_lps``: ``(n >= 1, 3)`` LPS mm; returns ``(3,)`` LPS mm on the slice plane.
    """
    points_lps = np.atleast_2d(np.asarray(points_lps, dtype=float))
    normal = stack_normal(affine)
    plane_point = voxel_to_patient(affine, np.array([[slice_index, 0.0, 0.0]]))[0]
    hit = polyline_plane_intersection(points_lps, plane_point, normal) if len(points_lps) > 1 else None
    if hit is None:
        nearest = points_lps[np.argmin(np.abs((points_lps - plane_point) @ normal))]
        hit = project_onto_slice(affine, slice_index, nearest[None, :])[0]
    return hit


def in_plane_distance(affine: np.ndarray, a_lps: np.ndarray, b_lps: np.ndarray) -> np.ndarray:
    """Distance in mm between ``(n, 3)`` points after removing the component along the stack normal -> ``(n,)``."""
    normal = stack_normal(affine)
    delta = np.atleast_2d(np.asarray(a_lps, float) - np.asarray(b_lps, float))
    return np.linalg.norm(delta - (delta @ normal)[:, None] * normal[None, :], axis=1)


def inside_image(shape: tuple[int, int, int], x: np.ndarray, y: np.ndarray, margin_px: float = 0.0) -> np.ndarray:
    """Whether fractional pixel positions lie inside the ``(n_slices, n_rows, n_cols)`` image plane."""
    _, rows, cols = shape
    x, y = np.asarray(x, float), np.asarray(y, float)
    return ((x >= -0.5 - margin_px) & (x <= cols - 0.5 + margin_px)
            & (y >= -0.5 - margin_px) & (y <= rows - 0.5 + margin_px))
