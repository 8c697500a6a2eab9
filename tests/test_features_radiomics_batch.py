"""pyradiomics' texture classes on stacks of images give pyradiomics' own values, one image at a time, in its order."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import SimpleITK as sitk

from radiospine.features import radiomics_batch
from radiospine.features.radiomics import quiet_pyradiomics
from radiospine.features.radiomics_batch import TextureInput, texture_features

ALL_CLASSES = {"firstorder": None, "glcm": None, "glrlm": None, "glszm": None, "gldm": None, "ngtdm": None}
SETTINGS = {"label": 1, "binCount": 32}


def _input(pixels: np.ndarray, mask: np.ndarray, settings: dict | None = None, spacing: float = 0.5
           ) -> TextureInput:
    return TextureInput(np.asarray(pixels, dtype=np.float32), np.asarray(mask, dtype=bool), (spacing, spacing),
                        dict(settings or SETTINGS))


def _textured(seed: int, size: int, radius: float, levels: int | None = None) -> TextureInput:
    """A disc mask on a noisy striped image (``levels``: quantise the image to so many values)."""
    rng = np.random.default_rng(seed)
    rows, cols = np.mgrid[:size, :size]
    pixels = 0.5 + 0.1 * rng.standard_normal((size, size)) + 0.2 * np.sin(rows / rng.uniform(2, 8) + cols / 9)
    if levels is not None:
        pixels = np.round(pixels * levels) / levels
    mask = (rows - size / 2) ** 2 + (cols - size / 2) ** 2 <= radius ** 2
    return _input(pixels, mask)


def _pyradiomics(item: TextureInput, enabled: dict) -> dict[str, float]:
    """pyradiomics' own computeFeatures on one image, names as texture_features gives them."""
    from radiomics import featureextractor

    image = sitk.GetImageFromArray(item.image)
    image.SetSpacing(item.spacing)
    mask = sitk.GetImageFromArray(item.mask.astype(np.uint8) * item.settings.get("label", 1))
    mask.CopyInformation(image)
    with quiet_pyradiomics():
        extractor = featureextractor.RadiomicsFeatureExtractor({"setting": dict(item.settings)})
        extractor.enabledFeatures = dict(enabled)
        values = extractor.computeFeatures(image, mask, "original", **item.settings)
    return {name.removeprefix("original_"): float(value) for name, value in values.items()}


def _assert_same(ours: list[dict[str, float]], inputs: list[TextureInput], enabled: dict) -> None:
    for values, item in zip(ours, inputs, strict=True):
        reference = _pyradiomics(item, enabled)
        assert list(values) == list(reference)  # same features, same order
        assert values == pytest.approx(reference, rel=1e-9, abs=1e-12, nan_ok=True)


def _assert_close(ours: list[dict[str, float]], reference: list[dict[str, float]]) -> None:
    assert len(ours) == len(reference)
    for values, expected in zip(ours, reference):
        assert list(values) == list(expected)
        assert values == pytest.approx(expected, rel=1e-9, abs=1e-12)


def test_every_class_matches_pyradiomics_image_by_image() -> None:
    inputs = [_textured(seed, size, radius) for seed, (size, radius) in
              enumerate([(24, 6), (40, 12), (60, 25), (33, 9.5), (48, 20)])]
    inputs.append(_textured(9, 30, 10, levels=3))  # few grey levels: most GLCM rows are empty
    with quiet_pyradiomics():
        ours = texture_features(inputs, ALL_CLASSES)
    assert len(ours[0]) > 80 and {name.split("_")[0] for name in ours[0]} == set(ALL_CLASSES)
    _assert_same(ours, inputs, ALL_CLASSES)


def test_filtered_images_and_mixed_settings_match_pyradiomics() -> None:
    from radiomics import imageoperations

    base = _textured(4, 40, 14)
    inputs = [base]
    image = sitk.GetImageFromArray(base.image)
    image.SetSpacing(base.spacing)
    for filtered, _, arguments in [*imageoperations.getLoGImage(image, None, sigma=[1.0, 2.0], **SETTINGS),
                                   *imageoperations.getWaveletImage(image, None, **SETTINGS)]:
        inputs.append(TextureInput(sitk.GetArrayFromImage(filtered), base.mask, base.spacing, arguments))
    inputs.append(replace(base, settings={"label": 1, "binCount": 8}))
    inputs.append(replace(base, settings={"label": 2, "binWidth": 0.05, "distances": [1, 2]}))
    inputs.append(replace(base, spacing=(0.8, 0.8)))
    with quiet_pyradiomics():
        ours = texture_features(inputs, ALL_CLASSES)
    _assert_same(ours, inputs, ALL_CLASSES)


def test_special_images_take_pyradiomics_path() -> None:
    rows, cols = np.mgrid[:12, :5]
    column = _input(np.sin(rows * 1.3) + cols, cols == 2)  # one column: the horizontal and diagonal GLCM angles
    #                                                       are empty, pyradiomics drops them
    one_level = replace(_textured(2, 30, 9), settings={"label": 1, "binWidth": 100.0})  # MCC = 1 by definition
    weighted = replace(_textured(3, 30, 9), settings={"label": 1, "binCount": 16, "weightingNorm": "euclidean"})
    inputs = [_textured(1, 30, 9), column, one_level, weighted]
    with quiet_pyradiomics():
        ours = texture_features(inputs, ALL_CLASSES)
    _assert_same(ours, inputs, ALL_CLASSES)
    assert ours[2]["glcm_MCC"] == 1.0


def test_named_and_deprecated_features_follow_pyradiomics() -> None:
    enabled = {"shape2D": None, "glcm": ["Contrast", "Dissimilarity", "MCC", "Idmn"],
               "firstorder": ["StandardDeviation", "Mean", "Entropy"]}
    inputs = [_textured(seed, 30, 10) for seed in range(3)]
    with quiet_pyradiomics():
        ours = texture_features(inputs, enabled)
    assert list(ours[0]) == ["glcm_Contrast", "glcm_MCC", "glcm_Idmn", "firstorder_StandardDeviation",
                             "firstorder_Mean", "firstorder_Entropy"]
    _assert_same(ours, inputs, {name: value for name, value in enabled.items() if name != "shape2D"})


def test_small_stacks_and_failing_getters_give_the_same_values(monkeypatch) -> None:
    inputs = [_textured(seed, 36, 11) for seed in range(7)]
    enabled = {"firstorder": None, "glcm": None}
    with quiet_pyradiomics():
        together = texture_features(inputs, enabled)
        monkeypatch.setattr(radiomics_batch, "_MAX_BATCH_ENTRIES", 1)  # one image per stack
        _assert_close(texture_features(inputs, enabled), together)

        from radiomics.glcm import RadiomicsGLCM

        original = RadiomicsGLCM.getContrastFeatureValue
        calls = []

        def fails_on_stacks(self):
            calls.append(self.P_glcm.shape[0])
            if self.P_glcm.shape[0] > 1:
                raise FloatingPointError("boom")
            return original(self)

        monkeypatch.setattr(radiomics_batch, "_MAX_BATCH_ENTRIES", 2_000_000)
        monkeypatch.setattr(RadiomicsGLCM, "getContrastFeatureValue", fails_on_stacks)
        per_image = texture_features(inputs, enabled)
    assert calls == [len(inputs)] + [1] * len(inputs)  # the stack failed, then each image alone
    _assert_close(per_image, together)
