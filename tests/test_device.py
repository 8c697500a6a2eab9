"""One reading of the device settings."""

from __future__ import annotations

import os

import pytest
import torch

from radiospine.device import CUBLAS_WORKSPACE, deterministic_torch, resolve_device
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


def test_deterministic_torch_inside_the_block_and_restored_after(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    before = torch.are_deterministic_algorithms_enabled()
    with deterministic_torch(torch.device("cpu")):
        assert torch.are_deterministic_algorithms_enabled()
        assert torch.backends.cudnn.deterministic and not torch.backends.cudnn.benchmark
    assert torch.are_deterministic_algorithms_enabled() == before
    assert "CUBLAS_WORKSPACE_CONFIG" not in os.environ  # only set for CUDA
    with pytest.raises(RuntimeError), deterministic_torch(torch.device("cuda")):
        raise RuntimeError("boom")
    assert torch.are_deterministic_algorithms_enabled() == before
    assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == CUBLAS_WORKSPACE


def test_a_user_cublas_setting_is_kept(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CUBLAS_WORKSPACE_CONFIG", ":16:8")
    with deterministic_torch(torch.device("cuda")):
        pass
    assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":16:8"
