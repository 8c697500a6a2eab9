"""The hashing helper: the same values the manifests and checkpoints have always held."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from radiospine.hashing import canonical_json, file_sha256, json_hash, sha256_hex, sha256_stream, short_hash


def test_short_hash_is_the_16_digit_sha256_prefix_of_text_or_bytes() -> None:
    assert short_hash("abc") == "ba7816bf8f01cfea" == short_hash(b"abc")
    assert short_hash("a", b"b", "c") == short_hash("abc")  # chunks are joined
    assert sha256_hex("abc") == hashlib.sha256(b"abc").hexdigest()


def test_json_hash_ignores_key_order_and_keeps_the_historic_spelling() -> None:
    obj = {"b": [1, 2.5, None], "a": {"z": "\u00e9", "y": True}}
    assert canonical_json(obj) == json.dumps(obj, sort_keys=True)
    assert json_hash(obj) == json_hash(dict(reversed(obj.items())))
    assert json_hash(obj) == hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()[:16]


def test_file_sha256_streams_large_files(tmp_path: Path) -> None:
    data = bytes(range(256)) * 10_000  # several read blocks
    path = tmp_path / "blob"
    path.write_bytes(data)
    assert file_sha256(path) == hashlib.sha256(data).hexdigest()
    digest = sha256_stream()
    for start in range(0, len(data), 4096):
        digest.update(data[start:start + 4096])
    assert digest.hexdigest() == file_sha256(path)
