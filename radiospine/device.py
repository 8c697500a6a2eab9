"""Where torch runs: one reading of the ``device`` settings (``localizer.device``, ``features.cnn.device``)."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

import torch

from radiospine.errors import ConfigError

#: cuBLAS's workspace setting that makes its matrix products deterministic (set only when torch runs on CUDA).
CUBLAS_WORKSPACE = ":4096:8"

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


@contextlib.contextmanager
def deterministic_torch(device: torch.device) -> Iterator[None]:
    """Run torch's deterministic algorithms inside the block, and restore the previous settings after.

    ``torch.use_deterministic_algorithms(True)`` (an operation without a deterministic implementation raises
    instead of silently differing between runs; every CPU operation the localiser and the CNN use has one),
    cuDNN's deterministic convolutions without its benchmark (which times candidate algorithms and may pick
    another one from run to run). On CUDA, ``CUBLAS_WORKSPACE_CONFIG`` is set to :data:`CUBLAS_WORKSPACE` unless
    the user set it: cuBLAS reads it when it starts, so it holds when this is the first CUDA work of the process.
    """
    if device.type == "cuda":
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", CUBLAS_WORKSPACE)
    before = (torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled(),
              torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark)
    torch.use_deterministic_algorithms(True)
    torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = True, False
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(before[0], warn_only=before[1])
        torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = before[2], before[3]
