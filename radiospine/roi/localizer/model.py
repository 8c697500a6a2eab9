"""The trained localiser: two heatmap U-Nets, the config they were trained with, where they run; saving and loading.

The two networks are saved as checkpoints of :mod:`radiospine.checkpoint` (``sagittal.pt`` / ``axial.pt``, each with
a JSON sidecar holding its U-Net spec, its channels and the weights' hash, checked on loading), and
``localizer.json`` holds the config they were trained with, the subarticular fallback offsets, the targets trained
without data (``untrained``: a sagittal-only training set has no axial network and no foraminal points) and the
training report.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch

from radiospine.artifacts import atomic_write_text
from radiospine.checkpoint import ARCHITECTURE_KEY, load_checkpoint, save_checkpoint, sidecar_path
from radiospine.config import LocalizerConfig
from radiospine.device import resolve_device
from radiospine.errors import MissingInputError
from radiospine.roi.localizer.grids import AXIAL_CHANNELS, INPUT_PERCENTILES, SAGITTAL_CHANNELS
from radiospine.roi.localizer.unet import UNet, UNetSpec

#: The config key of the localiser's device (named in errors).
DEVICE_KEY = "localizer.device"
#: What to do when the saved localiser is missing or unusable.
TRAIN_FIX = "train the localiser (radiospine train-localizer --data DIR --work WORK; --force replaces a saved one)"

#: The targets a localiser can lack training points for (:attr:`Localizer.untrained`).
UNTRAINED_TARGETS = ("foraminal", "axial")

#: Training-only keys of the ``config`` of localisers saved before the per-epoch sample budget
#: (``localizer.{sagittal,axial}_samples_per_epoch``) replaced them: left out when such a localiser is loaded, so
#: work folders and model bundles trained earlier still localise.
RETIRED_CONFIG_KEYS = ("sagittal_slices_per_epoch", "axial_slices_per_epoch")


@dataclass
class Localizer:
    """The trained networks, the config they were trained with, and the subarticular fallback offsets.

    Attributes:
        untrained: the targets its training data held no point of (:data:`UNTRAINED_TARGETS`): ``"axial"``
            (``axial`` is None: no Axial T2 series), ``"foraminal"`` (the sagittal network's foraminal channels
            saw no point). Inference records those points as missing, with the reason.
    """

    sagittal: UNet
    axial: UNet | None
    config: LocalizerConfig
    subarticular_offsets_mm: dict[str, list[float]]
    device: torch.device
    untrained: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if (self.axial is None) != ("axial" in self.untrained):
            raise ValueError("a localiser has no axial network exactly when 'axial' is untrained")


def save_localizer(localizer: Localizer, folder: str | Path, extra: dict | None = None) -> None:
    """Save a localiser in ``folder``: the checkpoints ``{sagittal,axial}.pt`` + ``.json`` (state dict; U-Net spec,
    channels and the weights' hash, :mod:`radiospine.checkpoint`; no ``axial.pt`` without an axial network, and
    an older one in the folder is removed), then ``localizer.json`` (config, input percentiles, subarticular
    offsets, the untrained targets and ``extra``, e.g. the training report).

    Args:
        localizer: the trained localiser.
        folder: created if missing.
        extra: more JSON-serialisable entries of ``localizer.json``.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    channels = {"sagittal": SAGITTAL_CHANNELS, "axial": AXIAL_CHANNELS}
    for kind in ("sagittal", "axial"):
        net = getattr(localizer, kind)
        if net is None:
            for stale in (folder / f"{kind}.pt", sidecar_path(folder / f"{kind}.pt")):
                stale.unlink(missing_ok=True)
            continue
        save_checkpoint(folder / f"{kind}.pt", net.state_dict(), net.spec.to_json(), {"channels": list(channels[kind])})
    description = {
        "config": localizer.config.model_dump(mode="json"),
        "input_percentiles": list(INPUT_PERCENTILES),
        "subarticular_offsets_mm": localizer.subarticular_offsets_mm,
        "untrained": list(localizer.untrained),
        **(extra or {}),
    }
    atomic_write_text(folder / "localizer.json", json.dumps(description, indent=2))


def localizer_files(folder: str | Path) -> list[Path]:
    """The files a localiser saved in ``folder`` (:func:`save_localizer`) consists of: ``localizer.json`` and the
    checkpoint and sidecar of each trained network (no ``axial.pt`` for a localiser trained without axial series).

    Raises:
        MissingInputError: ``folder`` holds no ``localizer.json``.
    """
    folder = Path(folder)
    path = folder / "localizer.json"
    if not path.is_file():
        raise MissingInputError(f"{path} does not exist: {TRAIN_FIX}")
    untrained = json.loads(path.read_text()).get("untrained", ())
    checkpoints = [folder / f"{kind}.pt" for kind in ("sagittal", "axial") if kind not in untrained]
    return [path, *(file for checkpoint in checkpoints for file in (checkpoint, sidecar_path(checkpoint)))]


def load_localizer(folder: str | Path, device: str = "auto") -> Localizer:
    """Load what :func:`save_localizer` wrote in ``folder``, on ``device`` (a ``localizer.device`` setting).

    Returns:
        The localiser, its networks in evaluation mode on the device (the :data:`RETIRED_CONFIG_KEYS` of an older
        localiser's config left out).

    Raises:
        FileNotFoundError: ``localizer.json`` or a weights file is missing.
        radiospine.errors.CheckpointError: a checkpoint's sidecar is missing or its weights do not match it.
    """
    folder = Path(folder)
    path = folder / "localizer.json"
    if not path.is_file():
        raise MissingInputError(f"{path} does not exist: {TRAIN_FIX}")
    description = json.loads(path.read_text())
    target = resolve_device(device, DEVICE_KEY)
    # a localiser saved before "untrained" was recorded had both networks and every target
    untrained = tuple(description.get("untrained", ()))
    nets: dict[str, UNet | None] = {"axial": None}
    for kind in ("sagittal", "axial"):
        if kind in untrained:
            continue
        state, sidecar = load_checkpoint(folder / f"{kind}.pt", fix=TRAIN_FIX, map_location=target)
        net = UNet(UNetSpec(**sidecar[ARCHITECTURE_KEY]))
        net.load_state_dict(state)
        nets[kind] = net.to(target).eval()
    config = {key: value for key, value in description["config"].items() if key not in RETIRED_CONFIG_KEYS}
    return Localizer(nets["sagittal"], nets["axial"], LocalizerConfig.model_validate(config),
                     description["subarticular_offsets_mm"], target, untrained)
