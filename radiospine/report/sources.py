"""What a report's study pages are made from, for ``radiospine report`` and ``radiospine grade`` alike: ROI
thumbnails cut from the images on demand (:class:`CropThumbnails`) and exact TreeSHAP explanations of the
predictions (:func:`shap_explanations`)."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import pandas as pd

from radiospine import vocab
from radiospine.config import RoiConfig
from radiospine.report.inputs import ConditionExplanation, Thumbnail


class CropThumbnails:
    """``(study_id, condition, level) -> [Thumbnail]``: ROI crops cut on demand, one study kept in memory.

    ``coords``: the split's ROI centres (:func:`radiospine.roi.centres.roi_centres`).
    """

    def __init__(self, data_dir: Path, split: str, coords: pd.DataFrame, roi: RoiConfig) -> None:
        self.data_dir, self.split, self.roi, self.coords = Path(data_dir), split, roi, coords
        self._study = lru_cache(maxsize=1)(self._crops_of_study)

    def _crops_of_study(self, study_id: int) -> dict[tuple[str, str], list]:
        from radiospine.roi.cut import crops_for_study

        crops = crops_for_study(self.data_dir, self.split, study_id, self.coords, self.roi, failures=[])
        by_key: dict[tuple[str, str], list] = {}
        for crop in crops:
            by_key.setdefault((crop.roi.condition, crop.roi.level), []).append(crop)
        return by_key

    def __call__(self, study_id: int, condition: str, level: str) -> list[Thumbnail]:
        return [Thumbnail.from_crop(crop) for crop in self._study(int(study_id)).get((condition, level), [])]


def shap_explanations(models, features: pd.DataFrame) -> dict[str, ConditionExplanation]:
    """Exact TreeSHAP of each model group's first member on ``features``' rows (a
    :class:`radiospine.models.condition_models.TrainedModels` and a feature table), keyed by group name. The
    explanation's model names that member with its blend weight and the other members' (the other boosters, the
    CNN head), which the explained margin does not include."""
    normal_mild, moderate, severe = vocab.SEVERITY_LABELS
    explanations = {}
    for group_model, rows, X in models.design_matrices(features):
        name, estimator = next(iter(group_model.members.items()))
        formulation = name.rsplit("_", 1)[-1]
        if formulation == "ordinal":
            outputs = [(f"{name}: log-odds of P(> {normal_mild})", f"{moderate} or {severe}"),
                       (f"{name}: log-odds of P(> {moderate})", severe)]
        else:
            outputs = [(f"{name}: margin of {label}", label) for label in vocab.SEVERITY_LABELS]
        keys = features.loc[rows, list(vocab.KEY_COLUMNS)].reset_index(drop=True)
        weights = models.blend_weights.get(group_model.group.base, {name: 1.0})
        others = ", ".join(f"{other} {weight:.2f}" for other, weight in weights.items() if other != name)
        model = f"{name}, blend weight {weights.get(name, 0.0):.2f}" + (
            f" (blended with {others}, then calibrated)" if others else "")
        explanations[group_model.group.name] = ConditionExplanation.from_contributions(
            group_model.group.name, model, list(group_model.feature_columns), X, keys, estimator.shap_values(X),
            outputs)
    return explanations
