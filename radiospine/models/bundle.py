"""The model bundle: one self-contained folder holding everything a trained work folder grades with.

``radiospine export-model --work WORK --out MODEL_DIR`` writes::

    MODEL_DIR/bundle.json               format, radiospine version, when, and the SHA-256 of every other file
    MODEL_DIR/model_card.json           the data the models were trained on, their CV scores, library versions
    MODEL_DIR/config.yaml               the resolved config the work folder was trained with
    MODEL_DIR/localizer/                the localiser: {sagittal,axial}.pt + .json, localizer.json
    MODEL_DIR/cnn/full.pt, full.json    the CNN trained on every labelled training study (if the CNN is enabled)
    MODEL_DIR/radiomics.yaml            the pyradiomics parameter file (if radiomics is enabled)
    MODEL_DIR/models/                   the GBMs' model card and native boosters, prior.csv (no out-of-fold rows)

Nothing is pickled: weights are torch state dicts read with ``weights_only=True`` (:mod:`radiospine.checkpoint`),
boosters are LightGBM text and XGBoost JSON, calibration and blending are JSON in the GBMs' model card.

:func:`open_bundle` refuses a bundle whose format or radiospine version differs from this code's, or one of
whose files is missing or does not match its SHA-256 in ``bundle.json`` (:class:`~radiospine.errors.BundleError`,
naming the file and the fix). The config of a run with a bundle is its ``config.yaml`` with the CNN checkpoint
and the radiomics parameter file pointed into the bundle (:meth:`ModelBundle.config`).
"""

from __future__ import annotations

import datetime as _dt
import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from radiospine import __version__
from radiospine.artifacts import MANIFEST_NAME, atomic_write_text, read_manifest
from radiospine.config import RadiospineConfig, config_hash, load_config
from radiospine.errors import BundleError, MissingInputError, UserError
from radiospine.features.cnn import FULL_MODEL
from radiospine.hashing import file_sha256
from radiospine.models.condition_models import MODEL_CARD
from radiospine.roi.localizer.model import localizer_files
from radiospine.workspace import Workspace

#: The bundle layout's version: a bundle written with another is refused.
BUNDLE_FORMAT = "radiospine-model-bundle/1"
BUNDLE_FILE = "bundle.json"
CARD_FILE = "model_card.json"
CONFIG_FILE = "config.yaml"
RADIOMICS_FILE = "radiomics.yaml"
#: Files of ``WORK/models`` left out: the out-of-fold predictions (training rows, not needed to grade) and the
#: manifest (it names the work folder's inputs).
_MODELS_LEFT_OUT = frozenset({"oof_predictions.csv", MANIFEST_NAME})
EXPORT_FIX = "export it again with `radiospine export-model --work WORK --out MODEL_DIR`"


@dataclass(frozen=True)
class ModelBundle:
    """A verified bundle folder (:func:`open_bundle`); the paths below are inside it."""

    root: Path
    description: dict[str, Any]

    @property
    def layout(self) -> Workspace:
        """The bundle's localiser, models and prior lie where a work folder has them (``layout.localizer_dir``,
        ``layout.models_dir``, ``layout.prior``)."""
        return Workspace(self.root)

    @property
    def card(self) -> dict[str, Any]:
        return json.loads((self.root / CARD_FILE).read_text())

    def config(self, overrides: list[str] | None = None) -> RadiospineConfig:
        """The training config with the CNN checkpoint and the radiomics parameters taken from the bundle, then
        ``overrides`` (``key.path=value``, e.g. a device) applied."""
        inside = []
        if (self.root / "cnn" / f"{FULL_MODEL}.pt").is_file():
            inside.append(f"features.cnn.checkpoint={(self.root / 'cnn' / f'{FULL_MODEL}.pt').resolve()}")
        if (self.root / RADIOMICS_FILE).is_file():
            inside.append(f"features.radiomics.params={(self.root / RADIOMICS_FILE).resolve()}")
        return load_config(self.root / CONFIG_FILE, [*inside, *(overrides or [])])


def bundle_config(bundle: ModelBundle, args: Any) -> RadiospineConfig:
    """The config of a command run with ``--model``: the bundle's, with the command's ``--set`` overrides (a
    device, say). ``--config`` is refused: the models only work with the config they were trained with."""
    if getattr(args, "config", None) is not None:
        raise UserError(f"--config {args.config} cannot be combined with --model {bundle.root}: the bundle carries "
                        f"the config its models were trained with ({CONFIG_FILE}); drop --config")
    return bundle.config(list(getattr(args, "overrides", None) or []))


def export_bundle(work_dir: str | Path, out_dir: str | Path, config: RadiospineConfig, *,
                  overwrite: bool = False) -> dict[str, Any]:
    """Copy a trained work folder's localiser, CNN, GBMs and prior into ``out_dir`` with a model card and the
    SHA-256 of every file (see the module docstring). Returns ``bundle.json``'s content.

    ``config`` must be the config the work folder was trained with: its ``localizer``, ``features``, ``roi`` and
    ``models`` sections are checked against the hashes in the stages' manifests.

    Raises:
        MissingInputError: the work folder lacks the localiser, the CNN or the models (names the command).
        UserError: ``config`` is not the training config, or ``out_dir`` holds something and ``overwrite`` is off.
    """
    workspace, out_dir = Workspace(work_dir), Path(out_dir)
    features_dir = workspace.features_dir("train")
    _check_trained_with(workspace, config)
    if out_dir.exists() and any(out_dir.iterdir()):
        if not overwrite:
            raise UserError(f"{out_dir} is not empty; pass --overwrite to replace it or choose another --out")
        if not (out_dir / BUNDLE_FILE).is_file():
            raise UserError(f"{out_dir} is not empty and holds no {BUNDLE_FILE} (not a bundle): choose another --out")
        shutil.rmtree(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)

    bundled = Workspace(out_dir)
    for path in localizer_files(workspace.localizer_dir):
        _copy(path, bundled.localizer_dir / path.name, "radiospine train-localizer")
    if config.features.cnn.enabled:
        source = Path(config.features.cnn.checkpoint).expanduser() if config.features.cnn.checkpoint else \
            features_dir / "_cnn" / f"{FULL_MODEL}.pt"
        for path in (source, source.with_suffix(".json")):
            _copy(path, out_dir / "cnn" / f"{FULL_MODEL}{path.suffix}", "radiospine train-gbm")
    if config.features.radiomics.enabled:
        _copy(config.features.radiomics.params_path(), out_dir / RADIOMICS_FILE, "")
    for path in sorted(workspace.models_dir.rglob("*")):
        relative = path.relative_to(workspace.models_dir)
        if path.is_file() and relative.name not in _MODELS_LEFT_OUT and not relative.name.startswith("."):
            _copy(path, bundled.models_dir / relative, "radiospine train-gbm")
    if not bundled.prior.is_file():
        raise MissingInputError(f"{workspace.prior} does not exist: run radiospine train-gbm first")

    tree = config.model_dump(mode="json")
    tree["features"]["cnn"]["checkpoint"] = None
    tree["features"]["radiomics"]["params"] = RADIOMICS_FILE
    atomic_write_text(out_dir / CONFIG_FILE, "# the config the bundled models were trained with (radiospine "
                      "export-model)\n" + yaml.safe_dump(tree, sort_keys=False))
    atomic_write_text(out_dir / CARD_FILE, json.dumps(_model_card(workspace, out_dir), indent=2))

    files = {path.relative_to(out_dir).as_posix(): file_sha256(path)
             for path in sorted(out_dir.rglob("*")) if path.is_file() and path.name != BUNDLE_FILE}
    description = {"format": BUNDLE_FORMAT, "radiospine_version": __version__,
                   "written_at": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
                   "config_hash": config_hash(config), "files": files}
    atomic_write_text(out_dir / BUNDLE_FILE, json.dumps(description, indent=2))
    return description


def open_bundle(path: str | Path) -> ModelBundle:
    """A bundle folder after checking its format, its radiospine version and every file's SHA-256.

    Raises:
        MissingInputError: ``path`` or its ``bundle.json`` does not exist.
        BundleError: another format or radiospine version, a listed file missing or changed.
    """
    root = Path(path)
    description_path = root / BUNDLE_FILE
    if not root.is_dir():
        raise MissingInputError(f"model bundle {root} does not exist; {EXPORT_FIX}")
    if not description_path.is_file():
        raise MissingInputError(f"{root} is not a model bundle (no {BUNDLE_FILE}); {EXPORT_FIX}")
    try:
        description = json.loads(description_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise BundleError(f"{description_path} is not valid JSON ({exc}); {EXPORT_FIX}") from None
    if not isinstance(description, dict) or description.get("format") != BUNDLE_FORMAT:
        found = description.get("format") if isinstance(description, dict) else None
        raise BundleError(f"{description_path}: bundle format {found!r}, this radiospine reads {BUNDLE_FORMAT!r}; "
                          f"{EXPORT_FIX} with this version")
    if description.get("radiospine_version") != __version__:
        raise BundleError(f"{description_path}: the bundle was written by radiospine "
                          f"{description.get('radiospine_version')!r}, this is {__version__}; use that version or "
                          f"{EXPORT_FIX} with this one")
    files = description.get("files")
    if not isinstance(files, dict) or CONFIG_FILE not in files or f"models/{MODEL_CARD}" not in files:
        raise BundleError(f"{description_path} does not list the bundle's files; {EXPORT_FIX}")
    for relative, expected in sorted(files.items()):
        file = root / relative
        if not file.is_file():
            raise BundleError(f"model bundle {root}: {relative} is missing; copy the whole folder or {EXPORT_FIX}")
        if file_sha256(file) != expected:
            raise BundleError(f"model bundle {root}: {relative} does not match its SHA-256 in {BUNDLE_FILE} "
                              f"(changed or damaged since export); copy the bundle again or {EXPORT_FIX}")
    return ModelBundle(root=root, description=description)


def _check_trained_with(workspace: Workspace, config: RadiospineConfig) -> None:
    """Raise UserError unless ``config`` is what the work folder's localiser, features and models record."""
    recorded = {
        "localizer": (workspace.localizer_dir, config.localizer, "radiospine train-localizer"),
        "features": (workspace.features_dir("train"), config.features, "radiospine train-gbm"),
        "models": (workspace.models_dir, config.models, "radiospine train-gbm"),
    }
    for section, (folder, value, command) in recorded.items():
        manifest = read_manifest(folder)
        if manifest is None:
            raise MissingInputError(f"{folder / MANIFEST_NAME} does not exist: run {command} first")
        if manifest.get("config_hash") != config_hash(value):
            raise UserError(f"the {section} config differs from the one {folder} was trained with "
                            f"(hash {manifest.get('config_hash')} recorded, {config_hash(value)} given); pass the "
                            f"--config and --set options of training")
    roi = (read_manifest(workspace.features_dir("train")) or {}).get("inputs", {}).get("roi_config")
    if roi != config_hash(config.roi):
        raise UserError(f"the roi config differs from the one the training features were cut with (hash {roi} "
                        f"recorded, {config_hash(config.roi)} given); pass the --config and --set options of training")


def _copy(source: Path, target: Path, command: str) -> None:
    if not source.is_file():
        how = f": run {command} first" if command else ""
        raise MissingInputError(f"{source} does not exist{how}")
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(source, target)


def _model_card(workspace: Workspace, out_dir: Path) -> dict[str, Any]:
    """What a reader of the bundle needs to judge it: training data, CV scores, versions, what each part saw."""
    models_card = json.loads((out_dir / "models" / MODEL_CARD).read_text())
    report = models_card.get("report", {})
    localizer = json.loads((out_dir / "localizer" / "localizer.json").read_text()).get("training", {})
    cnn_sidecar = out_dir / "cnn" / f"{FULL_MODEL}.json"
    cnn = json.loads(cnn_sidecar.read_text()) if cnn_sidecar.is_file() else None
    features_manifest = read_manifest(workspace.features_dir("train")) or {}
    return {
        "data": {"training_studies": report.get("n_studies"), "rows": report.get("n_rows"),
                 "labelled_rows": report.get("n_labelled_rows"),
                 "feature_columns": report.get("n_feature_columns"),
                 "catalog_hash": features_manifest.get("inputs", {}).get("catalog"),
                 "localizer_training_studies": localizer.get("studies")},
        "cv_scores": report.get("cv_scores", {}).get("final", {}).get("all"),
        "weighted_prior_in_sample": report.get("weighted_prior_in_sample"),
        "versions": models_card.get("versions"),
        "models_config_hash": models_card.get("config_hash"),
        "cnn": None if cnn is None else {key: value for key, value in cnn.items() if key != "state_sha256"},
        "localizer_training": localizer,
    }
