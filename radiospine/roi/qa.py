"""A QA picture of one study: each series' slices that hold ROIs, with the ROI boxes and centres drawn.

One row of panels per series stack (Sagittal T2/STIR, Sagittal T1, Axial T2 ...), one panel per slice an ROI is
centred on (at most ``max_panels`` per row). Each ROI is drawn as its crop's outline (the crop size in mm,
converted to the image's pixels) and its centre, labelled with level and side; its colour says where the centre
came from (label, predicted, fallback). ROIs that could not be placed are listed under the picture.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

from radiospine import vocab
from radiospine.artifacts import atomic_path
from radiospine.catalog import scan
from radiospine.config import RoiConfig
from radiospine.errors import DataError, UserError
from radiospine.geometry import patient_to_pixel, pixel_spacing
from radiospine.roi.cut import NO_COORDINATE, place_rois, read_study_stacks

SOURCE_COLOURS = {"label": "lime", "predicted": "cyan", "fallback": "orange"}
SIDE_MARK = {"left": "L", "right": "R", None: ""}


def roi_qa_picture(data_dir: str | Path, split: str, study_id: int, coords: pd.DataFrame, config: RoiConfig,
                   out: str | Path, *, max_panels: int = 6) -> Path:
    """Draw the study's ROIs (placed from ``coords``) on its series and save a PNG at ``out``."""
    from radiospine.io.decode import load_volume

    study_id = int(study_id)
    rows = coords[coords["study_id"] == study_id]
    if rows.empty:
        raise DataError(f"the coordinates hold no point of study {study_id}: nothing to draw")
    catalog = scan(data_dir, split, study_ids=[study_id])
    if study_id not in catalog.study_ids:
        raise UserError(f"study {study_id} is not in {Path(data_dir) / f'{split}_images'}")
    descriptions = dict(zip(catalog.series["series_id"], catalog.series["series_description"]))
    unreadable: dict[int, str] = {}
    stacks = read_study_stacks(data_dir, split, study_id, sorted({int(s) for s in rows["series_id"]}), unreadable)
    rois, failures = place_rois(study_id, rows, stacks, config, unreadable)

    panels: dict[tuple[int, int], dict[int, list]] = {}
    for roi in rois:
        centre_slice = roi.slice_indices[len(roi.slice_indices) // 2]
        panels.setdefault((roi.series_id, roi.stack_index), {}).setdefault(centre_slice, []).append(roi)
    order = sorted(panels, key=lambda key: (descriptions.get(key[0], ""), key))
    n_rows = max(1, len(order))
    n_cols = max([min(len(panels[key]), max_panels) for key in order], default=1)
    figure = Figure(figsize=(3.2 * n_cols, 3.4 * n_rows + 0.3 * min(len(failures), 12) / 4 + 0.6))
    FigureCanvasAgg(figure)
    for r, key in enumerate(order):
        series_id, stack_index = key
        stack = stacks[series_id][stack_index]
        for c, slice_index in enumerate(sorted(panels[key])[:max_panels]):
            axes = figure.add_subplot(n_rows, n_cols, r * n_cols + c + 1)
            image = load_volume(stack, slice(slice_index, slice_index + 1)).voxels[0]
            low, high = np.percentile(image, config.normalise_percentiles)
            axes.imshow(image, cmap="gray", vmin=low, vmax=high if high > low else low + 1)
            for roi in panels[key][slice_index]:
                _draw_roi(axes, roi, stack)
            axes.set_title(f"{descriptions.get(series_id, '?')} {series_id}/{stack_index}\n"
                           f"instance {int(stack.instance_numbers[slice_index])}", fontsize=8)
            axes.set_axis_off()
    problems = [f"{f.condition} {f.level} ({f.view}): {f.reason}" for f in failures if f.reason != NO_COORDINATE]
    missing = sum(f.reason == NO_COORDINATE for f in failures)
    footer = f"study {study_id}: {len(rois)} ROIs; {missing} (condition, level) without a coordinate"
    figure.text(0.01, 0.005, "\n".join([footer, *problems[:12]]), fontsize=7, va="bottom")
    figure.tight_layout(rect=(0, 0.02 + 0.012 * min(len(problems), 12), 1, 1))
    out = Path(out)
    with atomic_path(out) as tmp:
        figure.savefig(tmp, format="png", dpi=100)
    return out


def _draw_roi(axes, roi, stack) -> None:
    """The ROI's crop outline (axis-aligned in the image: crops follow the image rows and columns) and centre."""
    side = vocab.split_condition(roi.condition).side
    colour = SOURCE_COLOURS.get(roi.source, "red")
    _, x, y = patient_to_pixel(stack.affine, np.asarray(roi.centre_lps)[None, :])
    row_mm, col_mm = pixel_spacing(stack.affine)
    height, width = roi.size_mm[0] / row_mm, roi.size_mm[1] / col_mm
    axes.add_patch(Rectangle((x[0] - width / 2, y[0] - height / 2), width, height, fill=False, edgecolor=colour,
                             linewidth=0.8))
    axes.plot([x[0]], [y[0]], marker="+", color=colour, markersize=6)
    label = f"{vocab.level_to_human(roi.level)}{SIDE_MARK[side]}"
    if roi.condition == vocab.SPINAL and roi.view == "axial_t2":
        label = f"canal {label}"
    axes.text(x[0] + width / 2 + 2, y[0], label, color=colour, fontsize=6, va="center")
