"""Content hashes, defined once: every manifest, fingerprint and checkpoint hash of radiospine comes from here.

All hashes are SHA-256 as lowercase hex. Short hashes (config hashes, input hashes of manifests, extractor
fingerprints) are its first :data:`SHORT_LENGTH` hex digits; checkpoint hashes are the full 64 digits. JSON is
hashed in one canonical spelling (:func:`canonical_json`: ``json.dumps(obj, sort_keys=True)``), so the same
mapping gives the same hash whatever its key order. Values stored in manifests and checkpoint sidecars are
compared with new ones: changing anything here makes every saved artifact look stale.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

#: Hex digits kept by :func:`short_hash` (64 bits).
SHORT_LENGTH = 16
_BLOCK = 1 << 20


def sha256_stream() -> Any:
    """A fresh SHA-256 digest to ``update`` with data made piece by piece (``hexdigest()`` at the end)."""
    return hashlib.sha256()


def sha256_hex(*chunks: str | bytes) -> str:
    """The full SHA-256 (64 hex digits) of ``chunks`` joined (str chunks encoded as UTF-8)."""
    digest = hashlib.sha256()
    for chunk in chunks:
        digest.update(chunk.encode() if isinstance(chunk, str) else chunk)
    return digest.hexdigest()


def short_hash(*chunks: str | bytes) -> str:
    """The first :data:`SHORT_LENGTH` hex digits of :func:`sha256_hex` of ``chunks``."""
    return sha256_hex(*chunks)[:SHORT_LENGTH]


def canonical_json(obj: Any) -> str:
    """``obj`` (JSON-serialisable) as the JSON text that is hashed: keys sorted, default separators."""
    return json.dumps(obj, sort_keys=True)


def json_hash(obj: Any) -> str:
    """The short hash (:func:`short_hash`) of :func:`canonical_json` of ``obj``."""
    return short_hash(canonical_json(obj))


def file_sha256(path: str | Path) -> str:
    """The full SHA-256 (64 hex digits) of a file's bytes, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(_BLOCK), b""):
            digest.update(block)
    return digest.hexdigest()
