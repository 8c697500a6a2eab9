"""One reading of the device settings."""

from __future__ import annotations

import pytest
import torch

from radiospine.device import resolve_device
from radiospine.errors import ConfigError


def test_auto_takes_cuda_when_available_else_cpu(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto", "localizer.device") == torch.device("cpu")
    assert resolve_device("cpu", "localizer.device") == torch.device("cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert resolve_device("auto", "localizer.device") == torch.device("cuda")
    assert resolve_device("cuda", "localizer.device") == torch.device("cuda")
    assert resolve_device("cpu", "localizer.device") == torch.device("cpu")


def test_cuda_without_a_gpu_and_unknown_settings_name_the_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ConfigError, match=r"features.cnn.device is .cuda. but torch sees no GPU; set features.cnn"):
        resolve_device("cuda", "features.cnn.device")
    with pytest.raises(ConfigError, match=r"localizer.device is 'gpu'; expected one of auto, cpu, cuda"):
        resolve_device("gpu", "localizer.device")
