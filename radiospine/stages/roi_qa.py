"""`radiospine roi-qa --data DIR --split S --work WORK --study ID --out FILE.png`: one study's ROIs drawn on its series.

The ROIs are placed where the ROI stage would cut them (radiospine/roi/centres.py), or from ``--coords FILE``
(any coordinates CSV, e.g. the localiser's output or the label file).
"""

from __future__ import annotations

import argparse

from radiospine.catalog import SPLITS
from radiospine.config import add_config_arguments, config_from_arguments


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", required=True, help="data folder in the Kaggle layout")
    parser.add_argument("--split", choices=SPLITS, default="train")
    parser.add_argument("--work", required=True, help="work folder (the localiser's coordinates for predicted centres)")
    parser.add_argument("--study", required=True, type=int, help="study id")
    parser.add_argument("--out", required=True, help="PNG file to write")
    parser.add_argument("--coords", default=None,
                        help="draw these coordinates instead (train_label_coordinates layout)")
    add_config_arguments(parser)


def run(args: argparse.Namespace) -> int:
    from radiospine.roi.centres import load_predicted_coordinates, roi_centres
    from radiospine.roi.qa import roi_qa_picture
    from radiospine.workspace import provenance_path

    config = config_from_arguments(args)
    if args.coords is None:
        coords = roi_centres(args.data, args.split, args.work, config.roi)
    elif provenance_path(args.coords).is_file():
        coords = load_predicted_coordinates(args.coords)
    else:
        from radiospine.labels import load_label_coordinates

        coords = load_label_coordinates(args.coords).assign(source="label")
    print(roi_qa_picture(args.data, args.split, args.study, coords, config.roi, args.out))
    return 0
