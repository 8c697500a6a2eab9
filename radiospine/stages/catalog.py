"""`radiospine catalog --data DIR --split S`: scan a data folder and summarise what it holds."""

from __future__ import annotations

import argparse
import json

from radiospine import catalog as catalog_lib


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", required=True, help="data folder in the Kaggle layout")
    parser.add_argument("--split", choices=catalog_lib.SPLITS, default="train")
    parser.add_argument("--out", help="optional folder to write studies.csv, series.csv, problems.csv into")


def run(args: argparse.Namespace) -> int:
    catalog = catalog_lib.scan(args.data, args.split)
    series_counts = catalog.series[catalog.series["on_disk"]]["series_description"].replace("", "(unknown)")
    summary = {
        "split": args.split,
        "studies": len(catalog.studies),
        "series": int(catalog.series["on_disk"].sum()),
        "instances": len(catalog.instances),
        "series_by_description": series_counts.value_counts().sort_index().to_dict(),
        "studies_missing_a_type": int((catalog.studies["missing_types"] != "").sum()),
        "problems": catalog.problems["kind"].value_counts().to_dict(),
        "catalog_hash": catalog.content_hash(),
    }
    if args.out:
        from pathlib import Path

        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        catalog.studies.to_csv(out / "studies.csv", index=False)
        catalog.series.to_csv(out / "series.csv", index=False)
        catalog.problems.to_csv(out / "problems.csv", index=False)
    for _, problem in catalog.problems.head(20).iterrows():
        print(f"{problem['kind']}: {problem['path']}: {problem['message']}")
    print(json.dumps(summary))
    return 0
