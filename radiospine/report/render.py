"""Render :class:`~radiospine.report.inputs.ReportInputs` into a folder of self-contained HTML pages.

Layout (all links relative, so the folder can be zipped and opened anywhere, with no network)::

    index.html                  overview: data set, CV metrics, calibration, confusion matrices, model card,
                                provenance, links to the pages below
    conditions/<group>.html     one per model group: global SHAP importance, beeswarm, dependence plots,
                                feature families, top features
    studies/index.html          every shown study, linked
    studies/<study_id>.html     one per study: series, the 25 predictions as a grid, and per condition and level
                                the ROI thumbnails, a waterfall of the top SHAP contributions and one plain line

Pages are jinja2 templates (``templates/``) with autoescaping on: every string from the data (series
descriptions, feature names, model card values) is escaped, so ``<script>`` in a DICOM header shows as text.
CSS is inline; figures and thumbnails are PNG data URIs; waterfalls are drawn in HTML/CSS (no image per row).
Files are written atomically; pages of studies or groups no longer in the report are removed.

:data:`PAGE_SECTIONS` lists the ``<section id=...>`` each kind of page holds (the browser check looks for them).
"""

from __future__ import annotations

import datetime as _dt
import json
import logging
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import jinja2
import numpy as np
import pandas as pd
from joblib import Parallel, delayed

from radiospine import __version__, metrics, vocab
from radiospine.artifacts import atomic_write_text, library_versions
from radiospine.report import plots, summaries
from radiospine.report.inputs import (
    ConditionExplanation,
    ReportInputs,
    Thumbnail,
    ThumbnailSource,
)

logger = logging.getLogger(__name__)

#: The sections of each kind of page, by ``id``.
PAGE_SECTIONS: dict[str, tuple[str, ...]] = {
    "overview": ("dataset", "cv", "calibration", "confusion", "model-card", "provenance"),
    "condition": ("model", "importance", "beeswarm", "dependence", "families", "top-features"),
    "studies": ("studies",),
    "study": ("series", "predictions", "rows"),
}
#: The sections of ``radiospine grade``'s summary page (:func:`render_grade_summary`), by ``id``.
GRADE_SECTIONS: tuple[str, ...] = ("export", "studies", "skipped")
TOP_IMPORTANCE = 20
TOP_BEESWARM = 15
TOP_DEPENDENCE = 6
TOP_TABLE = 40
TOP_WATERFALL = 8
#: A model card or provenance value whose JSON is longer than this is shown folded.
FOLD_JSON_CHARS = 160
_STUDY_PAGE = re.compile(r"^\d+\.html$")


@dataclass(frozen=True, eq=False)
class _Row:
    """One (condition, level) of a study page (its thumbnails are fetched when the page is written)."""

    condition: str
    level: str
    anchor: str
    title: str
    probabilities: tuple[float, float, float]
    predicted: str
    truth: str | None
    finding: str
    sentence: str
    waterfall: summaries.Waterfall | None


@dataclass(frozen=True, eq=False)
class _StudyPage:
    study_id: int
    previous_id: int | None
    next_id: int | None
    series: list[dict[str, Any]]
    rows: list[_Row]


def render_report(inputs: ReportInputs, out_dir: str | Path, *, jobs: int = 1) -> Path:
    """Write the report into ``out_dir`` (created) and return the path of its ``index.html``.

    ``jobs``: processes rendering the study pages (thumbnails and templating); 1 renders in this process. With
    more, ``inputs.thumbnails`` is pickled (cloudpickle) once per process: let it load crops lazily rather than
    hold every image.
    """
    out_dir = Path(out_dir)
    written_at = _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")
    groups = list(inputs.explanations)
    scored, n_unscored = summaries.scored_rows(inputs.labels, inputs.oof_predictions)
    common = {"title": inputs.title, "groups": groups, "written_at": written_at}

    _write(out_dir / "index.html", _template("overview.html").render(
        **common, root="", sections=PAGE_SECTIONS["overview"], **_overview_context(inputs, scored, n_unscored,
                                                                                  written_at)))
    for group, explanation in inputs.explanations.items():
        _write(out_dir / "conditions" / f"{group}.html", _template("condition.html").render(
            **common, root="../", sections=PAGE_SECTIONS["condition"], **_condition_context(explanation)))
    _remove_stale(out_dir / "conditions", {f"{group}.html" for group in groups}, lambda name: name.endswith(".html"))

    n_pages = _render_studies(inputs, out_dir, common, jobs)
    logger.info("report written to %s: %d condition pages, %d study pages", out_dir, len(groups), n_pages)
    return out_dir / "index.html"


def render_study_pages(inputs: ReportInputs, out_dir: str | Path, *, jobs: int = 1) -> Path:
    """Only the study pages of the report: ``studies/index.html`` and ``studies/<study_id>.html`` in ``out_dir``
    (``radiospine grade``, whose own ``index.html`` summarises the export). ``inputs``' labels, out-of-fold
    predictions and CV scores are not shown (they may be empty). Returns the path of ``studies/index.html``."""
    out_dir = Path(out_dir)
    common = {"title": inputs.title, "groups": [],
              "written_at": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")}
    _render_studies(inputs, out_dir, common, jobs)
    return out_dir / "studies" / "index.html"


def render_grade_summary(out_dir: str | Path, *, title: str, facts: Sequence[tuple[str, Any]],
                         studies: Sequence[Mapping[str, Any]], skipped: Sequence[Mapping[str, Any]]) -> Path:
    """``out_dir/index.html`` of ``radiospine grade``: the export's facts, per study its series (type, whether
    used, and why), its findings, links to its page and files, and every file not used with the reason.

    ``studies``: per study ``study_id``, ``study_date``, ``study_description``, ``page`` (a study page exists),
    ``series`` (rows of :data:`radiospine.exports.SERIES_COLUMNS`), ``missing_views`` and ``findings`` (``finding``,
    the three probabilities, ``source``, ``reason``). ``skipped``: ``study_id``, ``kind``, ``path``, ``reason``.
    """
    out_dir = Path(out_dir)
    html = _template("grade.html").render(
        title=title, groups=[], root="", written_at=_dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        sections=GRADE_SECTIONS, facts=list(facts), studies=list(studies), skipped=list(skipped))
    _write(out_dir / "index.html", html)
    return out_dir / "index.html"


def _render_studies(inputs: ReportInputs, out_dir: Path, common: Mapping[str, Any], jobs: int) -> int:
    """Write ``studies/index.html`` and one page per study; returns the number of study pages."""
    study_pages = _study_pages(inputs)
    _write(out_dir / "studies" / "index.html", _template("studies.html").render(
        **common, root="../", sections=PAGE_SECTIONS["studies"], studies=_studies_index(inputs)))
    if jobs > 1 and len(study_pages) > 1:
        chunks = [study_pages[i::jobs] for i in range(jobs)]
        Parallel(n_jobs=jobs)(delayed(_write_study_pages)(chunk, inputs.thumbnails, out_dir, common)
                              for chunk in chunks)
    else:
        _write_study_pages(study_pages, inputs.thumbnails, out_dir, common)
    _remove_stale(out_dir / "studies", {f"{page.study_id}.html" for page in study_pages},
                  lambda name: bool(_STUDY_PAGE.match(name)))
    return len(study_pages)


# --- templates and files ----------------------------------------------------------------------------------------


@lru_cache(maxsize=1)
def _environment() -> jinja2.Environment:
    environment = jinja2.Environment(
        loader=jinja2.PackageLoader("radiospine.report", "templates"),
        autoescape=jinja2.select_autoescape(["html"]),
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    environment.filters["number"] = _number
    environment.globals["human_level"] = vocab.level_to_human
    environment.globals["human_condition"] = vocab.condition_to_human
    environment.globals["severity_labels"] = vocab.SEVERITY_LABELS
    environment.globals["severity_colours"] = plots.SEVERITY_COLOURS
    environment.globals["radiospine_version"] = __version__
    return environment


def _template(name: str) -> jinja2.Template:
    return _environment().get_template(name)


def _number(value: Any, digits: int = 4) -> str:
    """A number for a table cell: ``digits`` significant digits, ``""`` for NaN/None."""
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return ""
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    return f"{float(value):.{digits}g}"


def _write(path: Path, html: str) -> None:
    atomic_write_text(path, html)


def _remove_stale(folder: Path, keep: set[str], ours) -> None:
    """Delete pages in ``folder`` that this renderer names (``ours(name)``) but did not write now."""
    if not folder.is_dir():
        return
    for path in folder.iterdir():
        if path.is_file() and ours(path.name) and path.name not in keep and path.name != "index.html":
            path.unlink()


# --- overview ---------------------------------------------------------------------------------------------------


def _overview_context(inputs: ReportInputs, scored: pd.DataFrame, n_unscored: int, written_at: str) -> dict:
    series = inputs.series
    labels = inputs.labels
    labelled = labels["severity"].notna()
    facts: list[tuple[str, Any]] = [
        ("studies shown (with predictions)", len(inputs.study_ids)),
        ("studies in the series table", int(series["study_id"].nunique())),
        ("series", len(series)),
        ("labelled studies", int(labels.loc[labelled, "study_id"].nunique())),
        ("labelled rows", int(labelled.sum())),
        ("rows with a missing label", int((~labelled).sum())),
        *((str(key), value) for key, value in inputs.dataset_facts.items()),
    ]
    descriptions = series["series_description"].value_counts()
    base_of_row = scored["condition"].map(lambda c: vocab.split_condition(c).base).to_numpy()
    calibration, confusion = [], []
    for base in vocab.BASE_CONDITIONS:
        rows = base_of_row == base
        title = _base_title(base)
        if not rows.any():
            calibration.append({"title": title, "uri": None})
            confusion.append({"title": title, "uri": None})
            continue
        proba = scored.loc[rows, list(vocab.SEVERITIES)].to_numpy(dtype=np.float64)
        severity = scored.loc[rows, "severity"].to_numpy()
        calibration.append({"title": title, "uri": plots.reliability_figure(proba, severity, title)})
        confusion.append({"title": title, "uri": plots.confusion_figure(proba, severity, title)})
    cv = inputs.cv_scores
    provenance = {**inputs.provenance,
                  "report": {"written_at": written_at, "versions": library_versions()}}
    return {
        "facts": facts,
        "descriptions": list(descriptions.items()),
        "label_levels": vocab.LEVELS,
        "label_grid": _condition_level_grid(summaries.label_distribution(labels)),
        "cv_columns": [*metrics.PART_NAMES, "score"],
        "cv_rows": [(str(index), {c: row[c] for c in (*metrics.PART_NAMES, "score")}) for index, row in cv.iterrows()],
        "cv_index_name": cv.index.name or "fold",
        "loss_grid": _condition_level_grid(summaries.loss_by_condition_level(scored)),
        "n_scored": len(scored),
        "n_unscored": n_unscored,
        "calibration": calibration,
        "confusion": confusion,
        "model_card": _json_items(inputs.model_card),
        "provenance": _json_items(provenance),
        "explanations": [{"group": e.group, "model": e.model, "n_rows": len(e.row_keys),
                          "n_features": len(e.feature_names)} for e in inputs.explanations.values()],
    }


def _condition_level_grid(table: pd.DataFrame) -> list[dict[str, Any]]:
    """A frame with one row per (condition, level) -> one line per condition holding its five levels' rows."""
    rows = {(c, lv): record for c, lv, record in zip(table["condition"], table["level"],
                                                     table.to_dict(orient="records"))}
    return [{"condition": condition, "cells": [rows[(condition, level)] for level in vocab.LEVELS]}
            for condition in vocab.CONDITIONS]


def _base_title(base: str) -> str:
    """``"neural_foraminal_narrowing"`` -> ``"Neural foraminal narrowing (left and right)"``."""
    title = base.replace("_", " ").capitalize()
    return title if base == vocab.SPINAL else f"{title} (left and right)"


def _json_items(mapping: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Top-level entries of a JSON object for a key/value table: short values inline, long ones folded."""
    items = []
    for key, value in mapping.items():
        text = value if isinstance(value, str) else json.dumps(value, indent=2, sort_keys=True, default=str)
        folded = len(text) > FOLD_JSON_CHARS or "\n" in text
        summary = (f"{len(value)} entries" if isinstance(value, (dict, list)) else f"{len(text)} characters")
        items.append({"key": str(key), "text": text, "folded": folded, "summary": summary})
    return items


# --- condition pages --------------------------------------------------------------------------------------------


def _condition_context(explanation: ConditionExplanation) -> dict:
    output = explanation.output()
    importance = summaries.global_importance(explanation)
    output_names = [o.name for o in explanation.outputs]
    position = {name: j for j, name in enumerate(explanation.feature_names)}
    ranked = [position[name] for name in importance["feature"]]
    has_rows = len(explanation.row_keys) > 0
    families = {by: summaries.family_importance(explanation, output, by) for by in ("family", "filter", "view")}
    return {
        "group": explanation.group,
        "model": explanation.model,
        "n_rows": len(explanation.row_keys),
        "n_studies": int(explanation.row_keys["study_id"].nunique()),
        "n_features": len(explanation.feature_names),
        "outputs": [{"name": o.name, "towards": o.towards, "mean_base": float(o.base.mean()) if has_rows else None,
                     "default": o.name == explanation.default_output} for o in explanation.outputs],
        "default_output": explanation.default_output,
        "importance_uri": plots.importance_figure(importance, output_names, TOP_IMPORTANCE) if has_rows else None,
        "beeswarm_uri": plots.beeswarm_figure(explanation, output, ranked[:TOP_BEESWARM]) if has_rows else None,
        "dependence_uri": plots.dependence_figure(explanation, output, ranked[:TOP_DEPENDENCE]) if has_rows else None,
        "family_uri": plots.family_figure(families["family"], families["filter"], families["view"])
        if has_rows else None,
        "family_table": [{"family": name, "value": value} for name, value in families["family"].items()],
        "output_names": output_names,
        "top_importance": TOP_IMPORTANCE,
        "top_features": importance.head(TOP_TABLE).to_dict(orient="records"),
        "all_features": importance[["feature", "family", *output_names]].to_dict(orient="records"),
    }


# --- study pages ------------------------------------------------------------------------------------------------


def _studies_index(inputs: ReportInputs) -> list[dict[str, Any]]:
    series = inputs.series.groupby("study_id")["series_description"].agg(list)
    predictions = inputs.predictions
    severe = predictions.loc[predictions.groupby("study_id")["severe"].idxmax()].set_index("study_id")
    labelled = set(inputs.labels.loc[inputs.labels["severity"].notna(), "study_id"])
    studies = []
    for study_id in inputs.study_ids:
        top = severe.loc[study_id]
        studies.append({
            "study_id": study_id,
            "descriptions": series.get(study_id, []),
            "labelled": study_id in labelled,
            "top_severe": f"{vocab.level_to_human(top['level'])} {vocab.condition_to_human(top['condition'])}",
            "top_severe_probability": float(top["severe"]),
        })
    return studies


def _study_pages(inputs: ReportInputs) -> list[_StudyPage]:
    """Everything a study page shows except its thumbnails."""
    explained: dict[tuple[int, str, str], tuple[ConditionExplanation, int]] = {}
    for explanation in inputs.explanations.values():
        keys = explanation.row_keys
        for row, key in enumerate(zip(keys["study_id"].tolist(), keys["condition"], keys["level"])):
            explained[key] = (explanation, row)
    truth = {key: int(s) for key, s in zip(
        zip(inputs.labels["study_id"].tolist(), inputs.labels["condition"], inputs.labels["level"]),
        inputs.labels["severity"]) if not pd.isna(s)}
    series = {study_id: frame[["series_id", "series_description"]].to_dict(orient="records")
              for study_id, frame in inputs.series.groupby("study_id")}
    # a GroupBy has a .keys attribute (the grouping column), so dict(groupby) misreads it as a mapping
    predictions = {study_id: frame for study_id, frame in inputs.predictions.groupby("study_id")}  # noqa: C416
    study_ids = inputs.study_ids
    pages = []
    for position, study_id in enumerate(study_ids):
        frame = predictions[study_id]
        by_key = {(c, lv): p for c, lv, p in zip(frame["condition"], frame["level"],
                                                   frame[list(vocab.SEVERITIES)].to_numpy(dtype=np.float64))}
        rows = []
        for condition in vocab.CONDITIONS:
            for level in vocab.LEVELS:
                if (condition, level) not in by_key:
                    continue
                probabilities = by_key[(condition, level)]
                key = (study_id, condition, level)
                chart, contribution = None, None
                if key in explained:
                    explanation, row = explained[key]
                    output = explanation.output()
                    chart = summaries.waterfall(explanation, row, output, TOP_WATERFALL)
                    contribution = (explanation, row, output)
                rows.append(_Row(
                    condition=condition, level=level, anchor=f"{condition}-{level}",
                    title=f"{vocab.level_to_human(level)} {vocab.condition_to_human(condition)}",
                    probabilities=tuple(float(p) for p in probabilities),
                    predicted=vocab.SEVERITY_LABELS[int(np.argmax(probabilities))],
                    truth=vocab.SEVERITY_LABELS[truth[key]] if key in truth else None,
                    finding=summaries.finding_line(condition, level, probabilities),
                    sentence=summaries.plain_language(condition, level, probabilities, contribution),
                    waterfall=chart,
                ))
        pages.append(_StudyPage(
            study_id=study_id,
            previous_id=study_ids[position - 1] if position > 0 else None,
            next_id=study_ids[position + 1] if position + 1 < len(study_ids) else None,
            series=series.get(study_id, []),
            rows=rows,
        ))
    return pages


def _write_study_pages(pages: Sequence[_StudyPage], thumbnails: ThumbnailSource | None, out_dir: Path,
                       common: Mapping[str, Any]) -> None:
    template = _template("study.html")
    for page in pages:
        rows = []
        for row in page.rows:
            views = list(thumbnails(page.study_id, row.condition, row.level)) if thumbnails is not None else []
            if not all(isinstance(view, Thumbnail) for view in views):
                raise TypeError(f"the thumbnail source gave {[type(v).__name__ for v in views]} for "
                                f"({page.study_id}, {row.condition}, {row.level}); it must return Thumbnail objects")
            rows.append({"row": row, "thumbnails": [
                {"view": view.view, "caption": view.caption, "uri": plots.thumbnail_uri(view)} for view in views]})
        grid = {(row.condition, row.level): row for row in page.rows}
        html = template.render(**common, root="../", sections=PAGE_SECTIONS["study"], page=page, rows=rows,
                               grid=grid, conditions=vocab.CONDITIONS, levels=vocab.LEVELS)
        _write(out_dir / "studies" / f"{page.study_id}.html", html)
