"""`radiospine synth --out DIR --train-studies N --test-studies M --seed S [--small]`: write a synthetic data set.

DIR gets the Kaggle layout (train.csv, the coordinates and descriptions CSVs, sample_submission.csv,
train_images/, test_images/) and DIR/truth/ (test labels and coordinates, the oracle's probabilities, the
latent severities, manifest.json with the oracle's and the weighted priors' scores). Flags override the
``synth`` section of the config; ``--set synth.quirks.reversed_order_rate=0`` and the like tune the rest.
Prints the manifest's scores as one JSON line.
"""

from __future__ import annotations

import argparse
import json

from radiospine.config import add_config_arguments, config_from_arguments


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", required=True, help="folder to write the data set into")
    parser.add_argument("--train-studies", type=int, default=None, help="studies in train_images/ (config default)")
    parser.add_argument("--test-studies", type=int, default=None, help="studies in test_images/ (config default)")
    parser.add_argument("--seed", type=int, default=None, help="random seed: the same seed gives the same bytes")
    parser.add_argument("--small", action=argparse.BooleanOptionalAction, default=None,
                        help="about 256 px images and fewer slices (tests, demos); --no-small for real sizes")
    parser.add_argument("--jobs", type=int, default=1, help="studies generated in parallel (output unchanged)")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace a data set already in --out (only the generator's own files)")
    add_config_arguments(parser)


def run(args: argparse.Namespace) -> int:
    from radiospine.errors import UserError
    from radiospine.synth.generate import generate_dataset

    config = config_from_arguments(args).synth
    updates = {key: value for key, value in (("train_studies", args.train_studies),
                                             ("test_studies", args.test_studies), ("seed", args.seed),
                                             ("small", args.small)) if value is not None}
    for key in ("train_studies", "test_studies", "seed"):
        if key in updates and updates[key] < 0:
            raise UserError(f"--{key.replace('_', '-')} must be >= 0, got {updates[key]}")
    if args.jobs < 1:
        raise UserError(f"--jobs must be >= 1, got {args.jobs}")
    config = config.model_validate({**config.model_dump(), **updates})
    manifest = generate_dataset(args.out, config, jobs=args.jobs, overwrite=args.overwrite)
    print(json.dumps({"out": str(args.out), "studies": manifest["studies"], "files": manifest["files"],
                      "megabytes": round(manifest["bytes"] / 1e6, 1), "scores_on_test": {
                          name: None if result is None else round(result["score"], 4)
                          for name, result in manifest["scores_on_test"].items()}}))
    return 0
