"""One checkpoint format: weights + a JSON sidecar with the architecture and the weights' hash, verified on load."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from radiospine.checkpoint import (
    load_checkpoint,
    read_checkpoint_meta,
    save_checkpoint,
    sidecar_path,
)
from radiospine.errors import CheckpointError, MissingInputError
from radiospine.hashing import file_sha256

FIX = "train it again with `make it`"


def saved(tmp_path: Path) -> tuple[Path, dict[str, torch.Tensor]]:
    state = {"layer.weight": torch.arange(6, dtype=torch.float32).reshape(2, 3), "layer.bias": torch.zeros(2)}
    path = tmp_path / "net.pt"
    save_checkpoint(path, state, {"width": 3}, {"channels": ["a", "b"]})
    return path, state


def test_round_trip_keeps_weights_architecture_and_meta(tmp_path: Path) -> None:
    path, state = saved(tmp_path)
    loaded, sidecar = load_checkpoint(path, fix=FIX)
    assert set(loaded) == set(state) and all(torch.equal(loaded[k], state[k]) for k in state)
    assert sidecar == {"architecture": {"width": 3}, "channels": ["a", "b"], "state_sha256": file_sha256(path)}
    assert sidecar_path(path) == tmp_path / "net.json" and read_checkpoint_meta(path) == sidecar


def test_a_tampered_weights_file_is_refused_naming_file_and_fix(tmp_path: Path) -> None:
    path, state = saved(tmp_path)
    torch.save({k: v + 1 for k, v in state.items()}, path)  # valid torch file, other weights
    with pytest.raises(CheckpointError, match=r"net.pt: the weights do not match the state_sha256 in net.json.*it"):
        load_checkpoint(path, fix=FIX)
    assert read_checkpoint_meta(path) is None


def test_missing_or_corrupt_files_are_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(MissingInputError, match=r"absent.pt does not exist; train it again"):
        load_checkpoint(tmp_path / "absent.pt", fix=FIX)
    path, _ = saved(tmp_path)
    sidecar = json.loads(sidecar_path(path).read_text())
    path.write_bytes(b"not a torch file")
    sidecar["state_sha256"] = file_sha256(path)  # the hash matches, torch cannot read the bytes
    sidecar_path(path).write_text(json.dumps(sidecar))
    with pytest.raises(CheckpointError, match=r"net.pt cannot be read by torch as a state dict \(Unpickl.*make it"):
        load_checkpoint(path, fix=FIX)
    sidecar_path(path).write_text("{not json")
    with pytest.raises(CheckpointError, match=r"net.json is not valid JSON"):
        load_checkpoint(path, fix=FIX)
    sidecar_path(path).unlink()
    with pytest.raises(CheckpointError, match=r"sidecar net.json is missing"):
        load_checkpoint(path, fix=FIX)
    assert read_checkpoint_meta(path) is None


def test_meta_may_not_overwrite_the_reserved_keys(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"reserved key\(s\) \['state_sha256'\]"):
        save_checkpoint(tmp_path / "net.pt", {}, {}, {"state_sha256": "0"})


def test_the_same_weights_give_the_same_bytes_wherever_they_are_saved(tmp_path: Path) -> None:
    first, state = saved(tmp_path)
    (tmp_path / "other").mkdir()
    second = tmp_path / "other" / "net.pt"
    save_checkpoint(second, state, {"width": 3}, {"channels": ["a", "b"]})
    assert first.read_bytes() == second.read_bytes()  # the atomic write's random temporary name is not inside
    assert sidecar_path(first).read_bytes() == sidecar_path(second).read_bytes()
