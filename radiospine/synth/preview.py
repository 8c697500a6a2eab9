"""A picture of one study of a data folder (synthetic or real): mid-sagittal T2, parasagittal T1 and an axial
slice, with the label points drawn on them, so a person can check that it looks like a spine.

Reads only the Kaggle layout (plus ``truth/`` for test studies of a synthetic set): the series descriptions,
the coordinates and labels when there are any, and three decoded slices.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from radiospine import vocab
from radiospine.catalog import load_series_descriptions, series_dir
from radiospine.errors import MissingInputError
from radiospine.io.decode import load_volume
from radiospine.io.headers import read_series_headers
from radiospine.io.stacks import SeriesStack
from radiospine.labels import load_label_coordinates, load_train_labels

_SEVERITY_COLOURS = ("#3ddc84", "#ffb000", "#ff3030", "#9aa0a6")  # normal/mild, moderate, severe, unknown


def _find_split(data_dir: Path, study_id: int) -> str:
    for split in ("train", "test"):
        if (data_dir / f"{split}_images" / str(study_id)).is_dir():
            return split
    raise MissingInputError(f"study {study_id} is in neither {data_dir / 'train_images'} nor "
                            f"{data_dir / 'test_images'}; pick a study id from the series descriptions CSV")


def _annotations(data_dir: Path, split: str, study_id: int) -> pd.DataFrame:
    """Coordinates of the study with a ``severity`` column (0/1/2, -1 unknown); empty when there are none."""
    coordinates_path = data_dir / ("train_label_coordinates.csv" if split == "train"
                                   else "truth/test_label_coordinates.csv")
    labels_path = data_dir / ("train.csv" if split == "train" else "truth/test_labels.csv")
    if not coordinates_path.is_file():
        return pd.DataFrame(columns=["series_id", "instance_number", "condition", "level", "x", "y", "severity"])
    coordinates = load_label_coordinates(coordinates_path)
    coordinates = coordinates[coordinates["study_id"] == study_id].copy()
    severity = np.full(len(coordinates), -1)
    if labels_path.is_file():
        labels = load_train_labels(labels_path).set_index("study_id")
        if study_id in labels.index:
            row = labels.loc[study_id]
            severity = np.array([
                vocab.severity_index(row[vocab.target_column(c, lv)])
                if isinstance(row[vocab.target_column(c, lv)], str) else -1
                for c, lv in zip(coordinates["condition"], coordinates["level"])], dtype=int)
    coordinates["severity"] = severity
    return coordinates


def _stack_and_slice(stacks: list[SeriesStack], instance: int | None, fraction: float) -> tuple[SeriesStack, int]:
    """The stack and slice index holding ``instance``; else the largest stack at ``fraction`` along it."""
    if instance is not None:
        for stack in stacks:
            hits = np.flatnonzero(stack.instance_numbers == instance)
            if hits.size:
                return stack, int(hits[0])
    stack = max(stacks, key=lambda s: len(s.slices))
    return stack, round(fraction * (len(stack.slices) - 1))


def _panel(ax, data_dir: Path, split: str, study_id: int, series: pd.DataFrame, points: pd.DataFrame,
           description: str, conditions: tuple[str, ...], fraction: float, title: str) -> None:
    candidates = series[series["series_description"] == description]
    ax.set_axis_off()
    if candidates.empty:
        ax.set_title(f"{title}: no {description} series", fontsize=10)
        return
    marked = points[points["condition"].isin(conditions)]
    marked = marked[marked["series_id"].isin(candidates["series_id"])]
    series_id = int(marked["series_id"].mode().iloc[0]) if len(marked) else int(candidates["series_id"].iloc[0])
    instance = int(marked.loc[marked["series_id"] == series_id, "instance_number"].mode().iloc[0]) \
        if len(marked) else None
    stacks = read_series_headers(series_dir(data_dir, split, study_id, series_id), study_id=study_id,
                                 series_id=series_id)
    stack, index = _stack_and_slice(stacks, instance, fraction)
    image = load_volume(stack, slice(index, index + 1)).voxels[0]
    low, high = np.percentile(image, [1.0, 99.5])
    ax.imshow(image, cmap="gray", vmin=low, vmax=high, interpolation="bilinear")
    shown_instance = int(stack.instance_numbers[index])
    on_slice = points[(points["series_id"] == series_id) & (points["instance_number"] == shown_instance)]
    for point in on_slice.itertuples():
        colour = _SEVERITY_COLOURS[point.severity]
        ax.plot(point.x, point.y, marker="o", markersize=7, markerfacecolor="none", markeredgecolor=colour, mew=1.6)
        side = vocab.split_condition(point.condition).side
        text = vocab.level_to_human(point.level) + ("" if side is None else f" {side[0].upper()}")
        ax.annotate(text, (point.x, point.y), xytext=(6, -6), textcoords="offset points", color=colour, fontsize=7)
    spacing = stack.pixel_spacing
    ax.set_title(f"{title}\nseries {series_id} instance {shown_instance} ({stack.shape[1]}x{stack.shape[2]}, "
                 f"{spacing[0]:.2f} mm)", fontsize=9)


def preview_study(data_dir: str | Path, study_id: int, out_path: str | Path) -> Path:
    """Draw the study's mid-sagittal T2/STIR, parasagittal T1 and axial T2 slices with their label points.

    Points are coloured by severity (green normal/mild, amber moderate, red severe, grey unknown); the slices
    shown are the ones the points are marked on (canal, left foramen, L4/L5 or another subarticular level),
    else the middle (T2), 70% (T1) or middle (axial) slice.

    Raises:
        FileNotFoundError: the study is in neither images folder.
    """
    data_dir = Path(data_dir)
    study_id = int(study_id)
    split = _find_split(data_dir, study_id)
    descriptions = load_series_descriptions(data_dir / f"{split}_series_descriptions.csv")
    series = descriptions[descriptions["study_id"] == study_id]
    points = _annotations(data_dir, split, study_id)
    axial_points = points[points["condition"].str.endswith(vocab.SUBARTICULAR)]
    preferred_level = "l4_l5" if (axial_points["level"] == "l4_l5").any() else None
    axial_view = axial_points[axial_points["level"] == preferred_level] if preferred_level else axial_points

    figure = Figure(figsize=(15, 5.6), dpi=110)
    FigureCanvasAgg(figure)
    axes = figure.subplots(1, 3)
    _panel(axes[0], data_dir, split, study_id, series, points, vocab.SAGITTAL_T2, (vocab.SPINAL,), 0.5,
           "Sagittal T2/STIR (canal)")
    _panel(axes[1], data_dir, split, study_id, series, points[points["condition"] != "right_" + vocab.FORAMINAL],
           vocab.SAGITTAL_T1, ("left_" + vocab.FORAMINAL,), 0.7, "Sagittal T1 (left foramina)")
    _panel(axes[2], data_dir, split, study_id, series,
           pd.concat([axial_view, points[~points["condition"].str.endswith(vocab.SUBARTICULAR)]]),
           vocab.AXIAL_T2, tuple(f"{side}_{vocab.SUBARTICULAR}" for side in vocab.SIDES), 0.5,
           f"Axial T2 ({vocab.level_to_human(preferred_level) if preferred_level else 'subarticular'})")
    figure.suptitle(f"study {study_id} ({split}); points: green normal/mild, amber moderate, red severe",
                    fontsize=10)
    figure.tight_layout()
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(out_path)
    return out_path
