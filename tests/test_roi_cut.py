"""ROI placement and cutting on in-memory volumes with oblique geometry and non-square pixels."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from radiospine import vocab
from radiospine.config import RoiConfig
from radiospine.errors import RoiError
from radiospine.geometry import (
    coordinate_to_patient,
    line_plane_intersection,
    make_affine,
    patient_to_pixel,
    pixel_to_patient,
    polyline_plane_intersection,
    slice_plane_distances,
)
from radiospine.io.volume import Volume
from radiospine.roi.cut import (
    NO_COORDINATE,
    cut_roi,
    neighbour_indices,
    normalise_intensity,
    odd_pixels,
    place_rois,
)


def rotation(axis: np.ndarray, degrees: float) -> np.ndarray:
    axis = np.asarray(axis, float) / np.linalg.norm(axis)
    angle = np.deg2rad(degrees)
    k = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    return np.eye(3) + np.sin(angle) * k + (1 - np.cos(angle)) * k @ k


def oblique_sagittal_volume(*, blobs: list[tuple[int, float, float]], series_id: int = 11,
                            instance_numbers: np.ndarray | None = None) -> Volume:
    """15 slices of 300 rows x 260 cols, row spacing 0.6 mm, column spacing 0.45 mm, tilted 12 and 7 degrees.

    ``blobs`` are (slice index, x = column, y = row) of small bright Gaussian spots (sigma 1.5 mm).
    """
    turn = rotation([1, 0.3, 0.2], 12) @ rotation([0, 0, 1], 7)
    row_direction = turn @ np.array([0.0, 1.0, 0.0])      # columns grow posteriorly
    column_direction = turn @ np.array([0.0, 0.0, -1.0])  # rows grow towards the feet
    normal = np.cross(row_direction, column_direction)
    affine = make_affine(np.array([-30.0, -80.0, 90.0]), np.concatenate([row_direction, column_direction]),
                         (0.6, 0.45), normal * 4.0 + row_direction * 0.3)  # a slightly sheared slice step
    n_slices, n_rows, n_cols = 15, 300, 260
    rows_mm = np.arange(n_rows)[:, None] * 0.6
    cols_mm = np.arange(n_cols)[None, :] * 0.45
    voxels = np.full((n_slices, n_rows, n_cols), 100.0, np.float32)
    for k, x, y in blobs:
        voxels[k] += 1000.0 * np.exp(-((rows_mm - y * 0.6) ** 2 + (cols_mm - x * 0.45) ** 2) / (2 * 1.5**2))
    if instance_numbers is None:
        instance_numbers = np.arange(n_slices, 0, -1) + 4  # instance numbers run against the normal
    return Volume(voxels=voxels, affine=affine, instance_numbers=np.asarray(instance_numbers, np.int64),
                  study_id=1, series_id=series_id, description=vocab.SAGITTAL_T2)


def coords_frame(rows: list[dict]) -> pd.DataFrame:
    return pd.DataFrame(rows, columns=["study_id", "series_id", "instance_number", "condition", "level", "x", "y"])


def test_pixel_patient_round_trip_and_plane_distances() -> None:
    volume = oblique_sagittal_volume(blobs=[])
    slice_index, x, y = np.array([0, 3, 14]), np.array([10.0, 130.25, 250.5]), np.array([5.0, 150.75, 299.0])
    lps = pixel_to_patient(volume.affine, slice_index, x, y)
    back = patient_to_pixel(volume.affine, lps)
    np.testing.assert_allclose(np.stack(back), np.stack([slice_index, x, y]), atol=1e-9)
    distances = slice_plane_distances(volume.affine, 15, lps)
    # each point lies in its own slice plane; slice planes are 4 mm apart along the normal
    np.testing.assert_allclose(distances[np.arange(3), slice_index], 0.0, atol=1e-9)
    np.testing.assert_allclose(np.diff(distances[0]), -4.0, atol=1e-9)
    instance = int(volume.instance_numbers[3])
    np.testing.assert_allclose(coordinate_to_patient(volume, instance, 130.25, 150.75), lps[1])


def test_line_and_polyline_plane_intersection() -> None:
    hit = line_plane_intersection(np.array([0.0, 0, 10]), np.array([1.0, 0, -1]), np.zeros(3), np.array([0, 0, 1.0]))
    np.testing.assert_allclose(hit, [10, 0, 0])
    assert line_plane_intersection(np.zeros(3), np.array([1.0, 0, 0]), np.ones(3), np.array([0, 0, 1.0])) is None
    line = np.array([[0.0, 0, 0], [0, 10, -40], [0, 30, -80]])
    np.testing.assert_allclose(polyline_plane_intersection(line, np.array([0, 0, -60.0]), np.array([0, 0, 1.0])),
                               [0, 20, -60])
    # beyond the end: the last segment is extended
    np.testing.assert_allclose(polyline_plane_intersection(line, np.array([0, 0, -100.0]), np.array([0, 0, 1.0])),
                               [0, 40, -100])


@pytest.mark.parametrize("pixel_mm", [0.5, 0.8, 0.3])
def test_roi_centre_lands_on_the_coordinate_within_a_pixel(pixel_mm: float) -> None:
    blob = (6, 131.3, 142.7)  # slice index, x (column), y (row)
    volume = oblique_sagittal_volume(blobs=[blob, (6, 131.3, 175.0)])
    instance = int(volume.instance_numbers[blob[0]])
    coords = coords_frame([dict(study_id=1, series_id=11, instance_number=instance,
                                condition=vocab.SPINAL, level="l3_l4", x=blob[1], y=blob[2])])
    config = RoiConfig(pixel_mm=pixel_mm, neighbour_slices=2, canal_on_axial=False, normalise_percentiles=(0, 100))
    rois, failures = place_rois(1, coords, {11: [volume]}, config)
    assert len(rois) == 1
    roi = rois[0]
    assert roi.slice_indices == (4, 5, 6, 7, 8) and roi.view == "sagittal_t2" and roi.source == "label"
    assert {(f.condition, f.level) for f in failures} == {
        (c, lv) for c in vocab.CONDITIONS for lv in vocab.LEVELS} - {(vocab.SPINAL, "l3_l4")}
    assert all(f.reason == NO_COORDINATE for f in failures)

    slices = normalise_intensity(volume.voxels[list(roi.slice_indices)], config.normalise_percentiles)
    crop = cut_roi(roi, slices, volume.affine, config)
    h, w = crop.image.shape[1:]
    assert h == w == odd_pixels(48.0, pixel_mm) and h % 2 == 1
    assert crop.image.shape[0] == 5 and crop.mask.shape == crop.image.shape
    assert crop.pixel_mm == pixel_mm and crop.slice_mm == pytest.approx(4.0)
    centre = crop.image[2]
    # the spot's intensity-weighted centroid sits on the crop's centre pixel (within one output pixel)
    spot = np.where(centre > 0.5 * centre.max(), centre, 0.0)
    spot[int(h * 0.7):] = 0.0  # leave out the second spot (32 mm further down the image)
    rows, cols = np.indices(spot.shape)
    centroid = np.array([(rows * spot).sum(), (cols * spot).sum()]) / spot.sum()
    assert np.abs(centroid - [(h - 1) / 2, (w - 1) / 2]).max() < 1.0
    # rows follow the image's rows: the second spot, further down the image, is further down the crop
    second = crop.image[2].copy()
    second[: int(h * 0.7)] = 0
    assert np.unravel_index(second.argmax(), second.shape)[0] == pytest.approx((h - 1) / 2 + 32.3 * 0.6 / pixel_mm,
                                                                               abs=1.5)
    # neighbouring slices hold no spot: it was on the centre slice only
    assert crop.image[0].max() < 0.5 * centre.max()
    # the disc mask: 16 mm across, centred
    assert crop.mask[2, (h - 1) // 2, (w - 1) // 2] == 1
    assert crop.mask[2].sum() * pixel_mm**2 == pytest.approx(np.pi * 8.0**2, rel=0.08)


def test_crop_leaving_the_image_is_zero_outside_and_masked() -> None:
    volume = oblique_sagittal_volume(blobs=[(2, 3.0, 4.0)])
    coords = coords_frame([dict(study_id=1, series_id=11, instance_number=int(volume.instance_numbers[2]),
                                condition="left_neural_foraminal_narrowing", level="l1_l2", x=3.0, y=4.0)])
    config = RoiConfig(canal_on_axial=False)
    (roi,), _ = place_rois(1, coords, {11: [volume]}, config)
    assert roi.view == "sagittal_t1" and roi.slice_indices == (1, 2, 3)
    crop = cut_roi(roi, normalise_intensity(volume.voxels[[1, 2, 3]], (1, 99.5)), volume.affine, config)
    h, w = crop.mask.shape[1:]
    assert crop.image[1, 0, 0] == 0.0 and crop.mask[1, 0, 0] == 0  # above-left of the image corner
    assert crop.mask[1, h // 2, w // 2] == 1 and crop.mask[1].sum() < roi_mask_area(12.0, crop.pixel_mm)


def roi_mask_area(size_mm: float, pixel_mm: float) -> float:
    return np.pi * (size_mm / 2) ** 2 / pixel_mm**2


def test_placement_failures_are_recorded_with_reasons() -> None:
    volume = oblique_sagittal_volume(blobs=[])
    coords = coords_frame([
        dict(study_id=1, series_id=11, instance_number=999, condition=vocab.SPINAL, level="l1_l2", x=5, y=5),
        dict(study_id=1, series_id=11, instance_number=5, condition=vocab.SPINAL, level="l2_l3", x=900, y=5),
        dict(study_id=1, series_id=12, instance_number=5, condition=vocab.SPINAL, level="l3_l4", x=5, y=5),
        dict(study_id=2, series_id=11, instance_number=5, condition=vocab.SPINAL, level="l4_l5", x=5, y=5),
    ])
    rois, failures = place_rois(1, coords, {11: [volume]}, RoiConfig(), unreadable_series={12: "no files"})
    assert rois == []
    reasons = {f.level: f.reason for f in failures if f.condition == vocab.SPINAL}
    assert "instance 999" in reasons["l1_l2"]
    assert "outside" in reasons["l2_l3"]
    assert reasons["l3_l4"] == "series 12 is not available: no files"
    assert reasons["l4_l5"] == NO_COORDINATE  # the row of study 2 is not this study's
    with pytest.raises(RoiError, match="lack column"):
        place_rois(1, coords.drop(columns="x"), {11: [volume]}, RoiConfig())


def test_neighbours_clamp_and_normalisation() -> None:
    assert neighbour_indices(0, 10, 2) == (0, 0, 0, 1, 2)
    assert neighbour_indices(9, 10, 1) == (8, 9, 9)
    values = np.arange(1000, dtype=np.float32).reshape(10, 10, 10)
    normalised = normalise_intensity(values, (1.0, 99.0))
    assert normalised.min() == 0.0 and normalised.max() == 1.0 and normalised.dtype == np.float32
    assert normalise_intensity(np.zeros((2, 3, 3)), (1, 99)).max() == 0.0


def test_crops_for_study_from_dicom_files(tmp_path) -> None:
    """Through the DICOM reader: the crop's centre pixel is the coordinate's pixel; the canal gets an axial view."""
    from dicom_factory import SAGITTAL, oblique_orientation, write_synthetic_stack

    from radiospine.io.decode import load_volume
    from radiospine.io.headers import read_series_headers
    from radiospine.roi.cut import RoiFailure, crops_for_study

    study = tmp_path / "train_images" / "7"
    write_synthetic_stack(study / "70", n_slices=9, rows=120, cols=100, pixel_spacing=(0.9, 0.8),
                                     orientation=SAGITTAL, first_position_lps=(16.0, -40.0, 60.0),
                                     slice_step_mm=4.0, description="Sagittal T2/STIR", instance_order="descending")
    # an axial series of two stacks tilted differently, one through each of two discs (z = 0 and z = -38)
    for index, (z, tilt) in enumerate(((4.0, 6.0), (-34.0, -8.0))):
        write_synthetic_stack(study / "80", n_slices=3, rows=80, cols=80, pixel_spacing=(0.6, 0.6),
                              orientation=oblique_orientation(tilt), first_position_lps=(-24.0, -34.0, z),
                              slice_step_mm=-4.0, first_instance_number=1 + 10 * index, instance_order="ascending")
    sag_stack = read_series_headers(study / "70")[0]
    axial_stacks = read_series_headers(study / "80")
    assert len(axial_stacks) == 2
    mid = int(sag_stack.instance_numbers[4])
    canal_x, canal_y = 40.0, 66.0  # y = row: z = 60 - 66 * 0.9 = 0.6 mm
    canal_lower_y = 108.0          # z = 60 - 108 * 0.9 = -37.2 mm
    coords = coords_frame([
        dict(study_id=7, series_id=70, instance_number=mid, condition=vocab.SPINAL, level="l1_l2", x=canal_x,
             y=canal_y),
        dict(study_id=7, series_id=70, instance_number=mid, condition=vocab.SPINAL, level="l2_l3", x=canal_x,
             y=canal_lower_y),
        dict(study_id=7, series_id=80, instance_number=2, condition="left_subarticular_stenosis", level="l1_l2",
             x=50.0, y=40.0),
        dict(study_id=7, series_id=99, instance_number=1, condition="left_neural_foraminal_narrowing",
             level="l1_l2", x=5.0, y=5.0),
    ])
    config = RoiConfig(pixel_mm=0.5, neighbour_slices=1)
    failures: list[RoiFailure] = []
    crops = crops_for_study(tmp_path, "train", 7, coords, config, failures=failures)
    by_key = {(c.roi.condition, c.roi.level, c.roi.view): c for c in crops}
    assert set(by_key) == {(vocab.SPINAL, "l1_l2", "sagittal_t2"), (vocab.SPINAL, "l2_l3", "sagittal_t2"),
                           ("left_subarticular_stenosis", "l1_l2", "axial_t2"), (vocab.SPINAL, "l1_l2", "axial_t2"),
                           (vocab.SPINAL, "l2_l3", "axial_t2")}
    # the crop's centre pixel is the coordinate's pixel (x, y are integers; no anti-aliasing at 0.5 mm < 0.8 mm)
    crop = by_key[(vocab.SPINAL, "l1_l2", "sagittal_t2")]
    k = sag_stack.instance_numbers.tolist().index(mid)
    source = normalise_intensity(load_volume(sag_stack, slice(k - 1, k + 2)).voxels, config.normalise_percentiles)
    h, w = crop.image.shape[1:]
    assert crop.image[1, (h - 1) // 2, (w - 1) // 2] == pytest.approx(source[1, int(canal_y), int(canal_x)], abs=1e-5)
    np.testing.assert_allclose(crop.image[:, (h - 1) // 2, (w - 1) // 2], source[:, int(canal_y), int(canal_x)],
                               atol=1e-5)
    # the axial canal views sit on the stack through each disc: the labelled slice for L1/L2, the level
    # assignment (stack 1, tilted the other way) for L2/L3
    assert by_key[(vocab.SPINAL, "l1_l2", "axial_t2")].roi.slice_indices[1] == by_key[
        ("left_subarticular_stenosis", "l1_l2", "axial_t2")].roi.slice_indices[1]
    assert by_key[(vocab.SPINAL, "l2_l3", "axial_t2")].roi.stack_index == 1
    reasons = {(f.condition, f.level): f.reason for f in failures}
    assert reasons[("left_neural_foraminal_narrowing", "l1_l2")].startswith("series 99 is not available")
    assert reasons[("right_subarticular_stenosis", "l1_l2")] == NO_COORDINATE
    assert sum(r != NO_COORDINATE for r in reasons.values()) == 1
    with pytest.raises(RoiError, match="series 99"):
        crops_for_study(tmp_path, "train", 7, coords, config, strict=True)
    assert len(crops_for_study(tmp_path, "train", 7, coords, config)) == 5  # failures logged, crops returned


def test_a_slice_that_cannot_be_decoded_fails_its_rois_only(tmp_path) -> None:
    """One file of a sagittal series makes its decoder panic: the ROIs that need it are recorded failures naming
    the file; the study's other ROIs are cut."""
    from dicom_factory import SAGITTAL, break_as_rle, write_synthetic_stack

    from radiospine.roi.cut import RoiFailure, crops_for_study

    truth = write_synthetic_stack(tmp_path / "train_images" / "7" / "70", n_slices=9, rows=120, cols=100,
                                  pixel_spacing=(0.9, 0.8), orientation=SAGITTAL,
                                  first_position_lps=(16.0, -40.0, 60.0), slice_step_mm=4.0,
                                  description="Sagittal T2/STIR", instance_order="ascending")
    broken = truth.paths[6]  # slice 6 along the normal
    break_as_rle(broken)
    coords = coords_frame([
        dict(study_id=7, series_id=70, instance_number=int(truth.instance_numbers[k]), condition=vocab.SPINAL,
             level=level, x=40.0, y=y)
        for k, level, y in [(2, "l1_l2", 40.0), (6, "l2_l3", 66.0), (7, "l3_l4", 90.0)]
    ])
    failures: list[RoiFailure] = []
    crops = crops_for_study(tmp_path, "train", 7, coords, RoiConfig(pixel_mm=0.5, neighbour_slices=1),
                            failures=failures)

    assert [(c.roi.level, c.roi.slice_indices) for c in crops] == [("l1_l2", (1, 2, 3))]
    reasons = {f.level: f.reason for f in failures if f.view == "sagittal_t2" and f.reason != NO_COORDINATE}
    assert sorted(reasons) == ["l2_l3", "l3_l4"]  # slices 5-7 and 6-8 hold the broken slice 6
    for reason in reasons.values():
        assert reason.startswith(f"{broken}: its pixel data (RLE Lossless) cannot be decoded (PanicException")
