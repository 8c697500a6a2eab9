"""Tests of radiospine.io (headers, stacks, decode) on real MR files (pydicom's, pydicom-data's) and synthetic ones."""

from __future__ import annotations

import itertools
import logging
import shutil
import struct
from pathlib import Path

import numpy as np
import pydicom
import pytest
from dicom_factory import (
    AXIAL,
    SAGITTAL,
    break_as_rle,
    graft_enhanced_geometry,
    make_mr_dataset,
    oblique_orientation,
    pydicom_data_file,
    pydicom_test_file,
    rewrite_frame,
    rle_first_segment_too_long,
    write_synthetic_series,
    write_synthetic_stack,
)

from radiospine.errors import DicomReadError
from radiospine.geometry import image_plane_normal, patient_to_voxel, pixel_spacing, slice_spacing_mm, voxel_to_patient
from radiospine.io import decode
from radiospine.io.decode import load_volume, read_volume
from radiospine.io.headers import read_series_headers


def copy_into_series(tmp_path: Path, *sources: Path, study_id: int = 7, series_id: int = 8) -> Path:
    """Copy files into ``tmp_path/<study_id>/<series_id>/`` and return that folder."""
    series_dir = tmp_path / str(study_id) / str(series_id)
    series_dir.mkdir(parents=True, exist_ok=True)
    for source in sources:
        shutil.copy(source, series_dir / source.name)
    return series_dir


def plane_point(origin, orientation, pixel_spacing, row, col) -> np.ndarray:
    """The DICOM image-plane equation, written out: LPS mm of pixel (row, col) of a slice at ``origin``."""
    row_direction, column_direction = np.asarray(orientation, dtype=float)[:3], np.asarray(orientation)[3:]
    row_spacing, col_spacing = pixel_spacing
    return np.asarray(origin, dtype=float) + col * col_spacing * row_direction + row * row_spacing * column_direction


# --- real files -------------------------------------------------------------------------------------------------

MR_SMALL_VARIANTS = [
    "MR_small.dcm",
    "MR_small_RLE.dcm",
    "MR_small_bigendian.dcm",
    "MR_small_expb.dcm",
    "MR_small_implicit.dcm",
    "MR_small_jp2klossless.dcm",
    "MR_small_jpeg_ls_lossless.dcm",
    "MR_small_padded.dcm",
]


@pytest.mark.filterwarnings("ignore:The pixel data is .* excess padding:UserWarning")
@pytest.mark.parametrize("name", MR_SMALL_VARIANTS)
def test_every_mr_small_transfer_syntax_decodes_to_the_uncompressed_pixels(tmp_path, name):
    source = pydicom_test_file(name)
    reference = pydicom.dcmread(pydicom_test_file("MR_small.dcm")).pixel_array  # (64, 64) int16

    (stack,) = read_series_headers(copy_into_series(tmp_path, source))
    volume = load_volume(stack)

    file_meta = pydicom.dcmread(source, stop_before_pixels=True).file_meta
    assert stack.slices[0].transfer_syntax_uid == file_meta.TransferSyntaxUID
    assert volume.voxels.dtype == np.float32
    assert volume.shape == (1, 64, 64)
    np.testing.assert_array_equal(volume.voxels[0], reference.astype(np.float32))  # all variants are lossless
    # MR_small.dcm: IPP [-83.9063, -91.2, 6.6406], axial IOP, PixelSpacing 0.3125 x 0.3125, SliceThickness 0.8
    expected_affine = np.array(
        [[0.3125, 0, 0, -83.9063], [0, 0.3125, 0, -91.2], [0, 0, 0.8, 6.6406], [0, 0, 0, 1]]
    )
    np.testing.assert_allclose(volume.affine, expected_affine, atol=1e-9)
    assert volume.instance_numbers.tolist() == [1]
    assert (volume.study_id, volume.series_id) == (7, 8)


def test_real_header_geometry_through_the_pixel_patient_transforms(tmp_path):
    (stack,) = read_series_headers(copy_into_series(tmp_path, pydicom_test_file("MR_small.dcm")))
    header = pydicom.dcmread(pydicom_test_file("MR_small.dcm"), stop_before_pixels=True)
    rows, cols = np.meshgrid(np.arange(0, 64, 7), np.arange(0, 64, 5), indexing="ij")
    points_src = np.column_stack([np.zeros(rows.size), rows.ravel(), cols.ravel()])

    expected = np.array(
        [
            plane_point(header.ImagePositionPatient, header.ImageOrientationPatient, header.PixelSpacing, r, c)
            for _, r, c in points_src
        ]
    )
    np.testing.assert_allclose(voxel_to_patient(stack.affine, points_src), expected, atol=1e-9)
    np.testing.assert_allclose(patient_to_voxel(stack.affine, expected), points_src, atol=1e-9)


def test_real_oblique_mr2_files_rescale_and_compression(tmp_path):
    """MR2_*: one oblique 1024x1024 image (RescaleSlope 3.774114) as uncompressed, J2K lossless and J2K lossy."""
    loaded = {}
    for name in ["MR2_UNCR.dcm", "MR2_J2KR.dcm", "MR2_UNCI.dcm", "MR2_J2KI.dcm"]:
        series_dir = copy_into_series(tmp_path / name.removesuffix(".dcm"), pydicom_data_file(name))
        (stack,) = read_series_headers(series_dir)
        loaded[name] = (stack, load_volume(stack))

    header = pydicom.dcmread(pydicom_data_file("MR2_UNCR.dcm"))
    slope, intercept = float(header.RescaleSlope), float(header.RescaleIntercept)
    assert slope != 1.0
    stack, volume = loaded["MR2_UNCR.dcm"]
    np.testing.assert_allclose(
        volume.voxels[0], header.pixel_array.astype(np.float64) * slope + intercept, rtol=1e-6, atol=1e-3
    )
    # lossless J2K decodes to exactly the same voxels; UNCI is the decoded lossy J2KI, so those match exactly too
    np.testing.assert_array_equal(loaded["MR2_J2KR.dcm"][1].voxels, volume.voxels)
    np.testing.assert_array_equal(loaded["MR2_J2KI.dcm"][1].voxels, loaded["MR2_UNCI.dcm"][1].voxels)
    lossy, lossless = loaded["MR2_J2KI.dcm"][1].voxels.ravel(), volume.voxels.ravel()
    assert not np.array_equal(lossy, lossless)
    assert np.corrcoef(lossy, lossless)[0, 1] > 0.995  # measured 0.9986

    # oblique plane: row direction [0.569486, 0.822001, 0], column direction [0, 0, -1]
    for row, col in [(0, 0), (1023, 0), (0, 1023), (511, 300)]:
        np.testing.assert_allclose(
            voxel_to_patient(volume.affine, np.array([[0, row, col]]))[0],
            plane_point(header.ImagePositionPatient, header.ImageOrientationPatient, header.PixelSpacing, row, col),
            atol=1e-6,
        )
    np.testing.assert_allclose(image_plane_normal(stack.orientation), np.cross([0.569486, 0.822001, 0], [0, 0, -1]),
                               atol=1e-5)


def test_real_files_at_one_position_become_one_stack_each(tmp_path):
    """The four MR2 files share one position (duplicates): each is its own one-slice stack."""
    names = ["MR2_UNCR.dcm", "MR2_J2KR.dcm", "MR2_UNCI.dcm", "MR2_J2KI.dcm"]
    series_dir = copy_into_series(tmp_path, *(pydicom_data_file(n) for n in names))

    stacks = read_series_headers(series_dir)

    assert [s.stack_index for s in stacks] == [0, 1, 2, 3]
    assert [s.instance_numbers.tolist() for s in stacks] == [[1], [2], [3], [3]]
    assert [s.slices[0].path.name for s in stacks] == ["MR2_UNCR.dcm", "MR2_J2KR.dcm", "MR2_J2KI.dcm", "MR2_UNCI.dcm"]
    # a one-slice stack steps by SpacingBetweenSlices (6.6 mm here) along the normal
    np.testing.assert_allclose(stacks[0].slice_step_vector, image_plane_normal(stacks[0].orientation) * 6.6)


def test_siemens_mr_with_overlays(tmp_path):
    source = pydicom_data_file("MR-SIEMENS-DICOM-WithOverlays.dcm")
    volume = read_volume(copy_into_series(tmp_path, source))
    assert volume.shape == (1, 484, 484)
    assert volume.description == "marked lesion<MPR Collection>"
    np.testing.assert_array_equal(volume.voxels[0], pydicom.dcmread(source).pixel_array.astype(np.float32))
    np.testing.assert_allclose([slice_spacing_mm(volume.affine), *pixel_spacing(volume.affine)],
                               [4.0, 0.72314049586777, 0.72314049586777])


EMRI_VARIANTS = [
    "emri_small.dcm",
    "emri_small_RLE.dcm",
    "emri_small_big_endian.dcm",
    "emri_small_jpeg_2k_lossless.dcm",
    "emri_small_jpeg_2k_lossless_too_short.dcm",
    "emri_small_jpeg_ls_lossless.dcm",
]


@pytest.mark.parametrize("name", EMRI_VARIANTS)
def test_enhanced_multiframe_frames_are_slices(tmp_path, name):
    """Real multi-frame pixel data (10 frames) with Enhanced MR functional-group geometry grafted on.

    The frames are given positions in a shuffled order, so the reader must reorder them along the normal.
    """
    orientation = oblique_orientation(15, -8)
    normal = np.cross(orientation[:3], orientation[3:])
    position_rank_of_frame = np.random.default_rng(3).permutation(10)
    frame_positions = np.round(np.array([12.0, -40.0, 25.0]) + position_rank_of_frame[:, None] * 3.0 * normal, 4)
    series_dir = tmp_path / "3" / "4"
    graft_enhanced_geometry(
        pydicom_data_file(name),
        series_dir / "multi.dcm",
        positions_lps=frame_positions,
        orientation=orientation,
        pixel_spacing=(0.6, 0.9),
        instance_number=1000,
    )
    reference_frames = pydicom.dcmread(pydicom_data_file("emri_small.dcm")).pixel_array  # (10, 64, 64)
    frame_order = np.argsort(position_rank_of_frame)  # frame indices along the normal

    (stack,) = read_series_headers(series_dir, strict=True)
    volume = load_volume(stack)

    assert stack.shape == (10, 64, 64)
    assert [s.frame_index for s in stack.slices] == frame_order.tolist()
    assert stack.instance_numbers.tolist() == [1000] * 10
    np.testing.assert_array_equal(volume.voxels, reference_frames[frame_order].astype(np.float32))
    for k, row, col in [(0, 0, 0), (9, 63, 0), (4, 10, 50)]:
        np.testing.assert_allclose(
            voxel_to_patient(volume.affine, np.array([[k, row, col]]))[0],
            plane_point(frame_positions[frame_order[k]], orientation, (0.6, 0.9), row, col),
            atol=1e-3,
        )
    part = load_volume(stack, slice(3, 7))
    np.testing.assert_array_equal(part.voxels, volume.voxels[3:7])
    np.testing.assert_allclose(part.affine[:3, 3], frame_positions[frame_order[3]], atol=1e-3)


def test_multiframe_file_without_geometry_is_refused(tmp_path):
    """The real emri_small.dcm has no functional groups and no ImagePositionPatient: its frames cannot be placed."""
    series_dir = copy_into_series(tmp_path, pydicom_data_file("emri_small.dcm"))
    with pytest.raises(DicomReadError, match=r"emri_small\.dcm has no ImagePositionPatient \(0020,0032\)"):
        read_series_headers(series_dir)


def test_real_enhanced_file_with_functional_groups(tmp_path):
    """eCT_Supplemental.dcm: a real enhanced multi-frame file (2 frames) with per-frame and shared groups."""
    source = pydicom_data_file("eCT_Supplemental.dcm")
    (stack,) = read_series_headers(copy_into_series(tmp_path, source))
    volume = load_volume(stack)

    assert stack.shape == (2, 512, 512)
    np.testing.assert_allclose(stack.orientation, [-1, 0, 0, 0, 1, 0])
    # normal = (-1, 0, 0) x (0, 1, 0) = (0, 0, -1): frame 1 (z = -149) comes first along it
    np.testing.assert_allclose(image_plane_normal(stack.orientation), [0, 0, -1])
    assert [s.frame_index for s in stack.slices] == [1, 0]
    np.testing.assert_allclose(stack.positions_lps, [[99.5, -301.5, -149.0], [99.5, -301.5, -159.0]])
    np.testing.assert_allclose(volume.affine[:3, 2], [0, 0, -10.0])
    # RescaleIntercept -1024 comes from the shared PixelValueTransformationSequence
    frames = pydicom.dcmread(source).pixel_array.astype(np.float32)
    np.testing.assert_array_equal(volume.voxels, frames[::-1] - 1024)


def test_truncated_real_file_is_refused_naming_it(tmp_path):
    series_dir = copy_into_series(tmp_path, pydicom_test_file("MR_truncated.dcm"))
    with pytest.raises(DicomReadError, match=r"MR_truncated\.dcm is truncated"):
        read_series_headers(series_dir)
    with pytest.raises(DicomReadError, match=r"MR_truncated\.dcm is truncated"):
        read_series_headers(series_dir, strict=True)


def test_truncated_file_is_skipped_and_reported_beside_good_files(tmp_path, caplog):
    series_dir = copy_into_series(tmp_path, pydicom_test_file("MR_truncated.dcm"), pydicom_test_file("MR_small.dcm"))
    with caplog.at_level(logging.WARNING, logger="radiospine.io.headers"):
        (stack,) = read_series_headers(series_dir)

    assert [s.path.name for s in stack.slices] == ["MR_small.dcm"]
    (skipped,) = stack.skipped_files
    assert skipped.path == series_dir / "MR_truncated.dcm"
    assert "truncated" in skipped.reason
    assert "MR_truncated.dcm" in caplog.text


@pytest.mark.parametrize(
    "name", ["MR_small.dcm", "MR_small_RLE.dcm", "MR_small_jp2klossless.dcm", "MR_small_jpeg_ls_lossless.dcm"]
)
def test_file_truncated_after_the_header_scan_raises_on_load(tmp_path, name):
    series_dir = copy_into_series(tmp_path, pydicom_test_file(name))
    (stack,) = read_series_headers(series_dir)
    path = series_dir / name
    path.write_bytes(path.read_bytes()[:-300])  # cuts into the pixel data of every variant

    with pytest.raises(DicomReadError, match=rf"{name}.*(truncated|cannot be decoded)"):
        load_volume(stack)


# --- synthetic series ----------------------------------------------------------------------------------------------

def test_oblique_series_order_geometry_and_pixels(tmp_path):
    truth = write_synthetic_series(
        tmp_path, orientation=oblique_orientation(20, 10), pixel_spacing=(0.5, 0.8), rows=24, cols=40
    )
    assert not np.array_equal(truth.instance_numbers, np.sort(truth.instance_numbers))  # shuffled

    (stack,) = read_series_headers(truth.series_dir)
    volume = load_volume(stack)

    assert (stack.study_id, stack.series_id, stack.description) == (101, 202, "Axial T2")
    assert stack.shape == volume.shape == (5, 24, 40)
    assert stack.instance_numbers.tolist() == truth.instance_numbers.tolist()
    assert np.all(np.diff(stack.positions_lps @ image_plane_normal(stack.orientation)) > 0)
    np.testing.assert_array_equal(volume.voxels, truth.expected_voxels)
    np.testing.assert_array_equal(volume.instance_numbers, truth.instance_numbers)
    assert stack.pixel_spacing == (0.5, 0.8)

    # hand-computed LPS of known pixels: 39 columns are 31.2 mm along IOP[0:3], 23 rows 11.5 mm along IOP[3:6]
    for k, row, col in [(0, 0, 0), (0, 23, 0), (0, 0, 39), (4, 23, 39), (2, 10, 7)]:
        expected = truth.positions_lps[k] + col * 0.8 * truth.row_direction + row * 0.5 * truth.column_direction
        np.testing.assert_allclose(voxel_to_patient(volume.affine, np.array([[k, row, col]]))[0], expected, atol=1e-3)
    np.testing.assert_allclose([slice_spacing_mm(volume.affine), *pixel_spacing(volume.affine)], [4.0, 0.5, 0.8],
                               atol=1e-4)
    np.testing.assert_allclose(stack.position_residual_mm, 0, atol=1e-3)


def test_voxel_patient_voxel_round_trip(tmp_path):
    truth = write_synthetic_series(tmp_path, orientation=oblique_orientation(-12, 30, base=SAGITTAL))
    volume = read_volume(truth.series_dir)
    points_src = np.random.default_rng(0).uniform([0, 0, 0], [4, 23, 39], size=(50, 3))

    np.testing.assert_allclose(patient_to_voxel(volume.affine, voxel_to_patient(volume.affine, points_src)), points_src,
                               atol=1e-9)
    # and the slice centres land on the written ImagePositionPatient values
    centres = voxel_to_patient(volume.affine, np.column_stack([np.arange(5), np.zeros(5), np.zeros(5)]))
    np.testing.assert_allclose(centres, truth.positions_lps, atol=1e-3)


def test_descending_instance_numbers_are_reordered_along_the_normal(tmp_path):
    truth = write_synthetic_series(tmp_path, instance_order="descending", n_slices=6)
    (stack,) = read_series_headers(truth.series_dir)
    assert stack.instance_numbers.tolist() == [1005, 1004, 1003, 1002, 1001, 1000]
    np.testing.assert_array_equal(load_volume(stack).voxels, truth.expected_voxels)


def test_two_orientations_in_one_series_are_two_stacks(tmp_path):
    series_dir = tmp_path / "1" / "2"
    axial = write_synthetic_stack(series_dir, n_slices=5, first_instance_number=1000, seed=1)
    tilted = write_synthetic_stack(
        series_dir, n_slices=4, orientation=oblique_orientation(25, 0), first_instance_number=2000, seed=2
    )

    stacks = read_series_headers(series_dir)

    assert [len(s.slices) for s in stacks] == [5, 4]
    for stack, truth in zip(stacks, [axial, tilted], strict=True):
        np.testing.assert_allclose(stack.orientation, truth.orientation)
        assert stack.instance_numbers.tolist() == truth.instance_numbers.tolist()
        np.testing.assert_array_equal(load_volume(stack).voxels, truth.expected_voxels)
    with pytest.raises(DicomReadError, match=r"holds 2 stacks"):
        read_volume(series_dir)


def test_a_gap_along_the_normal_splits_a_parallel_stack(tmp_path):
    series_dir = tmp_path / "1" / "2"
    lower = write_synthetic_stack(series_dir, n_slices=4, first_position_lps=(0, 0, 0), first_instance_number=1)
    upper = write_synthetic_stack(series_dir, n_slices=3, first_position_lps=(0, 0, 60), first_instance_number=50)

    stacks = read_series_headers(series_dir)

    assert [s.instance_numbers.tolist() for s in stacks] == [
        lower.instance_numbers.tolist(),
        upper.instance_numbers.tolist(),
    ]
    np.testing.assert_allclose(stacks[1].affine[:3, 3], upper.positions_lps[0])


def test_one_tilted_axial_stack_per_disc(tmp_path):
    series_dir = tmp_path / "1" / "2"
    truths = [
        write_synthetic_stack(
            series_dir,
            n_slices=3,
            orientation=oblique_orientation(tilt, 0),
            first_position_lps=(0, 0, 35.0 * level),
            first_instance_number=1 + 3 * level,
            seed=level,
        )
        for level, tilt in enumerate([-8, 0, 12])
    ]

    stacks = read_series_headers(series_dir)

    assert len(stacks) == 3
    for stack, truth in zip(stacks, truths, strict=True):
        assert stack.instance_numbers.tolist() == truth.instance_numbers.tolist()
        np.testing.assert_allclose(load_volume(stack).affine[:3, 3], truth.positions_lps[0], atol=1e-6)


def test_repeated_acquisition_at_the_same_positions_is_two_stacks(tmp_path):
    series_dir = tmp_path / "1" / "2"
    first = write_synthetic_stack(series_dir, first_instance_number=1000, seed=1)
    repeat = write_synthetic_stack(series_dir, first_instance_number=1005, seed=2)

    stacks = read_series_headers(series_dir)

    assert [s.instance_numbers.tolist() for s in stacks] == [
        first.instance_numbers.tolist(),
        repeat.instance_numbers.tolist(),
    ]
    np.testing.assert_array_equal(load_volume(stacks[1]).voxels, repeat.expected_voxels)


def test_different_series_uids_in_one_folder_are_separate_stacks(tmp_path):
    series_dir = tmp_path / "1" / "2"
    write_synthetic_stack(series_dir, series_uid="1.2.3.4", first_instance_number=1)
    write_synthetic_stack(series_dir, series_uid="1.2.3.5", first_instance_number=100, first_position_lps=(0, 0, 2))
    stacks = read_series_headers(series_dir)
    assert [s.series_instance_uid for s in stacks] == ["1.2.3.4", "1.2.3.5"]


def test_uneven_spacing_below_the_gap_threshold_is_kept_and_reported(tmp_path, caplog):
    truth = write_synthetic_series(tmp_path, instance_order="ascending", first_position_lps=(0, 0, 0))
    moved = pydicom.dcmread(truth.paths[3])
    moved.ImagePositionPatient = [0.0, 0.0, 13.0]  # steps 4, 4, 5, 3 mm: no step above 1.5 x the median
    moved.save_as(truth.paths[3])

    with caplog.at_level(logging.WARNING, logger="radiospine.io.headers"):
        (stack,) = read_series_headers(truth.series_dir)

    assert len(stack.slices) == 5
    np.testing.assert_allclose(stack.position_residual_mm, 1.0, atol=1e-6)
    assert "uneven spacing" in caplog.text


@pytest.mark.parametrize(
    "keyword", ["ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing", "InstanceNumber"]
)
def test_a_file_missing_a_required_tag_is_skipped_or_fatal_when_strict(tmp_path, keyword, caplog):
    truth = write_synthetic_series(tmp_path, instance_order="ascending")
    broken_path = truth.paths[-1]  # the last slice along the normal: the others stay one regular stack
    broken = pydicom.dcmread(broken_path)
    delattr(broken, keyword)
    broken.save_as(broken_path)

    with caplog.at_level(logging.WARNING, logger="radiospine.io.headers"):
        (stack,) = read_series_headers(truth.series_dir)
    assert stack.instance_numbers.tolist() == truth.instance_numbers[:-1].tolist()
    (skipped,) = stack.skipped_files
    assert skipped.path == broken_path
    assert f"{broken_path} has no {keyword}" in skipped.reason
    assert keyword in caplog.text

    with pytest.raises(DicomReadError, match=rf"{broken_path.name} has no {keyword}"):
        read_series_headers(truth.series_dir, strict=True)


def test_non_dicom_files_in_the_folder(tmp_path):
    truth = write_synthetic_series(tmp_path, instance_order="ascending")
    (truth.series_dir / "notes.txt").write_text("not an image")
    (truth.series_dir / "junk.dcm").write_bytes(b"<html>404 not found</html>")
    (truth.series_dir / "empty.dcm").write_bytes(b"")

    (stack,) = read_series_headers(truth.series_dir)

    assert len(stack.slices) == 5
    reasons = {s.path.name: s.reason for s in stack.skipped_files}
    assert sorted(reasons) == ["empty.dcm", "junk.dcm"]  # notes.txt is not a *.dcm file: ignored
    assert "junk.dcm is not a DICOM file" in reasons["junk.dcm"]
    with pytest.raises(DicomReadError, match=r"empty\.dcm is not a DICOM file"):
        read_series_headers(truth.series_dir, strict=True)


def test_folder_level_errors(tmp_path):
    empty = tmp_path / "1" / "2"
    empty.mkdir(parents=True)
    with pytest.raises(DicomReadError, match=r"has no \*\.dcm files"):
        read_series_headers(empty)
    (empty / "readme.txt").write_text("x")
    with pytest.raises(DicomReadError, match=r"has no \*\.dcm files; it holds 1 other entries"):
        read_series_headers(empty)
    (empty / "bad.dcm").write_bytes(b"\0" * 300)
    with pytest.raises(DicomReadError, match=r"none of its 1 \*\.dcm files is usable.*bad\.dcm"):
        read_series_headers(empty)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        read_series_headers(tmp_path / "1" / "999")


def test_a_file_without_pixel_data_is_skipped(tmp_path):
    truth = write_synthetic_series(tmp_path, instance_order="ascending")
    header_only = make_mr_dataset(
        np.zeros((24, 40), np.int16),
        position_lps=truth.positions_lps[-1] + 4 * np.array([0, 0, 1.0]),
        orientation=AXIAL,
        pixel_spacing=(0.5, 0.8),
        instance_number=2000,
        series_uid="1.2.3",
        study_uid="1.2",
        omit=("PixelData",),
    )
    header_only.save_as(truth.series_dir / "2000.dcm", enforce_file_format=True)

    (stack,) = read_series_headers(truth.series_dir)
    (skipped,) = stack.skipped_files
    assert "2000.dcm has no Pixel Data (7FE0,0010) (SOP class MR Image Storage)" in skipped.reason


def test_pixel_data_shorter_than_rows_times_columns_is_refused(tmp_path):
    series_dir = tmp_path / "1" / "2"
    series_dir.mkdir(parents=True)
    ds = make_mr_dataset(
        np.ones((24, 40), np.int16),
        position_lps=(0, 0, 0),
        orientation=AXIAL,
        pixel_spacing=(0.5, 0.8),
        instance_number=1,
        series_uid="1.2.3",
        study_uid="1.2",
    )
    ds.Rows = 30  # the pixel data holds 24 rows
    ds.save_as(series_dir / "1.dcm", enforce_file_format=True)

    with pytest.raises(DicomReadError, match=r"1\.dcm: Pixel Data holds 1920 bytes but Rows x Columns .* need 2400"):
        read_series_headers(series_dir, strict=True)


def test_a_file_replaced_after_the_header_scan_is_refused_on_load(tmp_path):
    truth = write_synthetic_series(tmp_path, instance_order="ascending")
    (stack,) = read_series_headers(truth.series_dir)
    smaller = make_mr_dataset(
        np.ones((16, 16), np.int16),
        position_lps=truth.positions_lps[2],
        orientation=AXIAL,
        pixel_spacing=(0.5, 0.8),
        instance_number=int(truth.instance_numbers[2]),
        series_uid="1.2.3",
        study_uid="1.2",
    )
    smaller.save_as(truth.paths[2], enforce_file_format=True)

    load_volume(stack, slice(0, 2))  # the unchanged files still load
    with pytest.raises(DicomReadError, match=rf"{truth.paths[2].name}: frame 0 decodes to shape \(16, 16\)"):
        load_volume(stack)


def test_ids_come_from_folder_names_unless_given(tmp_path):
    truth = write_synthetic_series(tmp_path, study_id=44, series_id=55)
    (stack,) = read_series_headers(truth.series_dir)
    assert (stack.study_id, stack.series_id) == (44, 55)
    (stack,) = read_series_headers(truth.series_dir, study_id=1, series_id=2)
    assert (stack.study_id, stack.series_id) == (1, 2)

    named = write_synthetic_stack(tmp_path / "patient_a" / "sag_t1")
    with pytest.raises(ValueError, match=r"study_id from folder name 'patient_a'.*pass study_id="):
        read_series_headers(named.series_dir)
    assert read_series_headers(named.series_dir, study_id=3, series_id=4)[0].series_id == 4


def test_load_a_contiguous_range_of_slices(tmp_path):
    truth = write_synthetic_series(tmp_path, n_slices=6, orientation=oblique_orientation(5, 5))
    (stack,) = read_series_headers(truth.series_dir)

    part = load_volume(stack, slice(1, 4))
    np.testing.assert_array_equal(part.voxels, truth.expected_voxels[1:4])
    np.testing.assert_array_equal(part.instance_numbers, truth.instance_numbers[1:4])
    np.testing.assert_allclose(part.affine[:3, 3], truth.positions_lps[1], atol=1e-3)
    points_src = np.array([[0, 3, 4], [2, 20, 30]])
    np.testing.assert_allclose(
        voxel_to_patient(part.affine, points_src), voxel_to_patient(stack.affine, points_src + [1, 0, 0]), atol=1e-9
    )
    assert part.source_paths == tuple(str(p) for p in truth.paths[1:4])

    tail = load_volume(stack, slice(-2, None))
    np.testing.assert_array_equal(tail.voxels, truth.expected_voxels[4:])
    for bad in [slice(0, 6, 2), slice(3, 3), slice(10, 12)]:
        with pytest.raises(ValueError, match="contiguous range"):
            load_volume(stack, bad)


@pytest.mark.parametrize(
    ("spacing_between_slices", "slice_thickness", "expected_step"),
    [(6.0, 3.0, 6.0), (None, 3.0, 3.0), (None, None, 1.0)],
)
def test_single_slice_step(tmp_path, spacing_between_slices, slice_thickness, expected_step):
    truth = write_synthetic_series(
        tmp_path,
        n_slices=1,
        orientation=SAGITTAL,
        spacing_between_slices=spacing_between_slices,
        slice_thickness=slice_thickness,
    )
    (stack,) = read_series_headers(truth.series_dir)
    # sagittal: normal = IOP[0:3] x IOP[3:6] = (0, 1, 0) x (0, 0, -1) = (-1, 0, 0)
    np.testing.assert_allclose(stack.affine[:3, 2], [-expected_step, 0, 0])


def test_the_header_scan_decodes_no_pixels(tmp_path, monkeypatch):
    truth = write_synthetic_series(tmp_path)
    copy_into_series(tmp_path, pydicom_test_file("MR_small_jp2klossless.dcm"), study_id=101, series_id=202)

    def no_decoding(*args, **kwargs):
        raise AssertionError("the header scan must not touch pixel data")

    with monkeypatch.context() as patch:
        patch.setattr(decode, "iter_pixels", no_decoding)
        patch.setattr(decode, "get_frame", no_decoding)
        stacks = read_series_headers(truth.series_dir)
    assert [s.instance_numbers.tolist() for s in stacks] == [[1], truth.instance_numbers.tolist()]
    assert load_volume(stacks[0]).shape == (1, 64, 64)  # decoding works once allowed


def test_a_missing_decoder_plugin_is_named(tmp_path, monkeypatch):
    """JPEG-LS decodes here through pyjpegls and pylibjpeg; without a plugin the error says what to install."""
    from pydicom.pixels import get_decoder
    from pydicom.uid import JPEGLSLossless

    (stack,) = read_series_headers(copy_into_series(tmp_path, pydicom_test_file("MR_small_jpeg_ls_lossless.dcm")))
    decoder = get_decoder(JPEGLSLossless)
    assert {"pyjpegls", "pylibjpeg"} <= set(decoder.available_plugins)
    monkeypatch.setattr(decoder, "_available", {})  # pydicom's registry of importable plugins: none left

    with pytest.raises(DicomReadError, match=r"MR_small_jpeg_ls_lossless\.dcm: no installed pixel data handler.*"
                       r"JPEG-LS Lossless Image Compression.*install pyjpegls, pylibjpeg, pylibjpeg-libjpeg"):
        load_volume(stack)


# --- JPEG-LS -------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["JPEGLSNearLossless_08.dcm", "JPEGLSNearLossless_16.dcm"])
def test_real_jpeg_ls_near_lossless_files(tmp_path, name):
    """pydicom's near-lossless JPEG-LS files (8 and 16 bit; given an image plane): CharLS and libjpeg agree."""
    from pydicom.pixels import pixel_array

    source = rewrite_frame(pydicom_test_file(name), tmp_path / "source" / name, add_geometry=True)
    volume = read_volume(copy_into_series(tmp_path, source))

    by_charls = pixel_array(source, decoding_plugin="pyjpegls")
    np.testing.assert_array_equal(by_charls, pixel_array(source, decoding_plugin="pylibjpeg"))
    assert volume.shape == (1, *by_charls.shape)
    assert np.ptp(by_charls) > 0
    np.testing.assert_array_equal(volume.voxels[0], by_charls.astype(np.float32))


# --- damaged files: no decoder ends a run --------------------------------------------------------------------------

def _random_bytes(n: int) -> bytes:
    return np.random.default_rng(18).integers(0, 256, n, dtype=np.uint8).tobytes()


def garbage_stream(frame: bytes, ds) -> bytes:
    """The codestream's first marker (SOI / SOC), random bytes, the end marker (FFD9)."""
    return frame[:2] + _random_bytes(len(frame) - 4) + b"\xff\xd9"


def garbage_after_the_scan_header(frame: bytes, ds) -> bytes:
    """JPEG / JPEG-LS markers up to the end of the start-of-scan segment (FFDA) intact, then random scan data."""
    sos = frame.index(b"\xff\xda")
    (length,) = struct.unpack(">H", frame[sos + 2 : sos + 4])
    head = frame[: sos + 2 + length]
    return head + _random_bytes(len(frame) - len(head) - 2) + b"\xff\xd9"


def cut_in_half(frame: bytes, ds) -> bytes:
    return frame[: len(frame) // 2]


def cut_in_half_with_end_marker(frame: bytes, ds) -> bytes:
    return frame[: len(frame) // 2] + b"\xff\xd9"


def _rle_segments(frame: bytes) -> list[bytes]:
    count, *offsets = struct.unpack("<16L", frame[:64])
    bounds = [*offsets[:count], len(frame)]
    return [frame[begin:end] for begin, end in itertools.pairwise(bounds)]


def _rle_frame(segments: list[bytes], count: int | None = None, offsets: list[int] | None = None) -> bytes:
    if offsets is None:
        offsets = [64 + sum(len(s) for s in segments[:i]) for i in range(len(segments))]
    count = len(segments) if count is None else count
    return struct.pack("<16L", count, *offsets, *[0] * (15 - len(offsets))) + b"".join(segments)


def rle_offset_past_the_end(frame: bytes, ds) -> bytes:
    segments = _rle_segments(frame)
    return _rle_frame(segments, offsets=[64, len(frame) + 4000])


def rle_count_says_3(frame: bytes, ds) -> bytes:
    return _rle_frame(_rle_segments(frame), count=3, offsets=[64, 64 + len(_rle_segments(frame)[0]), 0])


def rle_count_says_1(frame: bytes, ds) -> bytes:
    segments = _rle_segments(frame)
    return _rle_frame(segments, count=1, offsets=[64, 64 + len(segments[0])])


def rle_run_across_the_end(frame: bytes, ds) -> bytes:
    """The last segment ends with a run that starts on its last byte and goes 127 bytes past the end."""
    n = int(ds.Rows) * int(ds.Columns)
    head = b"\x81\x00" * ((n - 1) // 128) + b"\x00\x00" * ((n - 1) % 128)  # n - 1 bytes
    return _rle_frame([_rle_segments(frame)[0], head + b"\x81\x00"])


DECODER_FAULTS = [
    # (source file, needs an image plane, fault, what the recorded reason says)
    ("MR_small_RLE.dcm", False, rle_offset_past_the_end, r"damaged RLE header \(its segment offsets \[64, \d+\] do"),
    ("MR_small_RLE.dcm", False, rle_count_says_3, r"damaged RLE header \(it announces 3 segments .* needs 2\)"),
    ("MR_small_RLE.dcm", False, rle_count_says_1, r"damaged RLE header \(it announces 1 segments .* needs 2\)"),
    ("MR_small_RLE.dcm", False, rle_first_segment_too_long, r"cannot be decoded \(PanicException: index out of bounds"),
    ("MR_small_RLE.dcm", False, rle_run_across_the_end, r"cannot be decoded \(PanicException: index out of bounds"),
    ("JPGExtended.dcm", True, garbage_stream, r"JPEG Extended.* cannot be decoded \(RuntimeError"),
    ("JPGExtended.dcm", True, cut_in_half, r"does not end with the end-of-image marker"),
    ("JPEG-LL.dcm", True, garbage_stream, r"JPEG Lossless.* cannot be decoded \(RuntimeError"),
    ("MR_small_jp2klossless.dcm", False, garbage_stream, r"JPEG 2000 .* cannot be decoded \(RuntimeError"),
    ("MR_small_jp2klossless.dcm", False, cut_in_half, r"does not end with the end-of-image marker"),
    ("MR_small_jpeg_ls_lossless.dcm", False, garbage_stream, r"JPEG-LS .* cannot be decoded \(RuntimeError"),
    ("MR_small_jpeg_ls_lossless.dcm", False, cut_in_half, r"does not end with the end-of-image marker"),
    # pylibjpeg-libjpeg decodes these two to an image without an error; CharLS refuses them
    ("MR_small_jpeg_ls_lossless.dcm", False, garbage_after_the_scan_header, r"cannot be decoded.*pyjpegls: Decoding"),
    ("MR_small_jpeg_ls_lossless.dcm", False, cut_in_half_with_end_marker, r"cannot be decoded.*pyjpegls: Decoding"),
    ("JPEGLSNearLossless_16.dcm", True, cut_in_half_with_end_marker, r"cannot be decoded.*pyjpegls: Decoding"),
]


def _source_file(name: str) -> Path:
    try:
        return pydicom_test_file(name)
    except FileNotFoundError:
        return pydicom_data_file(name)


@pytest.mark.parametrize(
    ("name", "add_geometry", "fault", "reason"), DECODER_FAULTS,
    ids=[f"{name}-{fault.__name__}" for name, _, fault, _ in DECODER_FAULTS],
)
def test_damaged_pixel_data_is_a_read_error_naming_the_file(tmp_path, name, add_geometry, fault, reason):
    """Damage the header scan cannot see (it reads no pixel data): load_volume raises DicomReadError naming the
    file, which callers record; never another exception (a decoder's native panic included)."""
    damaged = rewrite_frame(_source_file(name), tmp_path / "source" / name, fault, add_geometry=add_geometry)
    (stack,) = read_series_headers(copy_into_series(tmp_path, damaged), strict=True)

    with pytest.raises(DicomReadError, match=rf"{name}: .*{reason}") as info:
        load_volume(stack)
    assert str(tmp_path / "7" / "8" / name) in str(info.value)


@pytest.mark.parametrize("name", ["MR_small_RLE.dcm", "JPGExtended.dcm", "JPEG-LL.dcm", "JPEGLSNearLossless_16.dcm"])
def test_the_fault_injection_sources_load_when_undamaged(tmp_path, name):
    """The files damaged above load when left intact (so each fault, not the source, makes the failure)."""
    source = rewrite_frame(_source_file(name), tmp_path / "source" / name, add_geometry=name != "MR_small_RLE.dcm")
    volume = read_volume(copy_into_series(tmp_path, source))
    np.testing.assert_array_equal(volume.voxels[0], pydicom.dcmread(source).pixel_array.astype(np.float32))


class _NativePanic(BaseException):
    """Stands for pyo3's PanicException: a BaseException, not an Exception."""


@pytest.mark.parametrize("raised", [_NativePanic("decoder panicked"), MemoryError("no memory"), ValueError("bad")])
def test_whatever_a_decoder_raises_becomes_a_read_error(tmp_path, monkeypatch, raised):
    (stack,) = read_series_headers(copy_into_series(tmp_path, pydicom_test_file("MR_small.dcm")))

    def failing_decoder(*args, **kwargs):
        raise raised

    monkeypatch.setattr(decode, "iter_pixels", failing_decoder)
    with pytest.raises(DicomReadError, match=rf"MR_small\.dcm: .* cannot be decoded \({type(raised).__name__}: "):
        load_volume(stack)


@pytest.mark.parametrize("raised", [KeyboardInterrupt(), SystemExit(3), GeneratorExit()])
def test_requests_to_stop_pass_through_the_decoder_guard(tmp_path, monkeypatch, raised):
    (stack,) = read_series_headers(copy_into_series(tmp_path, pydicom_test_file("MR_small.dcm")))

    def interrupted_decoder(*args, **kwargs):
        raise raised

    monkeypatch.setattr(decode, "iter_pixels", interrupted_decoder)
    with pytest.raises(type(raised)):
        load_volume(stack)


def _deflated_mr_file(path: Path) -> bytes:
    """A deflated MR file at ``path``; returns its bytes."""
    ds = make_mr_dataset(
        np.arange(24 * 40, dtype=np.int16).reshape(24, 40),
        position_lps=(0, 0, 40.0),
        orientation=AXIAL,
        pixel_spacing=(0.5, 0.8),
        instance_number=2000,
        series_uid="1.2.3",
        study_uid="1.2",
    )
    ds.file_meta.TransferSyntaxUID = pydicom.uid.DeflatedExplicitVRLittleEndian
    ds.save_as(path, enforce_file_format=True)
    return path.read_bytes()


def test_deflated_files_load(tmp_path):
    """Regression: pydicom's iter_pixels does not inflate a deflated file, so none loaded ("no Pixel Data")."""
    series_dir = tmp_path / "1" / "2"
    series_dir.mkdir(parents=True)
    _deflated_mr_file(series_dir / "2000.dcm")
    volume = read_volume(series_dir)
    np.testing.assert_array_equal(volume.voxels[0], np.arange(24 * 40).reshape(24, 40))

    real = rewrite_frame(pydicom_test_file("image_dfl.dcm"), tmp_path / "real" / "image_dfl.dcm", add_geometry=True)
    assert pydicom.dcmread(real).file_meta.TransferSyntaxUID == pydicom.uid.DeflatedExplicitVRLittleEndian
    volume = read_volume(copy_into_series(tmp_path, real))
    np.testing.assert_array_equal(volume.voxels[0], pydicom.dcmread(real).pixel_array.astype(np.float32))


@pytest.mark.parametrize("damage", ["garbage", "cut"])
def test_a_deflated_file_that_does_not_inflate_is_skipped_naming_it(tmp_path, damage, caplog):
    """Regression: zlib's error escaped the header scan (it was not a DicomReadError) and ended the run."""
    truth = write_synthetic_series(tmp_path, instance_order="ascending")
    path = truth.series_dir / "2000.dcm"
    data = _deflated_mr_file(path)
    meta_end = 132 + 12 + pydicom.dcmread(path, stop_before_pixels=True).file_meta.FileMetaInformationGroupLength
    deflated = data[meta_end:]
    path.write_bytes(data[:meta_end] + (_random_bytes(len(deflated)) if damage == "garbage" else
                                        deflated[: len(deflated) // 2]))

    with caplog.at_level(logging.WARNING, logger="radiospine.io.headers"):
        (stack,) = read_series_headers(truth.series_dir)
    assert stack.instance_numbers.tolist() == truth.instance_numbers.tolist()
    (skipped,) = stack.skipped_files
    assert skipped.path == path
    assert f"{path}: its deflated dataset cannot be inflated (zlib: Error" in skipped.reason
    assert "2000.dcm" in caplog.text
    with pytest.raises(DicomReadError, match=r"2000\.dcm: its deflated dataset cannot be inflated"):
        read_series_headers(truth.series_dir, strict=True)


@pytest.mark.parametrize("name", ["MR_small.dcm", "MR_small_implicit.dcm", "MR_small_bigendian.dcm"])
def test_native_pixel_data_cut_short_is_skipped_naming_the_file(tmp_path, name):
    series_dir = copy_into_series(tmp_path, pydicom_test_file(name), pydicom_test_file("MR_small_jp2klossless.dcm"))
    path = series_dir / name
    path.write_bytes(path.read_bytes()[:-300])

    (stack,) = read_series_headers(series_dir)
    assert [s.path.name for s in stack.slices] == ["MR_small_jp2klossless.dcm"]
    (skipped,) = stack.skipped_files
    assert skipped.path == path
    assert skipped.reason.startswith(f"{path} is truncated: it holds ")
    assert "of the 8192 bytes of pixel data its header announces" in skipped.reason


def test_one_damaged_slice_leaves_the_rest_of_the_stack_loadable(tmp_path):
    """A slice whose RLE data panics the decoder: ranges without it load; ranges with it fail naming it."""
    truth = write_synthetic_series(tmp_path, instance_order="ascending", n_slices=6)
    bad_path = truth.paths[4]
    break_as_rle(bad_path)

    (stack,) = read_series_headers(truth.series_dir, strict=True)
    np.testing.assert_array_equal(load_volume(stack, slice(0, 4)).voxels, truth.expected_voxels[:4])
    np.testing.assert_array_equal(load_volume(stack, slice(5, 6)).voxels, truth.expected_voxels[5:])
    with pytest.raises(DicomReadError, match=rf"{bad_path}: .*cannot be decoded \(PanicException"):
        load_volume(stack, slice(3, 6))
