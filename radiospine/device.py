"""Where torch runs: one reading of the ``device`` settings (``localizer.device``, ``features.cnn.device``)."""

from __future__ import annotations

import torch

from radiospine.errors import ConfigError

#: The values a ``device`` setting takes.
DEVICE_SETTINGS: tuple[str, ...] = ("auto", "cpu", "cuda")


def resolve_device(setting: str, key: str) -> torch.device:
    """The torch device for a ``device`` setting.

    Args:
        setting: ``"auto"`` (CUDA when torch sees a GPU, else the CPU), ``"cpu"`` or ``"cuda"``.
        key: the config key the setting came from (``"features.cnn.device"``), named in errors.

    Returns:
        ``torch.device("cuda")`` or ``torch.device("cpu")``.

    Raises:
        ConfigError: ``"cuda"`` when torch sees no GPU, or a setting that is none of :data:`DEVICE_SETTINGS`; the
            message names ``key`` and the values to use instead.
    """
    if setting not in DEVICE_SETTINGS:
        raise ConfigError(f"{key} is {setting!r}; expected one of {', '.join(DEVICE_SETTINGS)}")
    if setting == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if setting == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"{key} is 'cuda' but torch sees no GPU; set {key} to 'auto' or 'cpu'")
    return torch.device(setting)
