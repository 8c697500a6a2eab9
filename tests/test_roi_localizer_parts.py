"""Localiser building blocks without data: grids, heatmap targets and their decoding, the U-Net, fallbacks."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch

from radiospine.config import LocalizerAugment, LocalizerConfig
from radiospine.errors import CheckpointError, MissingInputError
from radiospine.geometry import make_affine, patient_to_voxel, voxel_to_patient
from radiospine.io.volume import Volume
from radiospine.roi.localizer.evaluation import summarise_evaluation
from radiospine.roi.localizer.grids import (
    canonical_axes,
    decode_peak,
    grid_affine,
    heatmap_targets,
    resample_to_grid,
    stack_inputs,
)
from radiospine.roi.localizer.inference import _interpolate_levels, lateral_offsets_mm, point_on_stack
from radiospine.roi.localizer.model import Localizer, load_localizer, localizer_files, save_localizer
from radiospine.roi.localizer.training import augment
from radiospine.roi.localizer.unet import UNet, UNetSpec


def sagittal_volume(*, flip_rows: bool = False, reverse_slices: bool = False) -> Volume:
    """11 sagittal slices 3.5 mm apart, 120 x 100 px of 0.8 x 0.7 mm, with a bright spot at a fixed LPS point."""
    row_direction = np.array([0.0, 1.0, 0.0])
    column_direction = np.array([0.0, 0.0, 1.0 if flip_rows else -1.0])
    normal = np.cross(row_direction, column_direction)  # +x or -x
    step = normal * 3.5 * (-1 if reverse_slices else 1)
    origin = np.array([0.0, -35.0, 48.0 if not flip_rows else -47.2]) - 5 * step
    affine = make_affine(origin, np.concatenate([row_direction, column_direction]), (0.8, 0.7), step)
    voxels = np.zeros((11, 120, 100), np.float32)
    volume = Volume(voxels=voxels, affine=affine, instance_numbers=np.arange(1, 12), study_id=1, series_id=2)
    spot = np.array([0.0, -5.0, 10.0])
    src = patient_to_voxel(volume.affine, spot[None, :])[0]
    rows, cols = np.indices((120, 100))
    voxels[int(round(src[0]))] = np.exp(-(((rows - src[1]) * 0.8) ** 2 + ((cols - src[2]) * 0.7) ** 2) / 8.0)
    return volume


def test_canonical_grid_shows_the_same_picture_whatever_the_image_orientation() -> None:
    pictures = []
    for flip_rows, reverse in ((False, False), (True, False), (False, True)):
        volume = sagittal_volume(flip_rows=flip_rows, reverse_slices=reverse)
        row_axis, col_axis = canonical_axes(volume.affine, "sagittal")
        np.testing.assert_allclose(row_axis, [0, 0, -1], atol=1e-12)
        np.testing.assert_allclose(col_axis, [0, 1, 0], atol=1e-12)
        grid = grid_affine(volume.affine, 5, np.array([0.0, 0.0, 0.0]), "sagittal", 64, 1.0)
        # grid slice k is stack slice k
        np.testing.assert_allclose(voxel_to_patient(grid, np.array([[3, 31.5, 31.5]]))[0, 0],
                                   voxel_to_patient(volume.affine, np.array([[3, 0, 0]]))[0, 0])
        pictures.append(resample_to_grid(volume.voxels, volume.affine, grid, 64, 1.0))
    k_spot = [int(np.argmax(p.reshape(11, -1).max(axis=1))) for p in pictures]
    assert k_spot[0] == k_spot[1] == 5 and k_spot[2] == 5
    peaks = [np.unravel_index(p[5].argmax(), p[5].shape) for p in pictures]
    assert peaks[0] == peaks[1] == peaks[2]
    # the spot at z = +10 (towards the head) and y = -5 (anterior): above and left of the grid centre
    assert peaks[0][0] < 31.5 and peaks[0][1] < 31.5


@pytest.mark.parametrize("point", [(2.2, -7.3, 4.4), (0.0, 12.6, -20.1)])
def test_heatmap_target_decodes_back_to_its_point(point: tuple[float, float, float]) -> None:
    volume = sagittal_volume()
    grid = grid_affine(volume.affine, 5, np.zeros(3), "sagittal", 64, 2.0)
    points = np.full((3, 2, 3), np.nan)
    points[1, 0] = point
    distance_to_slice_5 = abs(point[0] - voxel_to_patient(volume.affine, np.array([[5, 0, 0]]))[0, 0])
    target = heatmap_targets(grid, 5, 64, points, sigma_mm=4.0, sigma_normal_mm=3.0)
    assert target.shape == (3, 64, 64) and target[0].max() == 0 and target[2].max() == 0
    peak, row, col = decode_peak(target[1])
    assert peak == pytest.approx(np.exp(-distance_to_slice_5**2 / 18.0), rel=0.03)
    decoded = voxel_to_patient(grid, np.array([[5, row, col]]))[0]
    in_plane = np.array(point) - decoded
    in_plane[0] = 0.0  # the slice plane is x = const
    assert np.linalg.norm(in_plane) < 0.05  # the parabola fit on the log heatmap is exact for a Gaussian


def test_stack_inputs_clamp_at_the_ends_and_unet_shapes() -> None:
    images = np.arange(5, dtype=np.float32)[:, None, None] * np.ones((5, 32, 32), np.float32)
    x = stack_inputs(images, [0, 4], 1)
    assert x.shape == (2, 3, 32, 32) and x[0, :, 0, 0].tolist() == [0, 0, 1] and x[1, :, 0, 0].tolist() == [3, 4, 4]
    net = UNet(UNetSpec(in_channels=3, out_channels=10, base_channels=4, depth=3))
    assert net(torch.from_numpy(x)).shape == (2, 10, 32, 32)
    with pytest.raises(ValueError, match="multiple of"):
        net(torch.zeros(1, 3, 36, 36))


def test_saved_localiser_loads_back_and_tampered_weights_are_refused(tmp_path) -> None:
    torch.manual_seed(0)
    nets = [UNet(UNetSpec(in_channels=3, out_channels=channels, base_channels=4, depth=2)) for channels in (10, 2)]
    offsets = {"left_subarticular_stenosis": [1.0, 2.0], "right_subarticular_stenosis": [-1.0, 2.0]}
    save_localizer(Localizer(*nets, LocalizerConfig(), offsets, torch.device("cpu")), tmp_path, {"training": {}})
    loaded = load_localizer(tmp_path, "cpu")
    assert loaded.sagittal.spec == nets[0].spec and loaded.subarticular_offsets_mm == offsets
    assert all(torch.equal(value, nets[1].state_dict()[key]) for key, value in loaded.axial.state_dict().items())
    torch.save({key: value + 1 for key, value in nets[1].state_dict().items()}, tmp_path / "axial.pt")
    with pytest.raises(CheckpointError, match=r"axial.pt: the weights do not match .*radiospine train-localizer"):
        load_localizer(tmp_path, "cpu")


def test_a_localiser_saved_before_the_sample_budget_still_loads(tmp_path) -> None:
    """Regression: a localiser saved with the per-stack keys (``*_slices_per_epoch``) was refused by the config's
    validation, so work folders and bundles trained before the per-epoch budget could not localise."""
    torch.manual_seed(0)
    nets = [UNet(UNetSpec(in_channels=3, out_channels=channels, base_channels=4, depth=2)) for channels in (10, 2)]
    save_localizer(Localizer(*nets, LocalizerConfig(epochs=3), {}, torch.device("cpu")), tmp_path)
    description = json.loads((tmp_path / "localizer.json").read_text())
    for key in ("sagittal_samples_per_epoch", "axial_samples_per_epoch", "validation_fraction",
                "validation_samples", "patience"):
        del description["config"][key]
    description["config"].update(sagittal_slices_per_epoch=6, axial_slices_per_epoch=2)
    (tmp_path / "localizer.json").write_text(json.dumps(description))
    loaded = load_localizer(tmp_path, "cpu")
    assert loaded.config.epochs == 3 and loaded.sagittal.spec == nets[0].spec
    description["config"]["sagittal_slices_per_epochs"] = 6  # a key never known is still refused
    (tmp_path / "localizer.json").write_text(json.dumps(description))
    with pytest.raises(ValueError, match="sagittal_slices_per_epochs"):
        load_localizer(tmp_path, "cpu")


def test_a_saved_localisers_files_are_those_of_its_trained_networks(tmp_path) -> None:
    """Regression: export-model copied a fixed list with axial.pt, so a sagittal-only localiser (SPIDER) could not
    be bundled."""
    torch.manual_seed(0)
    sagittal = UNet(UNetSpec(in_channels=3, out_channels=10, base_channels=4, depth=2))
    both, only_sagittal = tmp_path / "both", tmp_path / "sagittal"
    axial = UNet(UNetSpec(in_channels=3, out_channels=2, base_channels=4, depth=2))
    save_localizer(Localizer(sagittal, axial, LocalizerConfig(), {}, torch.device("cpu")), both)
    save_localizer(Localizer(sagittal, None, LocalizerConfig(), {}, torch.device("cpu"), ("foraminal", "axial")),
                   only_sagittal)
    assert [p.name for p in localizer_files(both)] == ["localizer.json", "sagittal.pt", "sagittal.json", "axial.pt",
                                                       "axial.json"]
    assert [p.name for p in localizer_files(only_sagittal)] == ["localizer.json", "sagittal.pt", "sagittal.json"]
    assert all(p.is_file() for p in localizer_files(both) + localizer_files(only_sagittal))
    with pytest.raises(MissingInputError, match="radiospine train-localizer"):
        localizer_files(tmp_path / "none")


def test_foramen_side_comes_from_geometry_not_instance_order() -> None:
    for reverse in (False, True):
        volume = sagittal_volume(reverse_slices=reverse)
        offsets = lateral_offsets_mm(volume, np.array([0.0, 0.0, 0.0]))
        x_of_slice = voxel_to_patient(volume.affine, np.stack([np.arange(11), np.zeros(11), np.zeros(11)], 1))[:, 0]
        np.testing.assert_allclose(offsets, x_of_slice, atol=1e-9)  # + = patient's left, whatever the order
    instance, x, y = point_on_stack(volume, np.array([7.2, -5.0, 10.0]))
    assert instance == volume.instance_numbers[int(np.argmin(np.abs(x_of_slice - 7.2)))]
    np.testing.assert_allclose(voxel_to_patient(volume.affine, np.array([[0, y, x]]))[0, 1:], [-5.0, 10.0], atol=1e-9)


def test_missing_levels_are_interpolated_along_the_spine() -> None:
    found = {"l1_l2": np.array([0.0, 0, 0]), "l3_l4": np.array([0.0, 10, -80]), "l4_l5": np.array([0.0, 20, -120])}
    filled = _interpolate_levels(found)
    np.testing.assert_allclose(filled["l2_l3"], [0, 5, -40])
    np.testing.assert_allclose(filled["l5_s1"], [0, 30, -160])
    assert _interpolate_levels({"l1_l2": np.zeros(3)}) == {}


def test_config_rejects_a_grid_that_does_not_fit_the_depth() -> None:
    with pytest.raises(ValueError, match="multiple of 2\\*\\*depth"):
        LocalizerConfig(sagittal_grid_px=100, depth=4)


def gaussian_blob(size: int, row: float, col: float, height: float, sigma_px: float = 2.0) -> np.ndarray:
    rows, cols = np.indices((size, size))
    return height * np.exp(-((rows - row) ** 2 + (cols - col) ** 2) / (2 * sigma_px**2))


def test_levels_are_decoded_together_in_anatomical_order() -> None:
    from radiospine.roi.localizer.grids import decode_levels

    size = 64
    grid = np.eye(4)
    grid[:3, 0] = [0.0, 2.5, 0.0]   # columns towards the back
    grid[:3, 1] = [0.0, 0.0, -2.5]  # rows towards the feet
    grid[:3, 2] = [4.0, 0.0, 0.0]
    disc_rows = [6.0, 20.0, 34.0, 48.0, 61.0]  # 35 mm apart
    probabilities = np.zeros((2, 5, size, size), np.float32)
    for level, row in enumerate(disc_rows):
        probabilities[1, level] = gaussian_blob(size, row, 30.3, 0.6)
    # L2/L3's channel fires more strongly on the L3/L4 disc, and L3/L4's channel weakly on L2/L3's
    probabilities[1, 1] = np.maximum(probabilities[1, 1], gaussian_blob(size, 34.0, 30.0, 0.75))
    probabilities[1, 2] = np.maximum(probabilities[1, 2] * 1.4, gaussian_blob(size, 20.0, 30.0, 0.3))
    # on slice 0 L5/S1's channel is weak: the point is on slice 1
    probabilities[0, 4] = gaussian_blob(size, 61.0, 30.0, 0.2)
    independent = [int(np.unravel_index(probabilities[:, lv].max(axis=0).argmax(), (size, size))[0])
                   for lv in range(5)]
    assert independent[1] == independent[2] == 34  # decoding each channel alone puts two levels on one disc
    decoded = decode_levels(probabilities, grid, [[0, 1]] * 5, min_peak=0.1)
    rows = [(-(point[2] - grid[2, 3]) / 2.5) for _, point in decoded]
    np.testing.assert_allclose(rows, disc_rows, atol=0.3)
    assert [round(float(point[0]) / 4.0) for _, point in decoded] == [1] * 5  # all on slice 1
    np.testing.assert_allclose(next(point[1] / 2.5 for _, point in decoded), 30.3, atol=0.2)
    # a level without any peak above min_peak stays unassigned; the others keep their discs
    probabilities[:, 3] *= 0.1
    decoded = decode_levels(probabilities, grid, [[0, 1]] * 5, min_peak=0.1)
    assert decoded[3] is None and decoded[4] is not None
    assert decode_levels(probabilities, grid, [[]] * 5, min_peak=0.1) == [None] * 5


def test_evaluation_summary_is_strict_json_when_a_figure_is_undefined() -> None:
    """Regression: a condition without truth points (or without a found point) gave NaN, which is not JSON."""
    evaluation = pd.DataFrame({
        "study_id": [1, 1], "condition": ["spinal_canal_stenosis", "left_subarticular_stenosis"],
        "level": ["l1_l2", "l1_l2"], "found": [True, False], "error_mm": [1.0, np.nan],
        "in_plane_error_mm": [0.5, np.nan], "same_instance": [True, False], "wrong_level": [False, False]})
    summary = json.loads(json.dumps(summarise_evaluation(evaluation), allow_nan=False))
    assert summary["spinal_canal_stenosis"]["error_mm_median"] == 1.0
    assert summary["neural_foraminal_narrowing"] == {"points": 0, **dict.fromkeys(
        ("found_share", "error_mm_median", "error_mm_p95", "in_plane_error_mm_median", "in_plane_error_mm_p95",
         "same_instance_share", "wrong_level_share"))}
    assert summary["subarticular_stenosis"]["found_share"] == 0.0
    assert summary["subarticular_stenosis"]["error_mm_median"] is None


#: Every augmentation on, strongly (noise and the transfer curve off where a test finds the spot by brightness).
STRONG = LocalizerAugment(rotation_deg=30, scale=0.3, shift=0.3, gamma=0.5, contrast=0.3, noise_sd=0.0,
                          bias_field=0.5, intensity_curve=0.0, blur_mm=3.0)


def _spots(size: int = 64) -> tuple[torch.Tensor, torch.Tensor, list[tuple[int, int]]]:
    """A batch of 8 dark images ``(8, 3, size, size)``, each with one bright Gaussian spot, and targets ``(8, 2,
    size, size)`` with the same spot in channel 0; the spots' (row, col)."""
    rng = np.random.default_rng(0)
    index = np.arange(size)
    x, y, centres = [], [], []
    for _ in range(8):
        row, col = rng.integers(size // 4, 3 * size // 4, size=2)
        spot = np.exp(-((index[:, None] - row) ** 2 + (index[None, :] - col) ** 2) / (2 * 2.0**2))
        x.append(np.stack([0.1 + 0.8 * spot] * 3))
        y.append(np.stack([spot, np.zeros_like(spot)]))
        centres.append((int(row), int(col)))
    return torch.tensor(np.array(x), dtype=torch.float32), torch.tensor(np.array(y), dtype=torch.float32), centres


def _peak(image: np.ndarray) -> np.ndarray:
    return np.array(np.unravel_index(int(np.argmax(image)), image.shape))


@pytest.mark.parametrize("kind", ["sagittal", "axial"])
def test_augmentation_moves_the_targets_with_the_image(kind):
    x, y, centres = _spots()
    out_x, out_y = augment(x, y, kind, torch.Generator().manual_seed(1), STRONG, pixel_mm=1.0)
    moved = 0
    for i, centre in enumerate(centres):
        target = out_y[i].sum(0).numpy()  # an axial mirror moves the point to the other side's channel
        assert target.max() > 0.5
        image_peak, target_peak = _peak(out_x[i, 1].numpy()), _peak(target)
        assert np.abs(image_peak - target_peak).max() <= 1
        moved += int(np.abs(target_peak - np.array(centre)).max() > 2)
    assert moved >= 6  # the draws did move the spots


def test_intensity_augmentations_act_on_the_image_only():
    x, y, _ = _spots()
    plain = LocalizerAugment(gamma=0, contrast=0, noise_sd=0)
    real_mri = plain.model_copy(update=dict(bias_field=0.5, intensity_curve=1.0, blur_mm=3.0, noise_sd=0.05))
    x0, y0 = augment(x, y, "sagittal", torch.Generator().manual_seed(2), plain, pixel_mm=1.0)
    x1, y1 = augment(x, y, "sagittal", torch.Generator().manual_seed(2), real_mri, pixel_mm=1.0)
    assert torch.equal(y0, y1)  # the geometric draws come first, so the same generator moves both alike
    assert not torch.allclose(x0, x1)
    assert bool(torch.isfinite(x1).all())


def test_a_random_transfer_curve_can_reorder_tissue_brightness():
    x = torch.linspace(0, 1, 101).view(1, 1, 1, 101).repeat(16, 1, 1, 1)
    y = torch.zeros(16, 1, 1, 101)
    settings = LocalizerAugment(rotation_deg=0, scale=0, shift=0, gamma=0, contrast=0, noise_sd=0,
                                intensity_curve=1.0)
    out, _ = augment(x, y, "sagittal", torch.Generator().manual_seed(3), settings, pixel_mm=1.0)
    out = out[:, 0, 0, 10:91]  # away from the resampled border
    assert float(out.min()) >= 0.0 and float(out.max()) <= 1.0
    increasing = (out.diff(dim=1) >= -1e-6).all(dim=1)
    assert not bool(increasing.all())  # some curves are not monotone: bright and dark tissue can swap
