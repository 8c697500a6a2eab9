"""Image files with their own geometry -> Volume -> DICOM series; points from masks; the IVD level mapping."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import SimpleITK as sitk

from radiospine import vocab
from radiospine.cli import main
from radiospine.errors import DataError, DicomReadError, MissingInputError
from radiospine.geometry import voxel_to_patient
from radiospine.io.decode import read_volume
from radiospine.io.image_file import check_geometry, image_file_stem, read_image_file, write_image_file
from radiospine.io.write import write_volume_series
from radiospine.roi.mask_points import disc_points
from radiospine.volume_import import (
    find_volumes,
    level_of_ivd_label,
    map_discs_to_ivd,
    rsna_level_of_ivd_label,
    series_description,
)


def rotation(axis, degrees: float) -> np.ndarray:
    axis = np.asarray(axis, float) / np.linalg.norm(axis)
    angle = np.deg2rad(degrees)
    k = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    return np.eye(3) + np.sin(angle) * k + (1 - np.cos(angle)) * k @ k


def sagittal_affine(spacing=(0.5, 0.6, 3.0), origin=(-20.0, 30.0, 40.0), tilt_degrees: float = 12.0) -> np.ndarray:
    """Columns run posterior (+y), rows inferior (-z), slices towards the left (+x), tilted about x."""
    directions = rotation([1, 0, 0], tilt_degrees) @ np.array([[0, 0, 1], [1, 0, 0], [0, -1, 0]], float)
    affine = np.eye(4)
    affine[:3, :3] = directions * np.asarray(spacing)[None, :]
    affine[:3, 3] = origin
    return affine


@pytest.mark.parametrize("ending", [".mha", ".nii.gz", ".nrrd"])
def test_image_file_volume_matches_itk_and_the_written_dicom(tmp_path: Path, ending: str) -> None:
    rng = np.random.default_rng(0)
    voxels = rng.integers(0, 256, size=(4, 7, 5)).astype(np.uint8)
    affine = sagittal_affine()
    path = write_image_file(tmp_path / f"12_t2{ending}", voxels, affine)
    volume = read_image_file(path, study_id=12, series_id=1201)
    # the file's slices run towards the left, its image plane normal (row x column direction) to the right: the
    # Volume orders its slices along the normal, as the DICOM reader does
    assert volume.shape == (4, 7, 5) and np.array_equal(volume.voxels, voxels[::-1])
    np.testing.assert_allclose(volume.affine[:3, :2], affine[:3, :2], atol=1e-5)
    np.testing.assert_allclose(volume.affine[:3, 2], -affine[:3, 2], atol=1e-5)
    assert volume.instance_numbers.tolist() == [1, 2, 3, 4]
    # each voxel sits where ITK puts it (ITK index (i, j, k) = (col, row, file slice))
    image = sitk.ReadImage(str(path))
    for src in ([0, 0, 0], [3, 6, 4], [1, 2, 3]):
        expected = image.TransformContinuousIndexToPhysicalPoint([float(src[2]), float(src[1]), 3.0 - src[0]])
        np.testing.assert_allclose(voxel_to_patient(volume.affine, np.array([src]))[0], expected, atol=1e-4)
        assert volume.voxels[tuple(src)] == image[src[2], src[1], 3 - src[0]]
    # written as DICOM and read back by the DICOM reader: the same voxels and affine
    write_volume_series(tmp_path / "dicom", volume.voxels, volume.affine, study_id=12, series_id=1201,
                        series_number=1, description=vocab.SAGITTAL_T2, uid_root="test")
    back = read_volume(tmp_path / "dicom", study_id=12, series_id=1201)
    assert np.array_equal(back.voxels, volume.voxels)
    np.testing.assert_allclose(back.affine, volume.affine, atol=1e-4)
    assert back.instance_numbers.tolist() == [1, 2, 3, 4]


def test_float_voxels_are_rescaled_into_dicom_within_half_a_step(tmp_path: Path) -> None:
    voxels = np.linspace(-3.5, 1000.25, 2 * 4 * 3, dtype=np.float32).reshape(2, 4, 3)
    affine = sagittal_affine()
    affine[:3, 2] *= -1  # slices along the image plane normal: read back in this order
    write_volume_series(tmp_path, voxels, affine, study_id=1, series_id=101, series_number=1,
                        description=vocab.SAGITTAL_T2, uid_root="test")
    back = read_volume(tmp_path, study_id=1, series_id=101)
    assert np.abs(back.voxels - voxels).max() <= (1000.25 + 3.5) / 4095 / 2 + 1e-3


def test_files_that_are_missing_odd_or_unreadable_get_one_clear_error(tmp_path: Path) -> None:
    with pytest.raises(MissingInputError, match="does not exist"):
        read_image_file(tmp_path / "nothing.mha")
    garbage = tmp_path / "3_t2.mha"
    garbage.write_bytes(b"not an image at all")
    with pytest.raises(DicomReadError, match=r"3_t2\.mha: cannot be read"):
        read_image_file(garbage)
    flat = tmp_path / "flat.mha"
    sitk.WriteImage(sitk.Image([8, 8], sitk.sitkUInt8), str(flat))
    with pytest.raises(DicomReadError, match="a 2-D image"):
        read_image_file(flat)
    series = tmp_path / "four.mha"
    sitk.WriteImage(sitk.Image([4, 4, 3, 2], sitk.sitkUInt8), str(series))
    with pytest.raises(DicomReadError, match="a 4-D image"):
        read_image_file(series)
    sheared = tmp_path / "sheared.mha"
    image = sitk.Image([4, 4, 3], sitk.sitkUInt8)
    image.SetDirection([1, 0.3, 0, 0, 1, 0, 0, 0, 1])
    sitk.WriteImage(image, str(sheared))
    with pytest.raises(DicomReadError, match="not orthonormal"):
        read_image_file(sheared)
    with pytest.raises(DicomReadError, match=r"spacing .* not positive"):
        check_geometry("x.mha", [0.5, 0.0, 1.0], np.eye(3).ravel())
    assert image_file_stem("12_t2.nii.gz") == "12_t2"


def test_series_are_typed_from_their_orientation_and_name() -> None:
    sagittal = sagittal_affine()
    assert series_description(sagittal, "5_t2_SPACE_image") == vocab.SAGITTAL_T2
    assert series_description(sagittal, "5_t1") == vocab.SAGITTAL_T1
    axial = np.diag([0.5, 0.5, 4.0, 1.0])
    assert series_description(axial, "5_t2") == vocab.AXIAL_T2
    coronal = np.eye(4)
    coronal[:3, :3] = np.array([[1, 0, 0], [0, 0, 1], [0, -1, 0]], float)
    with pytest.raises(DataError, match="coronal"):
        series_description(coronal, "5_t2", "5_t2.mha")


def spine_mask(shape=(9, 120, 60)) -> np.ndarray:
    """Three flat discs (rows 20, 55, 90), a canal tube posterior to them, a speck; labels 2 and 3."""
    mask = np.zeros(shape, np.uint8)
    for row in (20, 55, 90):
        mask[2:7, row - 3:row + 3, 10:30] = 2
    mask[3:6, :, 40:46] = 3
    mask[0, 110, 5] = 2  # a one-voxel speck: not a disc
    return mask


def test_disc_points_centres_canal_points_and_order() -> None:
    affine = sagittal_affine(spacing=(0.5, 0.5, 1.0), tilt_degrees=0.0)
    table = disc_points(spine_mask(), affine, disc_label=2, canal_label=3, min_disc_mm3=5.0)
    assert len(table) == 3 and table["disc_index"].tolist() == [0, 1, 2]
    assert (np.diff(table["centre_z"]) < 0).all()  # superior to inferior
    np.testing.assert_allclose(table["centre_row"], [19.5, 54.5, 89.5])
    np.testing.assert_allclose(table["centre_col"], 19.5)
    np.testing.assert_allclose(table["canal_row"], table["centre_row"], atol=1.0)
    np.testing.assert_allclose(table[["canal_slice", "canal_col"]].to_numpy(), [[4.0, 42.5]] * 3)
    assert (table["canal_y"] > table["centre_y"] + 10).all()  # posterior to the disc
    np.testing.assert_allclose(np.abs(table["normal_z"]), 1.0, atol=1e-6)
    assert not table["touches_edge"].any()
    lps = voxel_to_patient(affine, table[["canal_slice", "canal_row", "canal_col"]].to_numpy())
    np.testing.assert_allclose(lps, table[["canal_x", "canal_y", "canal_z"]].to_numpy(), atol=1e-9)


def test_a_disc_without_canal_at_its_level_gets_no_canal_point() -> None:
    mask = spine_mask()
    mask[:, :40][mask[:, :40] == 3] = 0
    mask[:, :, 40:46][:, :40][mask[:, :, 40:46][:, :40] == 3] = 0
    table = disc_points(mask, sagittal_affine(spacing=(0.5, 0.5, 1.0), tilt_degrees=0.0), disc_label=2,
                        canal_label=3, min_disc_mm3=5.0)
    assert table["canal_voxels"].iloc[0] == 0 and np.isnan(table["canal_y"].iloc[0])
    assert (table["canal_voxels"].iloc[1:] > 0).all()


def discs_frame(n: int, *, volumes=None, edge=(), no_canal=()) -> pd.DataFrame:
    return pd.DataFrame({"volume_mm3": volumes if volumes is not None else [1000.0] * n,
                         "touches_edge": [i in edge for i in range(n)],
                         "canal_voxels": [0 if i in no_canal else 50 for i in range(n)]})


def test_spider_ivd_numbering_maps_to_levels() -> None:
    assert [level_of_ivd_label(v) for v in (0, 1, 5, 6, 8)] == ["S1/S2", "L5/S1", "L1/L2", "T12/L1", "T10/T11"]
    assert [rsna_level_of_ivd_label(v) for v in (0, 1, 2, 5, 6)] == [None, "l5_s1", "l4_l5", "l1_l2", None]
    labels, decision, anomalies = map_discs_to_ivd(discs_frame(7), list(range(1, 8)))
    assert labels.tolist() == [7, 6, 5, 4, 3, 2, 1] and "IVD 1 (L5/S1)" in decision and anomalies == []
    # label 0 graded: the bottom disc lies below L5/S1
    labels, decision, anomalies = map_discs_to_ivd(discs_frame(7), list(range(7)))
    assert labels.tolist() == [6, 5, 4, 3, 2, 1, 0] and "IVD 0" in decision and anomalies == []
    # an ungraded disc at the top, cut by the border
    labels, _, anomalies = map_discs_to_ivd(discs_frame(8, edge=(0,)), list(range(1, 8)))
    assert labels[0] == 8 and any("IVD [8] (T10/T11) are not graded" in a for a in anomalies)
    assert any("touch the image border" in a for a in anomalies)
    # a graded disc with no component, a small bottom disc, a disc without canal point
    labels, _, anomalies = map_discs_to_ivd(discs_frame(7, volumes=[1000.0] * 6 + [300.0], no_canal=(0,)),
                                            list(range(1, 9)))
    text = "; ".join(anomalies)
    assert "graded IVD label(s) [8] have no disc" in text and "bottom disc (IVD 1) is 30%" in text
    assert "no canal point at IVD [7]" in text


def test_volume_files_are_grouped_by_study_with_their_masks(tmp_path: Path) -> None:
    affine = sagittal_affine()
    for name in ("5_t2_image.mha", "5_t2_mask.mha", "12.nii.gz", "12_mask.nii.gz", "12_t1.mha"):
        write_image_file(tmp_path / name, np.zeros((2, 3, 4), np.uint8), affine)
    (tmp_path / "notes.txt").write_text("not an image")
    found = find_volumes(tmp_path)
    assert [(v.study_id, v.series_id, v.path.name, v.mask_path and v.mask_path.name) for v in found] == [
        (5, 501, "5_t2_image.mha", "5_t2_mask.mha"), (12, 1201, "12.nii.gz", "12_mask.nii.gz"),
        (12, 1202, "12_t1.mha", None)]
    write_image_file(tmp_path / "scan_t2.mha", np.zeros((2, 3, 4), np.uint8), affine)
    with pytest.raises(DataError, match="does not start with a study id"):
        find_volumes(tmp_path)


def test_import_volumes_command_errors_are_one_line(tmp_path: Path, capsys) -> None:
    assert main(["import-volumes", "--volumes", str(tmp_path / "none"), "--out", str(tmp_path / "data")]) == 2
    assert "volume folder" in capsys.readouterr().err
    folder = tmp_path / "volumes"
    folder.mkdir()
    write_image_file(folder / "3_t2.mha", np.zeros((3, 6, 5), np.uint8), sagittal_affine())
    assert main(["import-volumes", "--volumes", str(folder), "--out", str(tmp_path / "data")]) == 0
    assert main(["import-volumes", "--volumes", str(folder), "--out", str(tmp_path / "data")]) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert main(["catalog", "--data", str(tmp_path / "data")]) == 0
    assert '"Sagittal T2/STIR": 1' in capsys.readouterr().out
    # a mask on another grid, then an unreadable file: one line naming the file
    write_image_file(folder / "3_t2_mask.mha", np.zeros((3, 6, 4), np.uint8), sagittal_affine())
    assert main(["import-volumes", "--volumes", str(folder), "--out", str(tmp_path / "data"), "--overwrite"]) == 2
    assert "3_t2_mask.mha: the mask's grid" in capsys.readouterr().err
    (folder / "3_t2_mask.mha").unlink()
    (folder / "4_t2.nrrd").write_bytes(b"NRRD0004\ngarbage")
    assert main(["import-volumes", "--volumes", str(folder), "--out", str(tmp_path / "data"), "--overwrite"]) == 2
    err = capsys.readouterr().err
    assert "4_t2.nrrd: cannot be read" in err and len(err.strip().splitlines()) == 1


def write_nifti_by_hand(path: Path, voxels: np.ndarray, srow: np.ndarray, pixdim) -> None:
    """A NIfTI-1 file written from the specification (not through ITK): uint8 voxels ``(k, j, i)`` in C order
    (``i`` fastest, as NIfTI stores them), the voxel -> RAS mm matrix in the sform, no qform."""
    import struct

    header = bytearray(348)
    struct.pack_into("<i", header, 0, 348)
    struct.pack_into("<8h", header, 40, 3, voxels.shape[2], voxels.shape[1], voxels.shape[0], 1, 1, 1, 1)
    struct.pack_into("<hh", header, 70, 2, 8)  # datatype uint8, bitpix
    struct.pack_into("<8f", header, 76, 1.0, *pixdim, 1, 1, 1, 1)
    struct.pack_into("<fff", header, 108, 352.0, 0.0, 0.0)  # vox_offset, no scaling
    struct.pack_into("<B", header, 123, 2)  # mm
    struct.pack_into("<hh", header, 252, 0, 1)  # qform_code 0, sform_code 1 (scanner)
    struct.pack_into("<12f", header, 280, *np.asarray(srow, float).ravel())
    header[344:348] = b"n+1\0"
    path.write_bytes(bytes(header) + b"\0\0\0\0" + np.ascontiguousarray(voxels, np.uint8).tobytes())


def test_nifti_ras_becomes_lps_as_dicom_has_it(tmp_path: Path) -> None:
    """NIfTI's frame is RAS: a voxel's LPS position is its RAS position with x and y negated."""
    voxels = np.arange(24, dtype=np.uint8).reshape(2, 3, 4)  # (k, j, i): every value once
    rotation_ras = rotation([0, 0, 1], 20.0) @ np.array([[0, 0, 1], [1, 0, 0], [0, 1, 0]], float)
    pixdim = (0.5, 0.7, 3.0)
    srow = np.concatenate([rotation_ras * np.asarray(pixdim)[None, :], [[10.0], [-20.0], [30.0]]], axis=1)
    path = tmp_path / "8_t2.nii"
    write_nifti_by_hand(path, voxels, srow, pixdim)
    volume = read_image_file(path)
    positions = {}
    for k, j, i in np.ndindex(*voxels.shape):
        ras = srow @ np.array([i, j, k, 1.0])
        positions[int(voxels[k, j, i])] = ras * np.array([-1.0, -1.0, 1.0])
    for src in np.ndindex(*volume.shape):
        lps = voxel_to_patient(volume.affine, np.array([src], float))[0]
        np.testing.assert_allclose(lps, positions[int(volume.voxels[src])], atol=1e-3)
