"""Feature column names -> what they measure: extractor, view, family, filter, and a readable label.

Column names are split into extractor, view and name by :func:`radiospine.features.columns.parse_column`; this
module reads what the parts mean::

    radiomics__<view>__[mean25d_]<filter>_<class>_<feature>   radiomics__sagittal_t2__original_glcm_Contrast
        family  "radiomics/<class>"   (radiomics/glcm, radiomics/firstorder, radiomics/shape2D, ...)
        filter  pyradiomics' image type: "original", "log-sigma-1-0-mm-2D", "wavelet-LH", ...
        slices  "centre slice", or "2.5D mean" for the ``mean25d_`` slice mean
    radiomics__<view>__n_slices                                  family "radiomics/slices used"
    cnn__<view>__prob_<severity>                                 family "cnn probability": the CNN's
                                                                 out-of-fold probability of a severity on
                                                                 that view's crop ("CNN probability of
                                                                 Severe, Sagittal T1 crop")
    key__level, key__side_left                                   family "level and side" (added by the model
                                                                 driver, :mod:`radiospine.models.condition_models`)
    <extractor>__<view>__<name> of any other extractor           family "<extractor>"

A name that does not follow these forms (status columns included) is kept whole, with family ``"other"``; nothing
fails on a strange name (feature names are shown escaped, whatever they hold).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

from radiospine import vocab
from radiospine.features.columns import CNN_PROBABILITY_FEATURES, LEVEL_FEATURE, SIDE_FEATURE, parse_column
from radiospine.features.radiomics import MEAN_PREFIX, N_SLICES_FEATURE

#: pyradiomics' feature classes (``shape`` for 3D input, ``shape2D`` for 2D).
RADIOMICS_CLASSES: frozenset[str] = frozenset(
    {"shape", "shape2D", "firstorder", "glcm", "glrlm", "glszm", "gldm", "ngtdm"})
CNN_FAMILY = "cnn probability"
KEY_FAMILY = "level and side"
OTHER_FAMILY = "other"
#: The filter of features that have none (CNN, key and unparsed features).
NO_FILTER = "none"
_KEY_LABELS = {LEVEL_FEATURE: "level (0 = L1/L2 ... 4 = L5/S1)", SIDE_FEATURE: "side (1 = left, 0 = right)"}


@dataclass(frozen=True)
class FeatureName:
    """A parsed feature column name.

    Attributes:
        raw: the column name as given.
        extractor: ``"radiomics"``, ``"cnn"``, ``"key"`` or another extractor's name (``""`` if unparsed).
        view: the crop view (``"sagittal_t2"``) or None.
        family: see the module docstring.
        filter: the radiomics image filter, or :data:`NO_FILTER`.
        label: a readable name (``"radiomics, Sagittal T2/STIR: original glcm Contrast"``).
        short: a compact name for plot axes (at most 48 characters).
    """

    raw: str
    extractor: str
    view: str | None
    family: str
    filter: str
    label: str
    short: str


@lru_cache(maxsize=65536)
def parse_feature_name(name: str) -> FeatureName:
    """Parse one feature column name (see the module docstring for the forms); never raises."""
    try:
        column = parse_column(name)
    except ValueError:
        column = None
    if column is not None and column.kind == "key":
        label = _KEY_LABELS.get(name, column.name)
        return FeatureName(name, column.extractor, None, KEY_FAMILY, NO_FILTER, label, _shorten(label))
    if column is None or column.kind != "feature":
        return FeatureName(name, "", None, OTHER_FAMILY, NO_FILTER, name, _shorten(name))
    extractor, view, feature = column.extractor, column.view, column.name
    where = f"{extractor}, {vocab.SERIES_OF_VIEW.get(view, view)}"
    short_view = view.replace("sagittal_", "sag ").replace("axial_", "ax ")
    if extractor == "cnn" and feature.startswith("prob_"):
        # RSNA: a severity (CNN_PROBABILITY_FEATURES); another task: its CNN target's grade (prob_3: "grade 3").
        severity = (vocab.SEVERITY_LABELS[CNN_PROBABILITY_FEATURES.index(feature)]
                    if feature in CNN_PROBABILITY_FEATURES else f"grade {feature.removeprefix('prob_')}")
        label = f"CNN probability of {severity}, {vocab.SERIES_OF_VIEW.get(view, view)} crop"
        return FeatureName(name, extractor, view, CNN_FAMILY, NO_FILTER, label,
                           _shorten(f"CNN P({severity}) {short_view}"))
    if extractor != "radiomics":
        return FeatureName(name, extractor, view, extractor, NO_FILTER, f"{where}: {feature}",
                           _shorten(f"{extractor} {short_view} {feature}"))
    if feature == N_SLICES_FEATURE:
        return FeatureName(name, extractor, view, "radiomics/slices used", NO_FILTER,
                           f"{where}: slices in the 2.5D mean", _shorten(f"{short_view} n_slices"))
    slices = ""
    if feature.startswith(MEAN_PREFIX):
        feature, slices = feature[len(MEAN_PREFIX):], " (2.5D mean)"
    pieces = feature.split("_", 2)
    if len(pieces) != 3 or pieces[1] not in RADIOMICS_CLASSES:
        return FeatureName(name, extractor, view, "radiomics/other", NO_FILTER, f"{where}: {feature}{slices}",
                           _shorten(f"{short_view} {feature}{slices and ' mean'}"))
    image_filter, feature_class, measure = pieces
    label = f"{where}: {image_filter} {feature_class} {measure}{slices}"
    short = f"{short_view} {image_filter} {feature_class} {measure}{slices and ' mean'}"
    return FeatureName(name, extractor, view, f"radiomics/{feature_class}", image_filter, label, _shorten(short))


def _shorten(text: str, limit: int = 48) -> str:
    """``text`` cut in the middle with an ellipsis when longer than ``limit`` characters."""
    if len(text) <= limit:
        return text
    head = (limit - 1) // 2
    return f"{text[:head]}\u2026{text[len(text) - (limit - 1 - head):]}"
