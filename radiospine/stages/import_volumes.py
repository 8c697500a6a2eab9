"""`radiospine import-volumes --volumes DIR --out DATA [--gradings FILE]`: image volumes -> a data folder.

Reads a folder of image files with their own geometry (``.mha``, ``.nii``/``.nii.gz``, ``.nrrd``; optional
``*_mask`` segmentations) and writes a data folder in the Kaggle layout that every other command reads: DICOM
series, the series descriptions, ``train.csv`` and the spinal canal points per level derived from the masks, plus
``DATA/volume_import/`` (discs, per-study verification of the level mapping, manifest). See
:mod:`radiospine.volume_import`. Prints the manifest as one JSON line.
"""

from __future__ import annotations

import argparse
import json


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--volumes", required=True, help="folder of <study_id>[_name].mha/.nii/.nii.gz/.nrrd files "
                                                         "(and <name>_mask.* segmentations)")
    parser.add_argument("--out", required=True, help="data folder to write (Kaggle layout)")
    parser.add_argument("--gradings", help="per-disc gradings in SPIDER's layout (Patient, IVD label, ...): the "
                                           "level mapping checks the discs against them")
    parser.add_argument("--split", choices=("train", "test"), default="train")
    parser.add_argument("--disc-label", type=int, default=2, help="mask value of intervertebral discs (SPIDER: 2)")
    parser.add_argument("--canal-label", type=int, default=3, help="mask value of the spinal canal (SPIDER: 3)")
    parser.add_argument("--min-disc-mm3", type=float, default=100.0,
                        help="smaller disc components are specks, not discs")
    parser.add_argument("--points", choices=("canal", "disc"), default="canal",
                        help="each level's point in the coordinates: the canal point at the disc (default) or the "
                             "disc centre (the ROI of the spider task's disc gradings)")
    parser.add_argument("--previews", action="store_true",
                        help="draw each series' disc centres and canal points with their levels "
                             "(DATA/volume_import/previews/*.png)")
    parser.add_argument("--overwrite", action="store_true", help="replace a data set already in --out")


def run(args: argparse.Namespace) -> int:
    from radiospine.errors import UserError
    from radiospine.volume_import import import_volumes

    if args.min_disc_mm3 < 0:
        raise UserError(f"--min-disc-mm3 must be >= 0, got {args.min_disc_mm3}")
    manifest = import_volumes(args.volumes, args.out, gradings=args.gradings, split=args.split,
                              disc_label=args.disc_label, canal_label=args.canal_label,
                              min_disc_mm3=args.min_disc_mm3, overwrite=args.overwrite,
                              previews=args.previews, points=args.points)
    print(json.dumps({"out": str(args.out), **{key: manifest[key] for key in (
        "studies", "series", "with_mask", "discs", "canal_points", "studies_with_anomalies")}}))
    return 0
