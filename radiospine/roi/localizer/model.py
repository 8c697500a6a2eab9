"""The trained localiser: two heatmap U-Nets, the config they were trained with, where they run; saving and loading.

The two networks are saved as checkpoints of :mod:`radiospine.checkpoint` (``sagittal.pt`` / ``axial.pt``, each with
a JSON sidecar holding its U-Net spec, its channels and the weights' hash, checked on loading), and
``localizer.json`` holds the config they were trained with, the subarticular fallback offsets and the training
report.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch

from radiospine.artifacts import atomic_write_text
from radiospine.checkpoint import ARCHITECTURE_KEY, load_checkpoint, save_checkpoint
from radiospine.config import LocalizerConfig
from radiospine.device import resolve_device
from radiospine.errors import MissingInputError
from radiospine.roi.localizer.grids import AXIAL_CHANNELS, INPUT_PERCENTILES, SAGITTAL_CHANNELS
from radiospine.roi.localizer.unet import UNet, UNetSpec

#: The config key of the localiser's device (named in errors).
DEVICE_KEY = "localizer.device"
#: What to do when the saved localiser is missing or unusable.
TRAIN_FIX = "train the localiser (radiospine train-localizer --data DIR --work WORK; --force replaces a saved one)"

@dataclass
class Localizer:
    """The two trained networks, the config they were trained with, and the subarticular fallback offsets."""

    sagittal: UNet
    axial: UNet
    config: LocalizerConfig
    subarticular_offsets_mm: dict[str, list[float]]
    device: torch.device


def save_localizer(localizer: Localizer, folder: str | Path, extra: dict | None = None) -> None:
    """Save a localiser in ``folder``: the checkpoints ``{sagittal,axial}.pt`` + ``.json`` (state dict; U-Net spec,
    channels and the weights' hash, :mod:`radiospine.checkpoint`), then ``localizer.json`` (config, input
    percentiles, subarticular offsets and ``extra``, e.g. the training report).

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
        save_checkpoint(folder / f"{kind}.pt", net.state_dict(), net.spec.to_json(), {"channels": list(channels[kind])})
    description = {
        "config": localizer.config.model_dump(mode="json"),
        "input_percentiles": list(INPUT_PERCENTILES),
        "subarticular_offsets_mm": localizer.subarticular_offsets_mm,
        **(extra or {}),
    }
    atomic_write_text(folder / "localizer.json", json.dumps(description, indent=2))


def load_localizer(folder: str | Path, device: str = "auto") -> Localizer:
    """Load what :func:`save_localizer` wrote in ``folder``, on ``device`` (a ``localizer.device`` setting).

    Returns:
        The localiser, its networks in evaluation mode on the device.

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
    nets = {}
    for kind in ("sagittal", "axial"):
        state, sidecar = load_checkpoint(folder / f"{kind}.pt", fix=TRAIN_FIX, map_location=target)
        net = UNet(UNetSpec(**sidecar[ARCHITECTURE_KEY]))
        net.load_state_dict(state)
        nets[kind] = net.to(target).eval()
    return Localizer(nets["sagittal"], nets["axial"], LocalizerConfig.model_validate(description["config"]),
                     description["subarticular_offsets_mm"], target)
