"""Radiomics on true 2D slices: filtered-image features, pyradiomics' own values, recorded failures, sharing."""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from features_synthetic import disc_crop, write_light_params

from radiospine.config import CONFIG_DIR, RadiomicsConfig
from radiospine.features.radiomics import MEAN_PREFIX, N_SLICES_FEATURE, RadiomicsExtractor, quiet_pyradiomics


@pytest.fixture(scope="module")
def light(tmp_path_factory) -> RadiomicsExtractor:
    return RadiomicsExtractor(write_light_params(tmp_path_factory.mktemp("params")))


def test_true_2d_keeps_log_and_wavelet_features_with_stable_names(light: RadiomicsExtractor) -> None:
    names = light.feature_names()
    prefixes = {name.split("_")[0] for name in light.slice_feature_names()}
    assert prefixes == {"original", "log-sigma-1-0-mm-3D", "wavelet-LL", "wavelet-LH", "wavelet-HL", "wavelet-HH"}
    for expected in ("original_shape2D_MeshSurface", "original_glcm_Contrast", "log-sigma-1-0-mm-3D_firstorder_Mean",
                     "wavelet-HH_glcm_JointEntropy", MEAN_PREFIX + "wavelet-LH_firstorder_Mean", N_SLICES_FEATURE):
        assert expected in names
    assert len(names) == 2 * len(light.slice_feature_names()) + 1
    # The names do not depend on the crop: crops of other sizes give exactly these features.
    for size in (24, 40):
        crop = disc_crop(1, "spinal_canal_stenosis", "l4_l5", "sagittal_t2", disc_radius_px=6, size=size,
                         mask_radius_px=8)
        [result] = light.extract([crop])
        assert result.ok and list(result.features) == names
    assert RadiomicsExtractor(light.params_path).feature_names() == names


def test_default_params_describe_every_texture_class_in_2d() -> None:
    extractor = RadiomicsExtractor(RadiomicsConfig().params_path())
    classes = {name.split("_")[1] for name in extractor.slice_feature_names()}
    assert classes == {"shape2D", "firstorder", "glcm", "glrlm", "glszm", "gldm", "ngtdm"}
    assert not any("SumAverage" in name for name in extractor.slice_feature_names())
    assert (CONFIG_DIR / "radiomics" / "original_only.yaml").is_file()
    quick = RadiomicsExtractor(CONFIG_DIR / "radiomics" / "original_only.yaml").slice_feature_names()
    assert set(quick) < set(extractor.slice_feature_names())


def test_values_are_pyradiomics_execute_on_the_2d_centre_slice(light: RadiomicsExtractor) -> None:
    crop = disc_crop(1, "left_subarticular_stenosis", "l5_s1", "axial_t2", disc_radius_px=7, seed=3)
    [result] = light.extract([crop])
    image = sitk.GetImageFromArray(crop.image[1])
    image.SetSpacing((crop.pixel_mm, crop.pixel_mm))
    mask = sitk.GetImageFromArray(crop.mask[1])
    mask.CopyInformation(image)
    with quiet_pyradiomics():
        reference = light._extractor().execute(image, mask)
    reference = {k: float(v) for k, v in reference.items() if not k.startswith("diagnostics")}
    assert list(reference) == light.slice_feature_names()
    # Texture classes run on stacks of images: sums may round in another order than pyradiomics' one-image path.
    assert {name: result.features[name] for name in reference} == pytest.approx(reference, rel=1e-9, abs=1e-12)
    with quiet_pyradiomics():
        means = light._describe_slices([(crop.image[k], crop.mask[k], crop.pixel_mm) for k in range(3)])
    assert result.features[MEAN_PREFIX + "original_glcm_Contrast"] == pytest.approx(
        np.mean([m["original_glcm_Contrast"] for m in means]), rel=1e-12)
    assert result.features[N_SLICES_FEATURE] == 3.0


def test_features_follow_the_image(light: RadiomicsExtractor) -> None:
    wide, narrow = (disc_crop(1, "spinal_canal_stenosis", "l4_l5", "sagittal_t2", disc_radius_px=r, seed=1)
                    for r in (9.0, 4.0))
    small_mask = dataclasses.replace(wide, mask=(wide.mask * 0).astype(np.uint8))
    small_mask.mask[:, 12:20, 12:20] = 1
    results = light.extract([wide, narrow, small_mask])
    assert all(r.ok for r in results)
    wide_f, narrow_f, small_f = (r.features for r in results)
    assert wide_f["original_firstorder_Mean"] > narrow_f["original_firstorder_Mean"] + 0.2
    assert wide_f["original_shape2D_PixelSurface"] == narrow_f["original_shape2D_PixelSurface"]
    assert small_f["original_shape2D_PixelSurface"] == pytest.approx(64 * 0.25)  # 8 x 8 pixels of 0.5 mm, in mm2
    assert small_f["original_shape2D_PixelSurface"] < wide_f["original_shape2D_PixelSurface"]
    assert wide_f["original_glcm_Contrast"] != narrow_f["original_glcm_Contrast"]


def test_bad_crops_are_recorded_failures_not_nan(light: RadiomicsExtractor) -> None:
    good = disc_crop(1, "spinal_canal_stenosis", "l4_l5", "sagittal_t2", disc_radius_px=6)
    constant = dataclasses.replace(good, image=np.full_like(good.image, 0.5))
    empty = dataclasses.replace(good, mask=np.zeros_like(good.mask))
    not_finite = dataclasses.replace(good, image=good.image.copy())
    not_finite.image[1, 3, 3] = np.nan
    tiny = dataclasses.replace(good, mask=np.zeros_like(good.mask))
    tiny.mask[:, 10:12, 10:12] = 1  # 4 pixels < minimumROISize 8
    results = light.extract([good, constant, empty, not_finite, tiny])
    assert results[0].ok
    assert results[1].features is None and "constant intensity inside the mask" in results[1].error
    assert results[2].features is None and "empty mask" in results[2].error
    assert results[3].features is None and "non-finite" in results[3].error
    assert results[4].features is None and "ValueError" in results[4].error and "minimum" in results[4].error.lower()


def test_a_neighbour_slice_without_mask_leaves_the_mean(light: RadiomicsExtractor) -> None:
    crop = disc_crop(1, "spinal_canal_stenosis", "l4_l5", "sagittal_t2", disc_radius_px=6, seed=2)
    crop.mask[0] = 0
    [result] = light.extract([crop])
    assert result.ok and result.features[N_SLICES_FEATURE] == 2.0
    centre_only = RadiomicsExtractor(light.params_path, slice_mean=False)
    assert centre_only.feature_names() == light.slice_feature_names()
    [centre] = centre_only.extract([crop])
    assert centre.features == {name: result.features[name] for name in light.slice_feature_names()}


def test_filtered_images_are_computed_once_per_distinct_slice(light: RadiomicsExtractor, monkeypatch) -> None:
    from radiomics import imageoperations

    calls = []
    original = imageoperations.getLoGImage

    def counting(image, mask, **kwargs):
        calls.append(image.GetSize())
        yield from original(image, mask, **kwargs)

    monkeypatch.setattr(imageoperations, "getLoGImage", counting)
    left = disc_crop(1, "left_subarticular_stenosis", "l4_l5", "axial_t2", disc_radius_px=6, seed=5)
    # The right recess drawn on the same pixels (one window for both sides): another mask, same slices.
    right_mask = np.zeros_like(left.mask)
    right_mask[:, 4:14, 18:28] = 1
    right = dataclasses.replace(left, roi=dataclasses.replace(left.roi, condition="right_subarticular_stenosis"),
                                mask=right_mask)
    other = disc_crop(1, "spinal_canal_stenosis", "l4_l5", "axial_t2", disc_radius_px=6, seed=6)
    results = light.extract([left, right, other])
    assert all(r.ok for r in results)
    assert len(calls) == 3 + 3  # 3 slices of the shared window + 3 of the other crop, not 9
    assert results[0].features != results[1].features
    # Sharing changes nothing: each crop alone gives the same values (to rounding: other stacks, other sums).
    assert light.extract([right])[0].features == pytest.approx(results[1].features, rel=1e-9, abs=1e-12)


def test_parameter_files_are_checked(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="configs/radiomics"):
        RadiomicsExtractor(tmp_path / "missing.yaml")
    three_d = tmp_path / "shape.yaml"
    three_d.write_text("featureClass:\n  shape:\n")
    with pytest.raises(ValueError, match=r"shape.yaml.*2D"):
        RadiomicsExtractor(three_d).feature_names()
    resampled = tmp_path / "resampled.yaml"
    resampled.write_text("setting:\n  resampledPixelSpacing: [1, 1]\n")
    with pytest.raises(ValueError, match=r"resampled.yaml.*resampledPixelSpacing"):
        RadiomicsExtractor(resampled).feature_names()
    typo = tmp_path / "typo.yaml"
    typo.write_text("setting:\n  binCont: 32\n")
    with pytest.raises(ValueError, match=r"typo.yaml is not a valid pyradiomics parameter file"):
        RadiomicsExtractor(typo).feature_names()


def test_pyradiomics_logger_is_quiet_only_during_calls(light: RadiomicsExtractor, caplog) -> None:
    import radiomics  # noqa: F401

    logger = logging.getLogger("radiomics")
    level = logger.level
    with caplog.at_level(logging.INFO):
        light.extract([disc_crop(1, "spinal_canal_stenosis", "l4_l5", "sagittal_t2", disc_radius_px=6)])
    assert not [r for r in caplog.records if r.name.startswith("radiomics") and r.levelno < logging.WARNING]
    assert logger.level == level
