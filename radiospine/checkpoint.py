"""Torch weights on disk, one format for every network (the localiser's U-Nets, the CNN's models).

A checkpoint is two files::

    <name>.pt     the state dict (``torch.save``), read back with ``torch.load(weights_only=True)``: no pickle of
                  arbitrary objects
    <name>.json   the sidecar: ``architecture`` (what the network is built from), ``state_sha256`` (the SHA-256 of
                  the ``.pt`` file) and the caller's meta (what it was trained on, its channels, ...)

The same state dict always gives the same ``.pt`` bytes (and so the same hash). The sidecar is written last, so a
checkpoint whose sidecar is missing is incomplete. Loading verifies the hash: weights that are missing, corrupt,
half-written or not the ones the sidecar describes are refused with an error naming the file and what to do.
"""

from __future__ import annotations

import io
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from radiospine import artifacts
from radiospine.errors import CheckpointError, MissingInputError
from radiospine.hashing import file_sha256

#: Sidecar key holding the architecture.
ARCHITECTURE_KEY = "architecture"
#: Sidecar key holding the SHA-256 of the weights file.
HASH_KEY = "state_sha256"


def sidecar_path(path: str | Path) -> Path:
    """The sidecar of weights file ``path`` (``model.pt`` -> ``model.json``)."""
    return Path(path).with_suffix(".json")


def save_checkpoint(path: str | Path, state_dict: Mapping[str, torch.Tensor], architecture: Mapping[str, Any],
                    meta: Mapping[str, Any] | None = None) -> None:
    """Write ``path`` (the state dict) then its sidecar (architecture, weights hash, ``meta``), each atomically.

    Args:
        path: the weights file (``.pt``); the sidecar goes beside it (:func:`sidecar_path`).
        state_dict: parameter name -> tensor.
        architecture: JSON-serialisable description the network is rebuilt from.
        meta: further JSON-serialisable entries of the sidecar (must not use the keys ``architecture`` or
            ``state_sha256``).
    """
    path = Path(path)
    reserved = {ARCHITECTURE_KEY, HASH_KEY} & set(meta or {})
    if reserved:
        raise ValueError(f"checkpoint meta may not use the reserved key(s) {sorted(reserved)}")
    # Serialised in memory, then written: torch names the records of its zip archive after the file it writes
    # to, and the atomic write's temporary name is random, so saving to it would give different bytes for the
    # same weights. In memory the records are always "archive/...": the same weights, the same bytes.
    buffer = io.BytesIO()
    torch.save(dict(state_dict), buffer)
    with artifacts.atomic_path(path) as tmp:
        tmp.write_bytes(buffer.getvalue())
    sidecar = {ARCHITECTURE_KEY: dict(architecture), HASH_KEY: file_sha256(path), **dict(meta or {})}
    artifacts.atomic_write_text(sidecar_path(path), json.dumps(sidecar, indent=2, sort_keys=True))


def read_checkpoint_meta(path: str | Path) -> dict[str, Any] | None:
    """The sidecar of a complete checkpoint, or None.

    Returns:
        The sidecar as a dict (``architecture``, ``state_sha256`` and the meta) when the weights file and its
        sidecar exist, the sidecar is valid JSON and its hash matches the weights; otherwise None (used to decide
        whether a saved checkpoint can be reused).
    """
    try:
        return _verified_sidecar(Path(path), fix="")
    except (FileNotFoundError, CheckpointError):
        return None


def load_checkpoint(path: str | Path, *, fix: str, map_location: str | torch.device = "cpu"
                    ) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """The state dict and sidecar of a checkpoint written by :func:`save_checkpoint`, its hash verified.

    Args:
        path: the weights file.
        fix: what the user should do when the checkpoint is unusable (ends every error message).
        map_location: where ``torch.load`` puts the tensors.

    Returns:
        ``(state_dict, sidecar)``: parameter name -> tensor, and the sidecar dict (see :func:`read_checkpoint_meta`).

    Raises:
        MissingInputError: the weights file does not exist (a ``FileNotFoundError``).
        CheckpointError: the sidecar is missing or unreadable, the weights do not match its hash, or torch cannot
            read them.
    """
    path = Path(path)
    sidecar = _verified_sidecar(path, fix=fix)
    try:
        state_dict = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:
        first_line = next(iter(str(exc).splitlines()), "")
        raise CheckpointError(f"checkpoint {path} cannot be read by torch as a state dict ({type(exc).__name__}: "
                              f"{first_line}); {fix}") from exc
    return state_dict, sidecar


def _verified_sidecar(path: Path, *, fix: str) -> dict[str, Any]:
    """The sidecar of ``path`` after checking that both files exist and the weights' hash matches."""
    if not path.is_file():
        raise MissingInputError(f"checkpoint {path} does not exist; {fix}")
    meta_path = sidecar_path(path)
    if not meta_path.is_file():
        raise CheckpointError(f"checkpoint {path}: its sidecar {meta_path.name} is missing (the checkpoint is "
                              f"incomplete: half-written?); {fix}")
    try:
        sidecar = json.loads(meta_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"checkpoint {path}: its sidecar {meta_path.name} is not valid JSON ({exc}); {fix}"
                              ) from None
    if not isinstance(sidecar, dict) or ARCHITECTURE_KEY not in sidecar or HASH_KEY not in sidecar:
        raise CheckpointError(f"checkpoint {path}: its sidecar {meta_path.name} lacks {ARCHITECTURE_KEY!r} or "
                              f"{HASH_KEY!r}; {fix}")
    if sidecar[HASH_KEY] != file_sha256(path):
        raise CheckpointError(f"checkpoint {path}: the weights do not match the {HASH_KEY} in {meta_path.name} "
                              f"(changed or corrupt since they were saved); {fix}")
    return sidecar
