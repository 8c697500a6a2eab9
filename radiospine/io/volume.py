"""The image type that flows between stages: a stack of decoded slices with its geometry.

Its geometry is one affine; the frames, the voxel order and every derived quantity (normals, spacings,
pixel <-> patient transforms, slice indices of instances) are defined once, in :mod:`radiospine.geometry`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass(frozen=True, eq=False)
class Volume:
    """A stack of parallel MR slices with its geometry.

    Attributes:
        voxels: ``(slice, row, col)`` float32 intensities after rescale slope/intercept.
        affine: ``(4, 4)`` float64, homogeneous ``(col, row, slice, 1)`` -> patient LPS mm
            (:mod:`radiospine.geometry`).
        instance_numbers: ``(slice,)`` int64, the DICOM InstanceNumber of each slice (ordered along the
            image plane normal, which need not be the instance-number order).
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

    @property
    def shape(self) -> tuple[int, int, int]:
        """``(n_slices, n_rows, n_cols)``."""
        return tuple(self.voxels.shape)  # type: ignore[return-value]
