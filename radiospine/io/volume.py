"""The image type that flows between stages, and its geometry.

Frames and conventions (one source of truth: the affine)
---------------------------------------------------------
* Voxel arrays are ``(slice, row, col)``: ``voxels[k, j, i]``.
* Voxel *points* are given in the same order, as ``(n, 3)`` float arrays ``[slice, row, col]``
  (``src`` in names: "slice-row-col"). Fractional values are allowed; integer values are voxel centres.
* Patient points are ``(n, 3)`` float arrays in DICOM patient LPS millimetres ``[x, y, z]``
  (``lps`` in names): +x towards the patient's left, +y posterior, +z head.
* ``affine`` is the 4x4 matrix that maps homogeneous ``(col, row, slice, 1)`` to LPS mm, exactly the
  DICOM image-plane equation: column 0 is ``IOP[0:3] * column_spacing``, column 1 is
  ``IOP[3:6] * row_spacing``, column 2 is the slice step vector, column 3 is the first slice's
  ``ImagePositionPatient``. DICOM ``PixelSpacing`` is ``[row spacing, column spacing]``: row spacing
  is the distance between rows (along a column, the y of the image), column spacing the distance between
  columns.

Spacing, origin and directions are derived from the affine, never stored twice.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass(frozen=True, eq=False)
class Volume:
    """A stack of parallel MR slices with its geometry.

    Attributes:
        voxels: ``(slice, row, col)`` float32 intensities after rescale slope/intercept.
        affine: ``(4, 4)`` float64, homogeneous ``(col, row, slice, 1)`` -> patient LPS mm.
        instance_numbers: ``(slice,)`` int64, the DICOM InstanceNumber of each slice (ordered along the
            slice normal, which need not be the instance-number order).
        study_id, series_id: the series' identity.
        stack_index: which stack of the series (a series may hold several stacks, e.g. one per disc).
        description: the series description (``"Sagittal T1"`` ...), ``""`` when unknown.
    """

    voxels: np.ndarray
    affine: np.ndarray
    instance_numbers: np.ndarray
    study_id: int
    series_id: int
    stack_index: int = 0
    description: str = ""
    source_paths: tuple[str, ...] = field(default=(), repr=False)

    def __post_init__(self) -> None:
        if self.voxels.ndim != 3:
            raise ValueError(f"voxels must be (slice, row, col), got shape {self.voxels.shape}")
        if self.affine.shape != (4, 4):
            raise ValueError(f"affine must be 4x4, got {self.affine.shape}")
        if len(self.instance_numbers) != self.voxels.shape[0]:
            raise ValueError(
                f"{len(self.instance_numbers)} instance numbers for {self.voxels.shape[0]} slices "
                f"(study {self.study_id}, series {self.series_id})"
            )

    # --- derived geometry -------------------------------------------------------------------
    @property
    def shape(self) -> tuple[int, int, int]:
        """``(n_slices, n_rows, n_cols)``."""
        return tuple(self.voxels.shape)  # type: ignore[return-value]

    @property
    def spacing(self) -> np.ndarray:
        """``[slice_step, row_spacing, col_spacing]`` in mm, in voxel-array order."""
        return affine_spacing(self.affine)

    @property
    def origin(self) -> np.ndarray:
        """LPS mm of the centre of voxel ``[0, 0, 0]``."""
        return self.affine[:3, 3].copy()

    @property
    def row_direction(self) -> np.ndarray:
        """Unit LPS vector along which the column index grows (DICOM IOP[0:3])."""
        return unit(self.affine[:3, 0])

    @property
    def column_direction(self) -> np.ndarray:
        """Unit LPS vector along which the row index grows (DICOM IOP[3:6])."""
        return unit(self.affine[:3, 1])

    @property
    def normal(self) -> np.ndarray:
        """Unit LPS vector along which the slice index grows."""
        return unit(self.affine[:3, 2])

    def voxel_to_patient(self, points_src: np.ndarray) -> np.ndarray:
        """``(n, 3)`` [slice, row, col] -> ``(n, 3)`` LPS mm."""
        return voxel_to_patient(self.affine, points_src)

    def patient_to_voxel(self, points_lps: np.ndarray) -> np.ndarray:
        """``(n, 3)`` LPS mm -> ``(n, 3)`` fractional [slice, row, col]."""
        return patient_to_voxel(self.affine, points_lps)

    def slice_index_of_instance(self, instance_number: int) -> int:
        """The slice index holding ``instance_number``; ``KeyError`` naming the series if absent."""
        hits = np.flatnonzero(self.instance_numbers == int(instance_number))
        if hits.size == 0:
            raise KeyError(
                f"instance {instance_number} is not in study {self.study_id} series {self.series_id} "
                f"stack {self.stack_index} (instances {self.instance_numbers.min()}..{self.instance_numbers.max()})"
            )
        return int(hits[0])


# --- geometry functions (shared by the reader, the ROI code and the synthetic generator) ---------

def unit(vector: np.ndarray) -> np.ndarray:
    vector = np.asarray(vector, dtype=float)
    norm = np.linalg.norm(vector)
    if norm == 0:
        raise ValueError("zero-length direction vector")
    return vector / norm


def affine_spacing(affine: np.ndarray) -> np.ndarray:
    """``[slice_step, row_spacing, col_spacing]`` mm of a ``(col, row, slice)`` affine."""
    lengths = np.linalg.norm(np.asarray(affine)[:3, :3], axis=0)  # col, row, slice
    return lengths[::-1].copy()


def make_affine(
    image_position: np.ndarray,
    image_orientation: np.ndarray,
    pixel_spacing_row_col: tuple[float, float],
    slice_step_vector: np.ndarray,
) -> np.ndarray:
    """The 4x4 ``(col, row, slice, 1)`` -> LPS affine from DICOM-style tags.

    Args:
        image_position: ``ImagePositionPatient`` of the first slice (LPS mm of pixel (row 0, col 0)).
        image_orientation: ``ImageOrientationPatient``, 6 values: row direction then column direction.
        pixel_spacing_row_col: DICOM ``PixelSpacing``: ``(row spacing, column spacing)`` mm.
        slice_step_vector: LPS mm vector from one slice's origin to the next slice's.
    """
    orientation = np.asarray(image_orientation, dtype=float).reshape(2, 3)
    row_spacing, col_spacing = (float(v) for v in pixel_spacing_row_col)
    affine = np.eye(4)
    affine[:3, 0] = unit(orientation[0]) * col_spacing
    affine[:3, 1] = unit(orientation[1]) * row_spacing
    affine[:3, 2] = np.asarray(slice_step_vector, dtype=float)
    affine[:3, 3] = np.asarray(image_position, dtype=float)
    return affine


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
