"""Stage artifacts in the work folder: atomic writes and provenance manifests.

Every stage writes its outputs under ``WORK/<stage>/`` with a ``_manifest.json`` beside them holding the resolved
config section, its hash, the hashes of the inputs it read, library versions and the date. A stage whose manifest
matches the current config and inputs is up to date and is not re-run; a changed config re-runs only the stages
that depend on it. (The leading underscore keeps the manifest out of ``pandas.read_parquet(folder)``.)
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import importlib.metadata
import json
import os
import shutil
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from radiospine import __version__
from radiospine.config import config_hash
from radiospine.errors import DataError, UserError

MANIFEST_NAME = "_manifest.json"
_UMASK = os.umask(0o022)
os.umask(_UMASK)
_VERSIONED_PACKAGES = ("numpy", "pandas", "pydicom", "SimpleITK", "pyradiomics-bhklab", "scikit-learn", "lightgbm",
                       "xgboost-cpu", "xgboost", "torch")


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a hidden temporary path beside ``path``; on success it replaces ``path`` in one ``os.replace``.

    A crash (even SIGKILL) leaves either the old file or the new one, never a half-written file; the temporary
    name starts with ``.`` so directory readers such as ``pandas.read_parquet(folder)`` ignore it.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(handle)
    tmp = Path(tmp_name)
    try:
        yield tmp
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp creates 0600; give the file the permissions open() would
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def atomic_write_text(path: str | Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def library_versions() -> dict[str, str]:
    """Versions of radiospine and the libraries whose behaviour shapes its artifacts."""
    versions = {"radiospine": __version__}
    for name in _VERSIONED_PACKAGES:
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            versions[name] = importlib.metadata.version(name)
    return versions


def write_manifest(folder: str | Path, *, stage: str, config: BaseModel, inputs: Mapping[str, str] | None = None,
                   extra: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Write ``folder/_manifest.json`` for ``stage`` and return what was written."""
    manifest = {
        "stage": stage,
        "config_hash": config_hash(config),
        "config": config.model_dump(mode="json"),
        "inputs": dict(inputs or {}),
        "versions": library_versions(),
        "written_at": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        **dict(extra or {}),
    }
    atomic_write_text(Path(folder) / MANIFEST_NAME, json.dumps(manifest, indent=2, sort_keys=True))
    return manifest


def read_manifest(folder: str | Path) -> dict[str, Any] | None:
    """The manifest in ``folder``, or None when there is none."""
    path = Path(folder) / MANIFEST_NAME
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise DataError(f"{path} is not valid JSON ({exc}); delete it to re-run the stage") from None


def is_up_to_date(folder: str | Path, *, config: BaseModel, inputs: Mapping[str, str] | None = None) -> bool:
    """True when ``folder``'s manifest was written with this config and these input hashes."""
    manifest = read_manifest(folder)
    return (manifest is not None and manifest.get("config_hash") == config_hash(config)
            and manifest.get("inputs", {}) == dict(inputs or {}))


def prepare_output_folder(out_dir: str | Path, entries: Sequence[str], *, overwrite: bool) -> Path:
    """Make ``out_dir`` ready for a writer that owns ``entries`` (its files and folders directly inside it).

    Entries already there are removed when ``overwrite`` is set; anything else in the folder is left alone.

    Raises:
        UserError: ``out_dir`` is a file, or already holds some of ``entries`` and ``overwrite`` is not set (the
            message names them and the fix).
    """
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise UserError(f"{out_dir} exists and is not a folder; pass another --out")
    present = [name for name in entries if (out_dir / name).exists()]
    if present and not overwrite:
        raise UserError(f"{out_dir} already holds a data set ({', '.join(present)}); pass --overwrite to replace "
                        f"it or choose another --out")
    for name in present:
        path = out_dir / name
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink()
    out_dir.mkdir(parents=True, exist_ok=True)
    return out_dir
