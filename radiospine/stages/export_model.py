"""`radiospine export-model --work WORK --out MODEL_DIR`: the trained work folder as one portable model bundle.

Copies the localiser, the CNN, the GBMs with their calibration and the prior, the config they were trained with
(``--config``/``--set`` as in training: checked against the stages' manifests) and a model card into
``MODEL_DIR`` with the SHA-256 of every file (:mod:`radiospine.models.bundle`). ``radiospine grade`` and
``radiospine predict`` take the folder as ``--model MODEL_DIR``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from radiospine.config import add_config_arguments, config_from_arguments


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--work", required=True, help="trained work folder (localizer/, features/train/, models/)")
    parser.add_argument("--out", required=True, help="the bundle folder to write (MODEL_DIR)")
    parser.add_argument("--overwrite", action="store_true", help="replace a bundle already in --out")
    add_config_arguments(parser)


def run(args: argparse.Namespace) -> int:
    from radiospine.models.bundle import export_bundle

    description = export_bundle(args.work, args.out, config_from_arguments(args), overwrite=args.overwrite)
    size = sum(path.stat().st_size for path in Path(args.out).rglob("*") if path.is_file())
    print(json.dumps({"bundle": str(args.out), "files": len(description["files"]) + 1, "bytes": size,
                      "format": description["format"]}))
    return 0
