"""The trained localiser: two heatmap U-Nets, the config they were trained with, where they run; saving and loading.

Weights are saved with ``torch.save(state_dict)`` beside a JSON file holding the architecture, the config and the
subarticular fallback offsets, and are loaded with ``weights_only=True``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch

from radiospine.artifacts import atomic_path, atomic_write_text
from radiospine.config import LocalizerConfig
from radiospine.roi.localizer.grids import AXIAL_CHANNELS, INPUT_PERCENTILES, SAGITTAL_CHANNELS
from radiospine.roi.localizer.unet import UNet, UNetSpec


@dataclass
class Localizer:
    """The two trained networks, the config they were trained with, and the subarticular fallback offsets."""

    sagittal: UNet
    axial: UNet
    config: LocalizerConfig
    subarticular_offsets_mm: dict[str, list[float]]
    device: torch.device


def resolve_device(setting: str) -> torch.device:
    """``auto`` -> cuda when there is one, else cpu; ``cuda`` without a GPU is an error naming the fix."""
    if setting == "cuda" and not torch.cuda.is_available():
        raise ValueError("localizer.device is 'cuda' but torch sees no GPU; set localizer.device=auto or cpu")
    return torch.device("cuda" if setting in ("auto", "cuda") and torch.cuda.is_available() else "cpu")


def save_localizer(localizer: Localizer, folder: str | Path, extra: dict | None = None) -> None:
    """``folder/{sagittal,axial}.pt`` (state dicts) and ``folder/localizer.json`` (architecture, config, offsets)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for kind in ("sagittal", "axial"):
        with atomic_path(folder / f"{kind}.pt") as tmp:
            torch.save(getattr(localizer, kind).state_dict(), tmp)
    description = {
        "sagittal": {"spec": localizer.sagittal.spec.to_json(), "channels": list(SAGITTAL_CHANNELS)},
        "axial": {"spec": localizer.axial.spec.to_json(), "channels": list(AXIAL_CHANNELS)},
        "config": localizer.config.model_dump(mode="json"),
        "input_percentiles": list(INPUT_PERCENTILES),
        "subarticular_offsets_mm": localizer.subarticular_offsets_mm,
        **(extra or {}),
    }
    atomic_write_text(folder / "localizer.json", json.dumps(description, indent=2))


def load_localizer(folder: str | Path, device: str = "auto") -> Localizer:
    """Load what :func:`save_localizer` wrote (weights with ``weights_only=True``)."""
    folder = Path(folder)
    path = folder / "localizer.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist: train the localiser first "
                                f"(radiospine train-localizer --data DIR --work WORK)")
    description = json.loads(path.read_text())
    target = resolve_device(device)
    nets = {}
    for kind in ("sagittal", "axial"):
        net = UNet(UNetSpec(**description[kind]["spec"]))
        state = torch.load(folder / f"{kind}.pt", map_location=target, weights_only=True)
        net.load_state_dict(state)
        nets[kind] = net.to(target).eval()
    return Localizer(nets["sagittal"], nets["axial"], LocalizerConfig.model_validate(description["config"]),
                     description["subarticular_offsets_mm"], target)
