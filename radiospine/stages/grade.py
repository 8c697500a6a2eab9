"""`radiospine grade EXPORT --model MODEL_DIR --out OUT`: grade every study of a PACS or CD export.

``EXPORT`` is any folder of DICOM files (with or without a DICOMDIR, any folder and file names); ``MODEL_DIR`` a
bundle from ``radiospine export-model`` (refused when its version or a checksum does not match). The export is read
into a data folder (:mod:`radiospine.exports`: studies and series by UID, each series typed from its headers, the
series of each view picked, every other file listed with the reason), then graded on the predict path: the
bundle's localiser, the feature stage with the bundle's CNN and radiomics parameters, the bundle's calibrated
models, the training prior for findings without image features. Writes::

    OUT/index.html              the export: per study its series (type, used or not, why) and 25 findings,
                                every file not used and why
    OUT/studies/<n>.html        the report's study page: ROI thumbnails, SHAP evidence, a line per finding
    OUT/studies/<n>.csv, .json  the 25 findings with calibrated probabilities, source (model or prior) and reason
    OUT/findings.csv            every study's findings; OUT/series.csv, OUT/skipped.csv: the tables of index.html
    OUT/_work/                  the laid-out data folder, coordinates, features (kept for inspection)

``<n>`` numbers the studies of the export (1, 2, ... by study date); no patient name or id goes into a file name.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from radiospine.config import add_config_arguments, budget_from_arguments
from radiospine.threads import add_jobs_argument, add_threads_argument

#: What ``grade`` writes directly inside ``OUT`` (replaced with ``--overwrite``).
OUTPUT_ENTRIES = ("index.html", "studies", "findings.csv", "series.csv", "skipped.csv", "grade.json", "_work")
#: Why a study's findings all come from the prior when none of its series could be used.
NO_SERIES_REASON = "no Sagittal T1, Sagittal T2/STIR or Axial T2 series could be used"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("export", help="folder of an exported study or studies (DICOM files, DICOMDIR optional)")
    parser.add_argument("--model", required=True, metavar="MODEL_DIR", help="model bundle (radiospine export-model)")
    parser.add_argument("--out", required=True, help="output folder (index.html, studies/, findings.csv ...)")
    parser.add_argument("--overwrite", action="store_true", help="replace the outputs of an earlier run in --out")
    add_jobs_argument(parser, "the feature stage")
    parser.add_argument("--no-thumbnails", action="store_true", help="study pages without ROI thumbnails")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    add_threads_argument(parser)
    add_config_arguments(parser)


def run(args: argparse.Namespace) -> int:
    import pandas as pd

    from radiospine import artifacts, metrics, vocab
    from radiospine.errors import UserError
    from radiospine.exports import SPLIT, read_export
    from radiospine.features.columns import is_status_column
    from radiospine.features.stage import run_features_stage
    from radiospine.features.store import read_features
    from radiospine.models.bundle import bundle_config, open_bundle
    from radiospine.models.condition_models import TrainedModels
    from radiospine.report.inputs import ReportInputs
    from radiospine.report.render import render_grade_summary, render_study_pages
    from radiospine.report.sources import CropThumbnails, shap_explanations
    from radiospine.report.summaries import finding_line
    from radiospine.roi.centres import roi_centres
    from radiospine.roi.localizer.stage import localize
    from radiospine.submission import LONG_PREDICTION_COLUMNS, fill_missing_with_prior
    from radiospine.workspace import Workspace

    started = time.perf_counter()
    timings: dict[str, float] = {}
    bundle = open_bundle(args.model)
    config = bundle_config(bundle, args)
    models = TrainedModels.load(bundle.layout.models_dir)
    prior = pd.read_csv(bundle.layout.prior)
    out = artifacts.prepare_output_folder(args.out, OUTPUT_ENTRIES, overwrite=args.overwrite)
    workspace = Workspace(out / "_work")
    timings["load"] = time.perf_counter() - started

    step = time.perf_counter()
    export = read_export(args.export, workspace.root / "data")
    data = export.data_dir
    if not export.studies:
        kinds = export.skipped["kind"].value_counts().to_dict()
        raise UserError(f"{args.export} holds no MR image of a study ({len(export.skipped)} file(s) not used: "
                        f"{kinds or 'no files at all'}); point to the folder of an exported MRI study")
    gradable = export.gradable_study_ids
    all_ids = [study.study_id for study in export.studies]
    timings["read_export"] = time.perf_counter() - step

    features = pd.DataFrame(columns=list(vocab.KEY_COLUMNS))
    predictions = pd.DataFrame(columns=list(LONG_PREDICTION_COLUMNS))
    reasons: dict[tuple[int, str, str], str] = {}
    if gradable:
        step = time.perf_counter()
        localize(data, SPLIT, workspace.root, config.roi, device=config.localizer.device, threads=args.threads,
                 localizer_dir=bundle.layout.localizer_dir)
        timings["localize"] = time.perf_counter() - step
        step = time.perf_counter()
        run_features_stage(data, SPLIT, workspace.root, config, jobs=budget_from_arguments(args, config).jobs,
                           progress=not args.no_progress)
        timings["features"] = time.perf_counter() - step
        step = time.perf_counter()
        predictions, filled = models.predict_stored_studies(workspace.features_dir(SPLIT), gradable, prior)
        status_columns = [c for c in filled.columns if is_status_column(c)]
        missing = {study.study_id: study.missing_views for study in export.studies}
        for row in filled.itertuples(index=False):
            needed = vocab.SERIES_FOR_BASE_CONDITION[vocab.split_condition(row.condition).base]
            status = [str(getattr(row, c)) for c in status_columns
                      if isinstance(getattr(row, c), str) and getattr(row, c) != "ok"]
            reasons[(int(row.study_id), row.condition, row.level)] = (
                f"no {needed} series in the export" if needed in missing[int(row.study_id)]
                else "; ".join(dict.fromkeys(status)) or "no ROI features")
        features = read_features(workspace.features_dir(SPLIT), gradable)
        timings["predict"] = time.perf_counter() - step
    predictions, from_prior = fill_missing_with_prior(predictions, all_ids, prior)
    for row in from_prior.itertuples(index=False):
        reasons.setdefault((int(row.study_id), row.condition, row.level), NO_SERIES_REASON)

    step = time.perf_counter()
    findings = predictions.assign(
        grade=[vocab.SEVERITIES[int(i)] for i in predictions[list(vocab.SEVERITIES)].to_numpy().argmax(axis=1)],
        finding=[finding_line(c, lv, p) for c, lv, p in zip(
            predictions["condition"], predictions["level"], predictions[list(vocab.SEVERITIES)].to_numpy())],
        source=[("prior" if (s, c, lv) in reasons else "model") for s, c, lv in zip(
            predictions["study_id"], predictions["condition"], predictions["level"])],
        reason=[reasons.get((s, c, lv), "") for s, c, lv in zip(
            predictions["study_id"], predictions["condition"], predictions["level"])])
    series = pd.concat([study.series for study in export.studies], ignore_index=True)
    studies_dir = out / "studies"
    studies_dir.mkdir(parents=True, exist_ok=True)
    summaries = []
    for study in export.studies:
        rows = findings[findings["study_id"] == study.study_id]
        with artifacts.atomic_path(studies_dir / f"{study.study_id}.csv") as tmp:
            rows.to_csv(tmp, index=False)
        record = {"study_id": study.study_id, "study_instance_uid": study.study_uid, "study_date": study.study_date,
                  "study_description": study.study_description, "missing_views": list(study.missing_views),
                  "series": _records(study.series),
                  "skipped": _records(export.skipped[export.skipped["study_id"] == study.study_id]),
                  "findings": _records(rows.drop(columns=["study_id"]))}
        artifacts.atomic_write_text(studies_dir / f"{study.study_id}.json",
                                    json.dumps(record, indent=2, default=_json_value, allow_nan=False))
        summaries.append({**record, "page": study.gradable, "findings": _records(rows)})
    with artifacts.atomic_path(out / "findings.csv") as tmp:
        findings.to_csv(tmp, index=False)
    with artifacts.atomic_path(out / "series.csv") as tmp:
        series.to_csv(tmp, index=False)
    with artifacts.atomic_path(out / "skipped.csv") as tmp:
        export.skipped.to_csv(tmp, index=False)

    if gradable:
        shown = predictions[predictions["study_id"].isin(gradable)]
        described = features[[c for c in features.columns if c not in vocab.KEY_COLUMNS and not is_status_column(c)]
                             ].notna().any(axis=1)
        page_series = series[series["study_id"].isin(gradable)]
        inputs = ReportInputs(
            title=f"radiospine grade: {Path(args.export).name or args.export}",
            series=page_series.assign(series_description=[
                f"{r.type}: {r.description!r}, {r.n_slices} slices; {'used' if r.picked else 'not used'}: "
                f"{r.pick_reason}" for r in page_series.itertuples()])[["study_id", "series_id",
                                                                         "series_description"]],
            labels=pd.DataFrame(columns=[*vocab.KEY_COLUMNS, "severity"]),
            oof_predictions=pd.DataFrame(columns=list(LONG_PREDICTION_COLUMNS)),
            cv_scores=pd.DataFrame(columns=[*metrics.PART_NAMES, "score"]),
            predictions=shown,
            explanations=shap_explanations(models, features[described].reset_index(drop=True)),
            thumbnails=None if args.no_thumbnails else CropThumbnails(
                data, SPLIT, roi_centres(data, SPLIT, workspace.root, config.roi), config.roi),
            model_card=bundle.card,
            provenance={"bundle": str(bundle.root), "versions": artifacts.library_versions()},
        )
        render_study_pages(inputs, out)
    facts = [("export folder", str(args.export)), ("DICOMDIR", str(export.dicomdir) if export.dicomdir else "none"),
             ("studies", len(export.studies)), ("studies graded from images", len(gradable)),
             ("MR image files used", int(series.loc[series["picked"], "n_files"].sum())),
             ("files not used", len(export.skipped)), ("model bundle", str(bundle.root)),
             ("model CV score (out of fold)", _rounded((bundle.card.get("cv_scores") or {}).get("score")))]
    render_grade_summary(out, title=f"radiospine grade: {Path(args.export).name or args.export}", facts=facts,
                         studies=summaries, skipped=_records(export.skipped))
    timings["write"] = time.perf_counter() - step
    summary = {"out": str(out / "index.html"), "studies": len(all_ids), "graded_from_images": len(gradable),
               "rows_from_prior": int((findings["source"] == "prior").sum()), "files_not_used": len(export.skipped),
               "seconds": {k: round(v, 1) for k, v in timings.items()},
               "total_seconds": round(time.perf_counter() - started, 1)}
    artifacts.atomic_write_text(out / "grade.json", json.dumps(summary, indent=2))
    for study in export.studies:
        used = study.series[study.series["picked"]]
        print(f"study {study.study_id}: {len(used)} series used "
              f"({', '.join(f'{r.series_id} {r.type}' for r in used.itertuples()) or 'none'})"
              + (f"; no {', '.join(study.missing_views)}" if study.missing_views else ""))
    print(json.dumps(summary))
    return 0


def _rounded(value, digits: int = 4):
    return None if value is None else round(float(value), digits)


def _records(frame) -> list[dict]:
    """A frame's rows as dicts, missing values as None (JSON null)."""
    return frame.astype(object).where(frame.notna(), None).to_dict(orient="records")


def _json_value(value):
    """numpy scalars and paths in the per-study JSON."""
    if hasattr(value, "item"):
        return value.item()
    return str(value)
