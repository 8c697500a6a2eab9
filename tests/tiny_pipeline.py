"""The smallest settings that still run every stage end to end (tiny localiser and CNN, original-only radiomics,
2 folds, 20 boosting rounds): ``--set`` values for tests that train a whole work folder in seconds."""

from __future__ import annotations

TINY_PIPELINE = [
    "localizer.epochs=1", "localizer.base_channels=4", "localizer.depth=2", "localizer.sagittal_grid_px=32",
    "localizer.sagittal_grid_mm=10", "localizer.axial_grid_px=32", "localizer.axial_grid_mm=4",
    "localizer.sagittal_samples_per_epoch=8", "localizer.axial_samples_per_epoch=8",
    "localizer.validation_samples=8", "localizer.batch_size=4",
    "localizer.device=cpu",
    "features.radiomics.params=radiomics/original_only.yaml", "features.radiomics.slice_mean=false",
    "features.cnn.epochs=1", "features.cnn.folds=2", "features.cnn.input_size=32", "features.cnn.widths=[8,16]",
    "features.cnn.embedding_size=4", "features.cnn.device=cpu",
    "models.n_folds=2", "models.gbm.n_estimators=20", "models.gbm.min_child_samples=3",
]


def set_options(settings: list[str]) -> list[str]:
    """``["a=1", "b=2"]`` -> ``["--set", "a=1", "--set", "b=2"]``."""
    return [token for setting in settings for token in ("--set", setting)]
