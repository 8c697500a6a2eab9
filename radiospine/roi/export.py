"""Export ROI crops for other models: PNG images, an index CSV and a ``dataset.json`` of image-text pairs.

Layout of ``OUT``::

    OUT/images/<study_id>/<condition>__<level>__<view>.png   the crop's centre slice, 8-bit grey (0..1 -> 0..255)
    OUT/index.csv        one row per crop: path (relative to OUT), keys, view, series, source, centre (LPS mm),
                         pixel_mm, size, severity (train) and text
    OUT/failures.csv     the (condition, level, view) that could not be cut, and why
    OUT/dataset.json     [{"image": "images/...png", "text": "L4/L5 spinal canal stenosis: Moderate", ...}, ...]
                         for crops with a known severity (the train split); without labels the text has no grade

The crops are those :func:`radiospine.roi.cut.crops_for_study` cuts at :func:`radiospine.roi.centres.roi_centres`.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from radiospine import vocab
from radiospine.artifacts import atomic_path, atomic_write_text
from radiospine.config import RoiConfig
from radiospine.roi.centres import roi_centres
from radiospine.roi.cut import NO_COORDINATE, RoiFailure, crops_for_study
from radiospine.roi.types import RoiCrop

log = logging.getLogger(__name__)

INDEX_COLUMNS = ["path", "study_id", "series_id", "stack_index", "condition", "level", "view", "source", "centre_x",
                 "centre_y", "centre_z", "pixel_mm", "rows", "cols", "severity", "text"]


def crop_text(condition: str, level: str, severity: str | None) -> str:
    """``("spinal_canal_stenosis", "l4_l5", "Moderate")`` -> ``"L4/L5 spinal canal stenosis: Moderate"``."""
    text = f"{vocab.level_to_human(level)} {condition.replace('_', ' ')}"
    return f"{text}: {severity}" if severity else text


def crop_png(crop: RoiCrop) -> np.ndarray:
    """The centre slice of a crop as ``(rows, cols)`` uint8."""
    centre = crop.image[crop.image.shape[0] // 2]
    return np.round(np.clip(centre, 0.0, 1.0) * 255).astype(np.uint8)


def export_crops(data_dir: str | Path, split: str, work_dir: str | Path, out_dir: str | Path,
                 config: RoiConfig) -> pd.DataFrame:
    """Write every crop of a split (see the module docstring); returns the index."""
    from radiospine.labels import labels_to_long, load_train_labels

    data_dir, out_dir = Path(data_dir), Path(out_dir)
    coords = roi_centres(data_dir, split, work_dir, config)
    severities: dict[tuple[int, str, str], str] = {}
    labels_path = data_dir / "train.csv"
    if split == "train" and labels_path.is_file():
        long = labels_to_long(load_train_labels(labels_path)).dropna(subset=["severity"])
        severities = {(int(r.study_id), r.condition, r.level): vocab.SEVERITY_LABELS[int(r.severity)]
                      for r in long.itertuples()}
    rows, failures = [], []
    study_ids = sorted({int(s) for s in coords["study_id"]})
    for number, study_id in enumerate(study_ids, 1):
        study_failures: list[RoiFailure] = []
        crops = crops_for_study(data_dir, split, study_id, coords, config, failures=study_failures)
        failures.extend(f for f in study_failures if f.reason != NO_COORDINATE)
        for crop in crops:
            roi = crop.roi
            relative = Path("images") / str(study_id) / f"{roi.condition}__{roi.level}__{roi.view}.png"
            with atomic_path(out_dir / relative) as tmp:
                Image.fromarray(crop_png(crop)).save(tmp, format="PNG")
            severity = severities.get((study_id, roi.condition, roi.level))
            rows.append(dict(path=relative.as_posix(), study_id=study_id, series_id=roi.series_id,
                             stack_index=roi.stack_index, condition=roi.condition, level=roi.level, view=roi.view,
                             source=roi.source, centre_x=roi.centre_lps[0], centre_y=roi.centre_lps[1],
                             centre_z=roi.centre_lps[2], pixel_mm=crop.pixel_mm, rows=crop.image.shape[1],
                             cols=crop.image.shape[2], severity=severity or "",
                             text=crop_text(roi.condition, roi.level, severity)))
        log.info("exported study %s (%d/%d): %d crops, %d failures", study_id, number, len(study_ids), len(crops),
                 len(study_failures))
    index = pd.DataFrame(rows, columns=INDEX_COLUMNS)
    failure_table = pd.DataFrame([vars(f) for f in failures], columns=[*vocab.KEY_COLUMNS, "view", "reason"])
    for table, name in ((index, "index.csv"), (failure_table, "failures.csv")):
        with atomic_path(out_dir / name) as tmp:
            table.to_csv(tmp, index=False, lineterminator="\n")
    pairs = [{"image": r.path, "text": r.text, "study_id": r.study_id, "condition": r.condition, "level": r.level,
              "view": r.view} for r in index.itertuples() if r.severity or split != "train"]
    atomic_write_text(out_dir / "dataset.json", json.dumps(pairs, indent=1))
    return index
