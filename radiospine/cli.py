"""The ``radiospine`` command: one sub-command per stage, each a runner in :mod:`radiospine.stages`.

Every runner module exposes ``add_arguments(parser)`` and ``run(args) -> int``. The table below is the
whole registry: adding a stage means adding one line here. A :class:`radiospine.errors.RadiospineError` (the
user's input or setup) is printed as one line with exit code 2; any other exception is a bug and propagates
with its traceback.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from radiospine.errors import RadiospineError

#: sub-command -> (runner module, one-line help). Modules are imported only when their command runs.
COMMANDS: dict[str, tuple[str, str]] = {
    "score": ("radiospine.stages.score", "score a submission against labels with the competition metric"),
    "validate-submission": ("radiospine.stages.validate_submission",
                            "check a submission file against a data folder"),
    "import-volumes": ("radiospine.stages.import_volumes",
                       "turn a folder of image volumes (.mha/.nii/.nrrd, masks) into a data folder"),
    "catalog": ("radiospine.stages.catalog", "scan a data folder and summarise its studies and series"),
    "train-localizer": ("radiospine.stages.train_localizer",
                        "train the level localiser on the training coordinates"),
    "localize": ("radiospine.stages.localize",
                 "find the 25 coordinates of every study of a split with the localiser"),
    "export-crops": ("radiospine.stages.export_crops",
                     "write ROI crops as PNG with an index CSV and image-text pairs"),
    "roi-qa": ("radiospine.stages.roi_qa", "draw one study's ROIs on its series (a PNG for quality checks)"),
    "features": ("radiospine.stages.features", "compute a split's feature table (radiomics, CNN probabilities)"),
    "synth": ("radiospine.stages.synth", "write a synthetic data set in the Kaggle layout, with its truth"),
    "synth-preview": ("radiospine.stages.synth_preview",
                      "draw a study's sagittal and axial slices with its label points"),
    "train-gbm": ("radiospine.stages.train_gbm",
                  "train the per-condition ordinal GBMs (computes train features first)"),
    "predict": ("radiospine.stages.predict", "localise, describe and grade a split's studies: the submission CSV"),
    "export-model": ("radiospine.stages.export_model",
                     "write a trained work folder's models as one portable, checksummed bundle folder"),
    "grade": ("radiospine.stages.grade",
              "grade every study of a PACS/CD export (any folder of DICOM files) with a model bundle"),
    "report": ("radiospine.stages.report",
               "write the self-contained HTML report (SHAP explanations per prediction)"),
    "demo-summary": ("radiospine.stages.demo_summary",
                     "the demo's test score beside the oracle's and the weighted prior's (make demo)"),
}


def build_parser(command_name: str | None = None) -> argparse.ArgumentParser:
    """The parser; only ``command_name``'s runner is imported (so ``radiospine score`` never loads torch)."""
    parser = argparse.ArgumentParser(
        prog="radiospine", description="Grade degenerative lumbar spine conditions from MRI (RSNA 2024 layout).")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more logging (-vv for debug)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, (module_name, help_text) in COMMANDS.items():
        command = sub.add_parser(name, help=help_text, description=help_text)
        command.set_defaults(_module=module_name)
        if name == command_name:
            importlib.import_module(module_name).add_arguments(command)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    command_name = next((token for token in argv if token in COMMANDS), None)
    args = build_parser(command_name).parse_args(argv)
    logging.basicConfig(
        level=logging.WARNING - 10 * min(args.verbose + 1, 2),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    try:
        return int(importlib.import_module(args._module).run(args) or 0)
    except RadiospineError as exc:  # the user's input or setup; any other exception is a bug: its traceback shows
        if args.verbose >= 2:
            raise
        print(f"radiospine {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
