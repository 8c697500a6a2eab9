"""`radiospine report --data DIR --work WORK --out reports/NAME [--split test]`: the HTML report.

Reads ``WORK/models`` (model card, out-of-fold predictions), ``DATA/train.csv`` (labels of the CV overview) and the
split's feature table ``WORK/features/<split>`` (from ``radiospine predict`` or ``radiospine features``), and writes
a self-contained report: overview, one page per model group with exact TreeSHAP importances, one page per study
with its 25 predictions, ROI thumbnails and the top contributions behind each prediction.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
from pathlib import Path

from radiospine.catalog import SPLITS
from radiospine.config import add_config_arguments, config_from_arguments


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", required=True, help="data folder in the Kaggle layout")
    parser.add_argument("--work", required=True, help="work folder with WORK/models and WORK/features/<split>")
    parser.add_argument("--out", required=True, help="folder to write the report into (index.html inside)")
    parser.add_argument("--split", choices=SPLITS, default="test", help="whose studies get pages (default test)")
    parser.add_argument("--no-thumbnails", action="store_true", help="skip ROI thumbnails (no DICOM reads)")
    add_config_arguments(parser)


def run(args: argparse.Namespace) -> int:
    import time

    import pandas as pd

    from radiospine import artifacts
    from radiospine.catalog import scan
    from radiospine.features.store import read_features
    from radiospine.labels import labels_to_long, load_train_labels
    from radiospine.models.condition_models import MODEL_CARD, TrainedModels
    from radiospine.report.inputs import ReportInputs
    from radiospine.report.render import render_report
    from radiospine.report.sources import CropThumbnails, shap_explanations
    from radiospine.roi.centres import roi_centres
    from radiospine.workspace import Workspace

    started = time.perf_counter()
    config = config_from_arguments(args)
    data, workspace = Path(args.data), Workspace(args.work)
    models = TrainedModels.load(workspace.models_dir)
    card = json.loads((workspace.models_dir / MODEL_CARD).read_text())
    features = read_features(workspace.features_dir(args.split))
    catalog = scan(data, args.split)
    # the submission's predictions: the models where a row has features, the training prior where it has none
    predictions, _ = models.predict_studies(features, catalog.study_ids, pd.read_csv(workspace.prior))
    cv_scores = pd.DataFrame.from_dict(card["report"]["cv_scores"]["final"], orient="index").rename_axis("fold")
    manifest = artifacts.read_manifest(workspace.models_dir) or {}
    inputs = ReportInputs(
        title=f"radiospine report: {data.name or data} ({args.split})",
        series=catalog.series[["study_id", "series_id", "series_description"]],
        labels=labels_to_long(load_train_labels(data / "train.csv")),
        oof_predictions=models.oof_predictions,
        cv_scores=cv_scores,
        predictions=predictions,
        explanations=shap_explanations(models, features),
        thumbnails=None if args.no_thumbnails else CropThumbnails(
            data, args.split, roi_centres(data, args.split, workspace.root, config.roi), config.roi),
        model_card=card,
        provenance={"versions": artifacts.library_versions(), "models_config_hash": card.get("config_hash"),
                    "models_trained_at": manifest.get("written_at"),
                    "features": str(workspace.features_dir(args.split)),
                    "report_written_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds")},
        dataset_facts={"data folder": str(data), "split": args.split, "studies": len(catalog.studies),
                       "catalog hash": catalog.content_hash()},
    )
    index = render_report(inputs, args.out)
    print(json.dumps({"report": str(index), "studies": len(inputs.study_ids),
                      "seconds": round(time.perf_counter() - started, 1)}))
    return 0
