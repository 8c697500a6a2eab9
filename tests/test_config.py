"""Config loading: validation, unknown keys, overrides, hashing."""

from __future__ import annotations

from pathlib import Path

import pytest

from radiospine.config import config_hash, load_config, parse_overrides
from radiospine.errors import ConfigError


def test_default_config_loads() -> None:
    config = load_config()
    assert config.synth.train_studies > 0


def test_unknown_key_is_an_error_naming_it(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("synth:\n  seeed: 3\n")
    with pytest.raises(ConfigError, match=r"synth\.seeed"):
        load_config(path)


def test_overrides_and_hash() -> None:
    base = load_config()
    changed = load_config(overrides=["synth.seed=7"])
    assert changed.synth.seed == 7
    assert config_hash(changed) != config_hash(base)
    assert config_hash(load_config()) == config_hash(base)
    assert parse_overrides(["a.b=[1, 2]"]) == {"a": {"b": [1, 2]}}
    with pytest.raises(ConfigError, match=r"key.path=value"):
        parse_overrides(["novalue"])
    with pytest.raises(ConfigError, match=r"synth.seed"):
        load_config(overrides=["synth.seed=notanumber"])


def test_missing_and_malformed_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "none.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("synth: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)


def test_a_key_added_later_counts_in_the_hash_only_away_from_its_default() -> None:
    # regression: adding features.disc (off by default) changed the features hash, so every work folder's
    # features were set aside and recomputed although nothing they hold had changed
    from radiospine.hashing import json_hash

    features = load_config().features
    before_the_key = {k: v for k, v in features.model_dump(mode="json").items() if k != "disc"}
    assert config_hash(features) == json_hash(before_the_key)
    assert config_hash(load_config().localizer) == json_hash(load_config().localizer.model_dump(mode="json"))
    enabled = load_config(overrides=["features.disc.enabled=true"]).features
    assert config_hash(enabled) != config_hash(features)
    assert config_hash(load_config(overrides=["features.disc.enabled=true"])) != config_hash(load_config())
