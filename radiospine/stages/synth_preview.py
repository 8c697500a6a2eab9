"""`radiospine synth-preview DIR STUDY_ID --out FILE.png`: draw a study's mid-sagittal T2, parasagittal T1 and
axial slices with its label points, to check by eye that it looks like a spine."""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("data", help="data folder in the Kaggle layout (a synthetic one also shows test labels)")
    parser.add_argument("study_id", help="the study to draw")
    parser.add_argument("--out", required=True, help="PNG file to write")


def run(args: argparse.Namespace) -> int:
    from radiospine.catalog import parse_id
    from radiospine.synth.preview import preview_study

    study_id = parse_id(args.study_id, what="study id", where="the command line")
    print(preview_study(args.data, study_id, args.out))
    return 0
