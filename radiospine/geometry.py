"""Geometry of MR slice stacks: the one home of pixel <-> patient transforms, normals, spacings and plane maths.

Conventions (stated here once; every other module refers to them)
------------------------------------------------------------------
* **Patient frame**: DICOM patient LPS millimetres ``[x, y, z]``: +x towards the patient's left, +y posterior,
  +z towards the head. Patient points are ``(n, 3)`` float arrays (``lps`` in names).
* **Voxel index order**: voxel arrays are ``(slice, row, col)``: ``voxels[k, j, i]``. Voxel *points* use the
  same order, as ``(n, 3)`` float arrays ``[slice, row, col]`` (``src`` in names: "slice-row-col"); fractional
  values are allowed, integer values are voxel centres. ``slice`` is the index along the stack (slices are
  ordered along the slice normal), never the InstanceNumber.
* **Pixel coordinates** of the competition files: ``(instance_number, x, y)`` with ``x`` the pixel *column* and
  ``y`` the pixel *row* of that instance (:func:`pixel_to_patient`, :func:`coordinate_to_patient`).
* **PixelSpacing** (DICOM) is ``[row spacing, column spacing]``: row spacing is the distance between rows (along
  a column, the image's y), column spacing the distance between columns.
* **Affine**: a stack's geometry is one ``(4, 4)`` float64 matrix mapping homogeneous ``(col, row, slice, 1)`` to
  LPS mm, exactly the DICOM image-plane equation: column 0 is ``IOP[0:3] * column_spacing``, column 1 is
  ``IOP[3:6] * row_spacing``, column 2 is the slice step vector, column 3 is the first slice's
  ``ImagePositionPatient``. Spacings, origins and directions are derived from it, never stored twice.

Three directions that are all loosely called "the normal" (each has its own name here, all ``(3,)`` LPS):

* :func:`image_plane_normal`: the unit normal of the image plane from ``ImageOrientationPatient``,
  ``IOP[0:3] x IOP[3:6]`` (right-handed with the row and column directions); fixed by the orientation alone,
  whatever order the slices are in. The DICOM reader orders a stack's slices by their position along it.
* :func:`slice_normal`: the unit normal of a stack's slice planes, signed so that it points the way the slice
  index grows (``image_plane_normal`` or its negation). Distances between points and slice planes, and
  projections onto them, are measured along it.
* :func:`slice_step_vector`: the vector in mm from one slice's origin to the next (affine column 2). For a
  sheared stack (gantry tilt) it is oblique to the planes: its length is not the plane spacing
  (:func:`slice_spacing_mm` is).

Every function takes the affine (or a stack: anything with ``affine``, ``instance_numbers`` and ``shape``, see
:class:`StackGeometry`), so it works alike on a decoded :class:`~radiospine.io.volume.Volume` and on a
header-only ``SeriesStack``.
"""

from __future__ import annotations

from typing import Protocol

import numpy as np


class StackGeometry(Protocol):
    """What geometry needs of a stack: a decoded ``Volume`` and a header-only ``SeriesStack`` both qualify.

    Attributes:
        affine: ``(4, 4)`` ``(col, row, slice, 1)`` -> LPS mm.
        instance_numbers: ``(slice,)`` instance number of each slice, in slice order.
        shape: ``(n_slices, n_rows, n_cols)``.
    """

    @property
    def affine(self) -> np.ndarray: ...

    @property
    def instance_numbers(self) -> np.ndarray: ...

    @property
    def shape(self) -> tuple[int, int, int]: ...


# --- directions and spacings ---------------------------------------------------------------------------------------

def unit(vector: np.ndarray) -> np.ndarray:
    """``vector`` scaled to length 1 (float); ``ValueError`` for a zero vector."""
    vector = np.asarray(vector, dtype=float)
    norm = np.linalg.norm(vector)
    if norm == 0:
        raise ValueError("zero-length direction vector")
    return vector / norm


def image_plane_normal(orientation) -> np.ndarray:
    """``(3,)`` unit LPS normal ``IOP[0:3] x IOP[3:6]`` of the image plane of an ``ImageOrientationPatient``.

    Args:
        orientation: the 6 direction cosines (row direction, then column direction).
    """
    row_direction, column_direction = np.reshape(np.asarray(orientation, dtype=float), (2, 3))
    return unit(np.cross(row_direction, column_direction))


def slice_normal(affine: np.ndarray) -> np.ndarray:
    """``(3,)`` unit LPS normal of a stack's slice planes, pointing the way the slice index grows.

    Taken from the in-plane directions (row x column), so it is defined for a single-slice stack too.
    """
    affine = np.asarray(affine, dtype=float)
    normal = unit(np.cross(affine[:3, 0], affine[:3, 1]))
    return -normal if affine[:3, 2] @ normal < 0 else normal


def slice_step_vector(affine: np.ndarray) -> np.ndarray:
    """``(3,)`` LPS mm from the origin of slice ``k`` to that of slice ``k + 1`` (affine column 2; a copy)."""
    return np.asarray(affine, dtype=float)[:3, 2].copy()


def slice_spacing_mm(affine: np.ndarray) -> float:
    """Distance in mm between neighbouring slice planes, along :func:`slice_normal` (0 for a single-slice stack)."""
    return float(abs(np.asarray(affine, dtype=float)[:3, 2] @ slice_normal(affine)))


def pixel_spacing(affine: np.ndarray) -> tuple[float, float]:
    """In-plane ``(row spacing, column spacing)`` mm of a stack (the DICOM ``PixelSpacing`` order)."""
    affine = np.asarray(affine, dtype=float)
    return float(np.linalg.norm(affine[:3, 1])), float(np.linalg.norm(affine[:3, 0]))


def row_direction(affine: np.ndarray) -> np.ndarray:
    """``(3,)`` unit LPS direction along which the column index grows (DICOM ``IOP[0:3]``)."""
    return unit(np.asarray(affine, dtype=float)[:3, 0])


def column_direction(affine: np.ndarray) -> np.ndarray:
    """``(3,)`` unit LPS direction along which the row index grows (DICOM ``IOP[3:6]``)."""
    return unit(np.asarray(affine, dtype=float)[:3, 1])


# --- the affine and its transforms ---------------------------------------------------------------------------------

def make_affine(
    image_position: np.ndarray,
    image_orientation: np.ndarray,
    pixel_spacing_row_col: tuple[float, float],
    slice_step: np.ndarray,
) -> np.ndarray:
    """The ``(4, 4)`` ``(col, row, slice, 1)`` -> LPS affine from DICOM-style tags.

    Args:
        image_position: ``ImagePositionPatient`` of the first slice (LPS mm of pixel (row 0, col 0)).
        image_orientation: ``ImageOrientationPatient``, 6 values: row direction then column direction.
        pixel_spacing_row_col: DICOM ``PixelSpacing``: ``(row spacing, column spacing)`` mm.
        slice_step: ``(3,)`` LPS mm vector from one slice's origin to the next slice's (the slice step vector).
    """
    orientation = np.asarray(image_orientation, dtype=float).reshape(2, 3)
    row_spacing, col_spacing = (float(v) for v in pixel_spacing_row_col)
    affine = np.eye(4)
    affine[:3, 0] = unit(orientation[0]) * col_spacing
    affine[:3, 1] = unit(orientation[1]) * row_spacing
    affine[:3, 2] = np.asarray(slice_step, dtype=float)
    affine[:3, 3] = np.asarray(image_position, dtype=float)
    return affine


def sub_stack_affine(affine: np.ndarray, first_slice: int) -> np.ndarray:
    """The affine of the slices from ``first_slice`` on: its slice 0 is slice ``first_slice`` of ``affine``.

    A ``(4, 4)`` copy with the origin moved ``first_slice`` slice steps along :func:`slice_step_vector`.
    """
    shifted = np.array(affine, dtype=float)
    shifted[:3, 3] += first_slice * shifted[:3, 2]
    return shifted


def voxel_to_patient(affine: np.ndarray, points_src: np.ndarray) -> np.ndarray:
    """``(n, 3)`` [slice, row, col] -> ``(n, 3)`` LPS mm through a ``(col, row, slice)`` affine."""
    points_src = np.atleast_2d(np.asarray(points_src, dtype=float))
    crs = points_src[:, ::-1]
    return crs @ affine[:3, :3].T + affine[:3, 3]


def patient_to_voxel(affine: np.ndarray, points_lps: np.ndarray) -> np.ndarray:
    """``(n, 3)`` LPS mm -> ``(n, 3)`` fractional [slice, row, col] (the inverse of :func:`voxel_to_patient`)."""
    points_lps = np.atleast_2d(np.asarray(points_lps, dtype=float))
    crs = np.linalg.solve(affine[:3, :3], (points_lps - affine[:3, 3]).T).T
    return crs[:, ::-1]


def pixel_to_patient(affine: np.ndarray, slice_index: np.ndarray, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Pixel ``(slice index, x = column, y = row)`` -> ``(n, 3)`` LPS mm. Inputs broadcast to ``(n,)``."""
    slice_index, x, y = np.broadcast_arrays(np.atleast_1d(np.asarray(slice_index, float)),
                                            np.atleast_1d(np.asarray(x, float)), np.atleast_1d(np.asarray(y, float)))
    return voxel_to_patient(affine, np.stack([slice_index, y, x], axis=1))


def patient_to_pixel(affine: np.ndarray, points_lps: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(n, 3)`` LPS mm -> fractional ``(slice index, x = column, y = row)``, each ``(n,)``."""
    src = patient_to_voxel(affine, points_lps)
    return src[:, 0], src[:, 2], src[:, 1]


def slice_origin(affine: np.ndarray, slice_index: float) -> np.ndarray:
    """``(3,)`` LPS mm of pixel (row 0, col 0) of slice ``slice_index`` (a point on that slice's plane)."""
    return voxel_to_patient(affine, np.array([[slice_index, 0.0, 0.0]]))[0]


def slice_centre(affine: np.ndarray, shape: tuple[int, int, int], slice_index: float) -> np.ndarray:
    """``(3,)`` LPS mm of the centre of the image of slice ``slice_index`` of a ``(n_slices, rows, cols)`` stack."""
    _, rows, cols = shape
    return voxel_to_patient(affine, np.array([[slice_index, (rows - 1) / 2, (cols - 1) / 2]]))[0]


# --- instances -----------------------------------------------------------------------------------------------------

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


def coordinate_to_patient(stack: StackGeometry, instance_number: int, x: float, y: float) -> np.ndarray:
    """A competition coordinate on ``stack`` -> ``(3,)`` LPS mm."""
    return pixel_to_patient(stack.affine, slice_index_of_instance(stack, instance_number), x, y)[0]


def inside_image(shape: tuple[int, int, int], x: np.ndarray, y: np.ndarray, margin_px: float = 0.0) -> np.ndarray:
    """Whether fractional pixel positions lie inside the ``(n_slices, n_rows, n_cols)`` image plane."""
    _, rows, cols = shape
    x, y = np.asarray(x, float), np.asarray(y, float)
    return ((x >= -0.5 - margin_px) & (x <= cols - 0.5 + margin_px)
            & (y >= -0.5 - margin_px) & (y <= rows - 0.5 + margin_px))


# --- planes --------------------------------------------------------------------------------------------------------

def slice_plane_distances(affine: np.ndarray, n_slices: int, points_lps: np.ndarray) -> np.ndarray:
    """Signed distance in mm from each point to each slice plane, along :func:`slice_normal`.

    Returns:
        ``(n_points, n_slices)``: positive where the point lies on the side the slice index grows towards.
    """
    points_lps = np.atleast_2d(np.asarray(points_lps, dtype=float))
    normal = slice_normal(affine)
    origins = voxel_to_patient(affine, np.stack([np.arange(n_slices, dtype=float),
                                                 np.zeros(n_slices), np.zeros(n_slices)], axis=1))
    return (points_lps @ normal)[:, None] - (origins @ normal)[None, :]


def project_onto_slice(affine: np.ndarray, slice_index: int, points_lps: np.ndarray) -> np.ndarray:
    """Orthogonal projection of ``(n, 3)`` LPS points onto the plane of slice ``slice_index`` -> ``(n, 3)`` LPS."""
    points_lps = np.atleast_2d(np.asarray(points_lps, dtype=float))
    normal = slice_normal(affine)
    origin = slice_origin(affine, slice_index)
    return points_lps - ((points_lps - origin) @ normal)[:, None] * normal[None, :]


def in_plane_distance(affine: np.ndarray, a_lps: np.ndarray, b_lps: np.ndarray) -> np.ndarray:
    """Distance in mm between ``(n, 3)`` points after removing the component along :func:`slice_normal` -> ``(n,)``."""
    normal = slice_normal(affine)
    delta = np.atleast_2d(np.asarray(a_lps, float) - np.asarray(b_lps, float))
    return np.linalg.norm(delta - (delta @ normal)[:, None] * normal[None, :], axis=1)


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
    normal = slice_normal(affine)
    plane_point = slice_origin(affine, slice_index)
    hit = polyline_plane_intersection(points_lps, plane_point, normal) if len(points_lps) > 1 else None
    if hit is None:
        nearest = points_lps[np.argmin(np.abs((points_lps - plane_point) @ normal))]
        hit = project_onto_slice(affine, slice_index, nearest[None, :])[0]
    return hit
