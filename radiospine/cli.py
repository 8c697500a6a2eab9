"""The ``radiospine`` command: one sub-command per stage, each a thin runner in ``pipelines/``.

Every runner module exposes ``add_arguments(parser)`` and ``run(args) -> int``. The table below is the
whole registry: adding a stage means adding one line here.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

#: sub-command -> (runner module, one-line help). Modules are imported only when their command runs.
COMMANDS: dict[str, tuple[str, str]] = {
    "score": ("pipelines.score", "score a submission against labels with the competition metric"),
    "validate-submission": ("pipelines.validate_submission", "check a submission file against a data folder"),
    "catalog": ("pipelines.catalog", "scan a data folder and summarise its studies and series"),
    "train-localizer": ("pipelines.train_localizer", "train the level localiser on the training coordinates"),
    "localize": ("pipelines.localize", "find the 25 coordinates of every study of a split with the localiser"),
    "export-crops": ("pipelines.export_crops", "write ROI crops as PNG with an index CSV and image-text pairs"),
    "roi-qa": ("pipelines.roi_qa", "draw one study's ROIs on its series (a PNG for quality checks)"),
    "features": ("pipelines.features", "compute a split's feature table (radiomics, CNN embeddings)"),
    "synth": ("pipelines.synth", "write a synthetic data set in the Kaggle layout, with its truth"),
    "synth-preview": ("pipelines.synth_preview", "draw a study's sagittal and axial slices with its label points"),
    "train-gbm": ("pipelines.train_gbm", "train the per-condition ordinal GBMs (computes train features first)"),
    "predict": ("pipelines.predict", "localise, describe and grade a split's studies: the submission CSV"),
    "report": ("pipelines.report", "write the self-contained HTML report (SHAP explanations per prediction)"),
}


class UserError(Exception):
    """An error caused by the user's input; printed as one line without a traceback (exit code 2)."""


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
    except (UserError, ValueError, FileNotFoundError, KeyError) as exc:
        if args.verbose >= 2:
            raise
        message = exc.args[0] if isinstance(exc, KeyError) and exc.args else exc
        print(f"radiospine {args.command}: error: {message}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
