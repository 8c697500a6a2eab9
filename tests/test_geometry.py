"""The geometry API: the three directions called "normal", spacings, sub-stacks and slice centres."""

from __future__ import annotations

import numpy as np

from radiospine.geometry import (
    image_plane_normal,
    make_affine,
    pixel_spacing,
    slice_centre,
    slice_normal,
    slice_spacing_mm,
    slice_step_vector,
    sub_stack_affine,
    voxel_to_patient,
)

#: A sagittal image plane: columns grow posteriorly (+y), rows towards the feet (-z); IOP normal = +y x -z = -x.
ORIENTATION = np.array([0.0, 1.0, 0.0, 0.0, 0.0, -1.0])


def test_the_three_normals_differ_as_documented() -> None:
    plane = image_plane_normal(ORIENTATION)
    np.testing.assert_allclose(plane, [-1.0, 0.0, 0.0])
    # slices stored towards +x (against the IOP normal), with a sheared step (gantry tilt) of 1 mm along +y
    step = np.array([4.0, 1.0, 0.0])
    affine = make_affine(np.zeros(3), ORIENTATION, (0.5, 0.8), step)
    np.testing.assert_allclose(slice_normal(affine), [1.0, 0.0, 0.0])  # follows the slice index, not the IOP
    np.testing.assert_allclose(slice_step_vector(affine), step)  # oblique to the planes
    assert slice_spacing_mm(affine) == 4.0  # plane spacing, not the step's length
    assert np.linalg.norm(slice_step_vector(affine)) > 4.0
    assert pixel_spacing(affine) == (0.5, 0.8)  # (row, column), as DICOM PixelSpacing


def test_sub_stack_and_slice_centre() -> None:
    affine = make_affine(np.array([1.0, 2.0, 3.0]), ORIENTATION, (0.5, 0.8), np.array([-4.0, 0.0, 0.0]))
    part = sub_stack_affine(affine, 3)
    points = np.array([[0.0, 5.0, 7.0], [2.0, 1.0, 0.0]])
    np.testing.assert_allclose(voxel_to_patient(part, points), voxel_to_patient(affine, points + [3, 0, 0]))
    assert affine[0, 3] == 1.0  # the input is not modified
    np.testing.assert_allclose(slice_centre(affine, (6, 11, 21), 2), voxel_to_patient(affine, [[2, 5, 10]])[0])
