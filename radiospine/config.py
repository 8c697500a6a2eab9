"""Typed, validated configuration: pydantic models, YAML loading and ``key.path=value`` overrides.

Unknown keys are errors (``extra="forbid"``), so a typo in a YAML file fails loudly with the key's path.
The resolved config of a run is written beside its artifacts together with :func:`config_hash`, so a stage
knows when its inputs changed.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError

#: The folder of the shipped YAML configs (``configs/`` at the top of the repository).
CONFIG_DIR = Path(__file__).resolve().parent / "configs"
DEFAULT_CONFIG = CONFIG_DIR / "default.yaml"


class ConfigError(ValueError):
    """A config file or override that does not validate; the message names the file and the key."""


class Section(BaseModel):
    """Base of every config section: frozen, unknown keys rejected."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class SynthConfig(Section):
    """Defaults of the synthetic study generator (``radiospine synth``); CLI flags override them."""

    train_studies: int = 60
    test_studies: int = 20
    seed: int = 0
    small: bool = True


class RadiospineConfig(Section):
    """The root of ``configs/default.yaml``."""

    synth: SynthConfig = SynthConfig()


def _set_dotted(tree: dict[str, Any], dotted: str, value: Any) -> None:
    keys = dotted.split(".")
    node = tree
    for key in keys[:-1]:
        node = node.setdefault(key, {})
        if not isinstance(node, dict):
            raise ConfigError(f"override {dotted!r}: {key!r} is not a section")
    node[keys[-1]] = value


def parse_overrides(overrides: list[str] | None) -> dict[str, Any]:
    """``["roi.crop_mm=40", "models.backend=xgboost"]`` -> nested dict; values are parsed as YAML."""
    tree: dict[str, Any] = {}
    for item in overrides or []:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"override {item!r} is not of the form key.path=value")
        _set_dotted(tree, key.strip(), yaml.safe_load(raw))
    return tree


def _deep_merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> RadiospineConfig:
    """Load and validate a YAML config (the shipped default when ``path`` is None), then apply overrides."""
    path = Path(path) if path is not None else DEFAULT_CONFIG
    try:
        tree = yaml.safe_load(path.read_text()) or {}
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist (the shipped default is {DEFAULT_CONFIG})") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {path} is not valid YAML: {exc}") from None
    if not isinstance(tree, dict):
        raise ConfigError(f"config file {path} must hold a mapping at the top, got {type(tree).__name__}")
    tree = _deep_merge(tree, parse_overrides(overrides))
    try:
        return RadiospineConfig.model_validate(tree)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        raise ConfigError(f"config {path}: {problems}") from None


def config_hash(config: BaseModel) -> str:
    """A short, stable content hash of a config (or one section of it)."""
    text = json.dumps(config.model_dump(mode="json"), sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]
