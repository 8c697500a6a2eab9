"""The localiser's points against known coordinates: errors in patient space, per point and summarised."""

from __future__ import annotations

import numpy as np
import pandas as pd

from radiospine import vocab
from radiospine.catalog import Catalog
from radiospine.geometry import in_plane_distance
from radiospine.roi.localizer.data import placed_points, read_study_series

#: Columns of :func:`evaluate_points`' table.
EVALUATION_COLUMNS = [*vocab.KEY_COLUMNS, "found", "error_mm", "in_plane_error_mm", "same_instance", "wrong_level"]


def evaluate_points(catalog: Catalog, predicted: pd.DataFrame, truth: pd.DataFrame) -> pd.DataFrame:
    """Compare predicted coordinates with the true ones, target by target, in patient space.

    Returns one row per true (study, condition, level) (``EVALUATION_COLUMNS``). When the truth marks a target
    twice (another axial series, the neighbouring slice), the prediction is compared with the nearer mark:
    ``error_mm`` is the 3D distance in LPS mm, ``in_plane_error_mm`` the distance within that mark's image plane
    (the through-plane part removed), ``same_instance`` whether the prediction is on a marked series and
    instance, ``wrong_level`` whether the prediction lies closer to a mark of another level of the same
    condition than to the marks of its own level.
    """
    rows = []
    for study_id in sorted(set(truth["study_id"])):
        study = read_study_series(catalog, int(study_id))
        true_points = placed_points(study, truth)
        predicted_points = placed_points(study, predicted)
        for (condition, level), marks in true_points.items():
            row = dict(study_id=int(study_id), condition=condition, level=level, found=False, error_mm=np.nan,
                       in_plane_error_mm=np.nan, same_instance=False, wrong_level=False)
            if (condition, level) in predicted_points:
                prediction = predicted_points[(condition, level)][0]
                lps = prediction.lps
                errors = [float(np.linalg.norm(lps - mark.lps)) for mark in marks]
                nearest = marks[int(np.argmin(errors))]
                by_level = {other: min(float(np.linalg.norm(lps - mark.lps)) for mark in other_marks)
                            for (c, other), other_marks in true_points.items() if c == condition}
                row.update(found=True, error_mm=min(errors),
                           in_plane_error_mm=float(in_plane_distance(nearest.affine, lps, nearest.lps)[0]),
                           same_instance=any((prediction.series_id, prediction.instance_number)
                                             == (m.series_id, m.instance_number) for m in marks),
                           wrong_level=min(by_level, key=by_level.get) != level)
            rows.append(row)
    return pd.DataFrame(rows, columns=EVALUATION_COLUMNS)


def _figure(value: float, digits: int) -> float | None:
    """``value`` rounded to ``digits``, or None where it is undefined (no points, or none found): JSON has no NaN."""
    value = float(value)
    return round(value, digits) if np.isfinite(value) else None


def summarise_evaluation(evaluation: pd.DataFrame) -> dict:
    """Per base condition, per condition and overall: points, share found, error median / 95th percentile (3D and
    in-plane), share on the right instance, share at the wrong level (of the found points). A figure without
    points to compute it from (a condition without truth points, or none of its points found) is None."""
    def summary(frame: pd.DataFrame) -> dict:
        found = frame[frame["found"]]
        return {
            "points": len(frame),
            "found_share": _figure(frame["found"].mean() if len(frame) else np.nan, 4),
            "error_mm_median": _figure(found["error_mm"].median(), 2),
            "error_mm_p95": _figure(found["error_mm"].quantile(0.95), 2),
            "in_plane_error_mm_median": _figure(found["in_plane_error_mm"].median(), 2),
            "in_plane_error_mm_p95": _figure(found["in_plane_error_mm"].quantile(0.95), 2),
            "same_instance_share": _figure(found["same_instance"].mean(), 4),
            "wrong_level_share": _figure(found["wrong_level"].mean(), 4),
        }

    base = evaluation["condition"].map(lambda c: vocab.split_condition(c).base)
    result = {name: summary(evaluation[base == name]) for name in vocab.BASE_CONDITIONS}
    result.update({name: summary(evaluation[evaluation["condition"] == name]) for name in vocab.CONDITIONS
                   if name not in result})
    result["all"] = summary(evaluation)
    return result
