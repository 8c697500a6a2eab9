"""The report's figures as ``data:image/png;base64,...`` URIs (embedded, so the report needs no network).

Figures are built on :class:`matplotlib.figure.Figure` with the Agg canvas directly, never through pyplot: no
global backend is set (at import or later), no figure registry fills up, and worker processes stay independent.
They are small (``DPI`` 90) so a 100-study report stays fast and light. Text from the data (feature names) is
drawn literally: ``$`` is escaped so matplotlib's mathtext never parses it.

Thumbnails are not figures: the image is turned into RGB pixels with the mask's outline drawn in and written
with :func:`matplotlib.image.imsave` as a JPEG (quality 88, no chroma subsampling so the outline stays sharp):
MRI texture compresses four to five times better than in PNG (about 5 kB for a 96 x 96 crop instead of
20 kB), which keeps a study page with 75 thumbnails near 0.5 MB.
"""

from __future__ import annotations

import base64
import io
from collections.abc import Sequence

import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.image import imsave
from scipy import ndimage
from sklearn.metrics import confusion_matrix

from radiospine import vocab
from radiospine.report.feature_names import parse_feature_name
from radiospine.report.inputs import ConditionExplanation, ShapOutput, Thumbnail

DPI = 90
#: Colours of the severities (normal/mild, moderate, severe) and of the ROI outline.
SEVERITY_COLOURS = ("#4c9a5b", "#e3a21a", "#c0392b")
OUTLINE_RGB = (255, 64, 64)
#: Most points drawn per feature in beeswarm and dependence plots (a seeded sample of the rows).
MAX_POINTS = 2000
_CMAP = "coolwarm"


def _left_margin(labels: Sequence[str], width_inches: float, fontsize: float = 7.0) -> float:
    """The left margin (fraction of the figure's width) that fits ``labels`` at ``fontsize``."""
    longest = max((len(label) for label in labels), default=0)
    return min(0.6, (0.2 + longest * fontsize * 0.0087) / width_inches)


def figure_uri(figure: Figure) -> str:
    """``figure`` rendered as a PNG data URI."""
    FigureCanvasAgg(figure)
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=DPI)
    return png_uri(buffer.getvalue())


def png_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def jpeg_uri(jpeg: bytes) -> str:
    return "data:image/jpeg;base64," + base64.b64encode(jpeg).decode("ascii")


def plain_text(text: str) -> str:
    """``text`` with ``$`` escaped, so matplotlib draws it as given instead of parsing mathtext."""
    return str(text).replace("$", r"\$")


# --- calibration and confusion -----------------------------------------------------------------------------------


def reliability_figure(proba: np.ndarray, severity: np.ndarray, title: str, n_bins: int = 10) -> str:
    """Reliability diagrams, one panel per class: mean predicted probability vs observed frequency per bin of
    equal width, with the rows per bin as bars below.

    ``proba``: ``(n_rows, 3)`` probabilities; ``severity``: ``(n_rows,)`` true classes 0/1/2.
    """
    figure = Figure(figsize=(9.0, 3.4))
    grid = figure.add_gridspec(2, len(vocab.SEVERITIES), height_ratios=(3, 1), left=0.07, right=0.98, bottom=0.13,
                               top=0.84, wspace=0.18, hspace=0.08)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    for k, name in enumerate(vocab.SEVERITY_LABELS):
        curve = figure.add_subplot(grid[0, k])
        counts_axis = figure.add_subplot(grid[1, k], sharex=curve)
        predicted = proba[:, k]
        observed = (severity == k).astype(np.float64)
        bins = np.clip(np.digitize(predicted, edges[1:-1]), 0, n_bins - 1)
        counts = np.bincount(bins, minlength=n_bins)
        filled = counts > 0
        mean_predicted = np.bincount(bins, weights=predicted, minlength=n_bins)[filled] / counts[filled]
        frequency = np.bincount(bins, weights=observed, minlength=n_bins)[filled] / counts[filled]
        curve.plot([0, 1], [0, 1], color="#999999", linewidth=0.8, linestyle="--")
        curve.plot(mean_predicted, frequency, marker="o", markersize=3.5, color=SEVERITY_COLOURS[k])
        curve.set(xlim=(0, 1), ylim=(0, 1), title=f"{name} (n={len(predicted)})")
        curve.tick_params(labelbottom=False, labelsize=7)
        curve.title.set_fontsize(9)
        if k == 0:
            curve.set_ylabel("observed frequency", fontsize=8)
            counts_axis.set_ylabel("rows", fontsize=8)
        counts_axis.bar(edges[:-1], counts, width=edges[1] - edges[0], align="edge", color=SEVERITY_COLOURS[k],
                        alpha=0.6)
        counts_axis.set_xlabel("predicted probability", fontsize=8)
        counts_axis.tick_params(labelsize=7)
    figure.suptitle(plain_text(title), fontsize=10)
    return figure_uri(figure)


def confusion_figure(proba: np.ndarray, severity: np.ndarray, title: str) -> str:
    """Confusion matrices of the most probable class against the true class: counts and row-normalised.

    ``proba``: ``(n_rows, 3)``; ``severity``: ``(n_rows,)`` true classes 0/1/2.
    """
    classes = list(range(len(vocab.SEVERITIES)))
    counts = confusion_matrix(severity, np.argmax(proba, axis=1), labels=classes)
    totals = counts.sum(axis=1, keepdims=True)
    normalised = np.divide(counts, totals, out=np.zeros(counts.shape), where=totals > 0)
    figure = Figure(figsize=(7.2, 3.0))
    figure.subplots_adjust(left=0.11, right=0.98, bottom=0.17, top=0.82, wspace=0.45)
    names = ["Normal/\nMild", "Moderate", "Severe"]
    for position, (_matrix, what, text) in enumerate((
        (counts, "counts", lambda i, j: f"{counts[i, j]}"),
        (normalised, "row-normalised", lambda i, j: f"{normalised[i, j]:.2f}"),
    )):
        axis = figure.add_subplot(1, 2, position + 1)
        axis.imshow(normalised, cmap="Blues", vmin=0, vmax=1)
        for i in classes:
            for j in classes:
                axis.text(j, i, text(i, j), ha="center", va="center", fontsize=8,
                          color="white" if normalised[i, j] > 0.6 else "black")
        axis.set_xticks(classes, names, fontsize=7)
        axis.set_yticks(classes, names, fontsize=7)
        axis.set_xlabel("predicted (most probable)", fontsize=8)
        axis.set_ylabel("true", fontsize=8)
        axis.set_title(what, fontsize=9)
    figure.suptitle(plain_text(title), fontsize=10)
    return figure_uri(figure)


# --- SHAP -------------------------------------------------------------------------------------------------------


def importance_figure(importance: pd.DataFrame, output_names: Sequence[str], top: int = 20) -> str:
    """Horizontal bars of mean |SHAP| for the ``top`` first rows of
    :func:`radiospine.report.summaries.global_importance`, one bar per output."""
    shown = importance.head(top)
    n = len(shown)
    labels = [plain_text(parse_feature_name(f).short) for f in shown["feature"]]
    height_inches = 0.9 + 0.24 * n * max(1, len(output_names)) ** 0.5
    figure = Figure(figsize=(7.5, height_inches))
    figure.subplots_adjust(left=_left_margin(labels, 7.5), right=0.98, bottom=0.55 / height_inches,
                           top=1 - 0.15 / height_inches)
    axis = figure.add_subplot()
    height = 0.8 / len(output_names)
    positions = np.arange(n)[::-1]
    colours = ("#3b6ea8", "#d17a22", "#6a9f3a", "#8e5aa8")
    for m, name in enumerate(output_names):
        axis.barh(positions + 0.4 - height * (m + 0.5), shown[name].to_numpy(), height=height,
                  color=colours[m % len(colours)], label=plain_text(name))
    axis.set_yticks(positions, labels, fontsize=7)
    axis.set_xlabel("mean |SHAP| (margin units)", fontsize=8)
    axis.tick_params(axis="x", labelsize=7)
    axis.legend(fontsize=7, loc="lower right")
    return figure_uri(figure)


def _sample_rows(n_rows: int, limit: int = MAX_POINTS) -> np.ndarray:
    if n_rows <= limit:
        return np.arange(n_rows)
    return np.sort(np.random.default_rng(0).choice(n_rows, size=limit, replace=False))


def beeswarm_figure(explanation: ConditionExplanation, output: ShapOutput, features: Sequence[int]) -> str:
    """SHAP values per feature (one row each, ``features`` indices, most important on top): x the SHAP value, y
    jittered in proportion to the local density of points, colour the feature value's quantile (grey: missing)."""
    rows = _sample_rows(output.values.shape[0])
    labels = [plain_text(parse_feature_name(explanation.feature_names[j]).short) for j in features[::-1]]
    height_inches = 1.0 + 0.32 * len(features)
    figure = Figure(figsize=(7.5, height_inches))
    figure.subplots_adjust(left=_left_margin(labels, 7.5), right=0.88, bottom=0.55 / height_inches,
                           top=1 - 0.15 / height_inches)
    axis = figure.add_subplot()
    rng = np.random.default_rng(0)
    scatter = None
    for position, j in enumerate(features[::-1]):
        shap = output.values[rows, j]
        quantile = pd.Series(explanation.feature_values[rows, j]).rank(pct=True).to_numpy()  # NaN stays NaN
        counts, edges = np.histogram(shap, bins=40)
        density = counts[np.clip(np.digitize(shap, edges[1:-1]), 0, len(counts) - 1)] / max(counts.max(), 1)
        y = position + rng.uniform(-0.4, 0.4, size=len(shap)) * density
        missing = np.isnan(quantile)
        axis.scatter(shap[missing], y[missing], s=4, color="#aaaaaa", linewidths=0)
        scatter = axis.scatter(shap[~missing], y[~missing], s=4, c=quantile[~missing], cmap=_CMAP, vmin=0, vmax=1,
                               linewidths=0)
    axis.axvline(0.0, color="#666666", linewidth=0.6)
    axis.set_yticks(range(len(features)), labels, fontsize=7)
    axis.set_xlabel(f"SHAP value ({plain_text(output.name)})", fontsize=8)
    axis.tick_params(axis="x", labelsize=7)
    if scatter is not None:
        bar = figure.colorbar(scatter, cax=figure.add_axes((0.9, 0.55 / height_inches, 0.015,
                                                            1 - 0.7 / height_inches)))
        bar.set_label("feature value quantile (grey: missing)", fontsize=7)
        bar.ax.tick_params(labelsize=6)
    return figure_uri(figure)


def dependence_figure(explanation: ConditionExplanation, output: ShapOutput, features: Sequence[int]) -> str:
    """Feature value vs SHAP value for each of ``features`` (one panel each, 3 per row); missing values are
    counted in the panel's title."""
    rows = _sample_rows(output.values.shape[0])
    n_columns = 3
    n_rows = max(1, -(-len(features) // n_columns))
    figure = Figure(figsize=(9.0, 2.5 * n_rows))
    figure.subplots_adjust(left=0.07, right=0.98, bottom=0.5 / (2.5 * n_rows), top=1 - 0.45 / (2.5 * n_rows),
                           wspace=0.3, hspace=0.75)
    for panel, j in enumerate(features):
        axis = figure.add_subplot(n_rows, n_columns, panel + 1)
        values = explanation.feature_values[rows, j]
        shap = output.values[rows, j]
        present = ~np.isnan(values)
        axis.scatter(values[present], shap[present], s=4, color="#3b6ea8", alpha=0.6, linewidths=0)
        axis.axhline(0.0, color="#666666", linewidth=0.6)
        name = parse_feature_name(explanation.feature_names[j]).short
        axis.set_title(plain_text(name) + (f"\n({(~present).sum()} missing)" if (~present).any() else ""),
                       fontsize=7)
        axis.tick_params(labelsize=6)
        axis.set_xlabel("feature value", fontsize=7)
        if panel % n_columns == 0:
            axis.set_ylabel("SHAP value", fontsize=7)
    return figure_uri(figure)


def family_figure(by_family: pd.Series, by_filter: pd.Series, by_view: pd.Series) -> str:
    """Three bar panels of family importance (:func:`radiospine.report.summaries.family_importance`): by feature
    family, by radiomics filter, by crop view."""
    panels = (("feature family", by_family), ("image filter", by_filter), ("view", by_view))
    tallest = max(len(series) for _, series in panels)
    height_inches = 0.9 + 0.22 * min(tallest, 15)
    figure = Figure(figsize=(10.0, height_inches))
    for position, (what, series) in enumerate(panels):
        shown = series.head(15)
        labels = [plain_text(str(name)) for name in shown.index]
        left = position / 3 + _left_margin(labels, 10.0)
        axis = figure.add_axes((left, 0.55 / height_inches, (position + 1) / 3 - left - 0.015,
                                1 - 0.85 / height_inches))
        axis.barh(np.arange(len(shown))[::-1], shown.to_numpy(), color="#3b6ea8")
        axis.set_yticks(np.arange(len(shown))[::-1], labels, fontsize=7)
        axis.set_title(f"by {what}", fontsize=9)
        axis.set_xlabel("mean |summed SHAP|", fontsize=7)
        axis.tick_params(axis="x", labelsize=6)
    return figure_uri(figure)


# --- thumbnails ---------------------------------------------------------------------------------------------------


def thumbnail_uri(thumbnail: Thumbnail) -> str:
    """The thumbnail's image (clipped to [0, 1], grey) with the outline of its mask in red, as a JPEG data URI."""
    grey = np.rint(np.clip(np.nan_to_num(thumbnail.image.astype(np.float64)), 0.0, 1.0) * 255).astype(np.uint8)
    rgb = np.repeat(grey[:, :, np.newaxis], 3, axis=2)
    if thumbnail.mask is not None:
        inside = thumbnail.mask.astype(bool)
        outline = inside & ~ndimage.binary_erosion(inside, border_value=0)
        rgb[outline] = OUTLINE_RGB
    buffer = io.BytesIO()
    imsave(buffer, rgb, format="jpeg", pil_kwargs={"quality": 88, "subsampling": 0})
    return jpeg_uri(buffer.getvalue())
