"""Artifacts: atomic writes and manifests."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from radiospine import artifacts
from radiospine.config import SynthConfig
from radiospine.errors import UserError


def test_atomic_path_replaces_only_on_success(tmp_path: Path) -> None:
    target = tmp_path / "out.txt"
    target.write_text("old")
    with pytest.raises(RuntimeError), artifacts.atomic_path(target) as tmp:
        tmp.write_text("half")
        raise RuntimeError("crash")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["out.txt"]
    artifacts.atomic_write_text(target, "new")
    assert target.read_text() == "new"


def test_hidden_temp_files_do_not_break_read_parquet(tmp_path: Path) -> None:
    pd.DataFrame({"a": [1, 2]}).to_parquet(tmp_path / "part1.parquet")
    with artifacts.atomic_path(tmp_path / "part2.parquet") as tmp:
        tmp.write_bytes(b"not parquet yet")
        assert len(pd.read_parquet(tmp_path)) == 2
        pd.DataFrame({"a": [3, 4, 5]}).to_parquet(tmp)
    assert len(pd.read_parquet(tmp_path)) == 5
    artifacts.write_manifest(tmp_path, stage="test", config=SynthConfig())
    assert len(pd.read_parquet(tmp_path)) == 5


def test_manifest_tracks_config_and_inputs(tmp_path: Path) -> None:
    config = SynthConfig(seed=1)
    assert not artifacts.is_up_to_date(tmp_path, config=config)
    written = artifacts.write_manifest(tmp_path, stage="synth", config=config, inputs={"catalog": "abc"})
    assert json.loads((tmp_path / "_manifest.json").read_text())["config_hash"] == written["config_hash"]
    assert "numpy" in written["versions"]
    assert artifacts.is_up_to_date(tmp_path, config=config, inputs={"catalog": "abc"})
    assert not artifacts.is_up_to_date(tmp_path, config=SynthConfig(seed=2), inputs={"catalog": "abc"})
    assert not artifacts.is_up_to_date(tmp_path, config=config, inputs={"catalog": "abd"})
    (tmp_path / "_manifest.json").write_text("{broken")
    with pytest.raises(ValueError, match="delete it"):
        artifacts.read_manifest(tmp_path)


def test_atomic_files_get_ordinary_permissions(tmp_path: Path) -> None:
    import os
    import stat

    artifacts.atomic_write_text(tmp_path / "f.txt", "x")
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE((tmp_path / "f.txt").stat().st_mode) == 0o666 & ~umask


def test_prepare_output_folder_refuses_then_replaces_only_its_own_entries(tmp_path) -> None:
    out = tmp_path / "data"
    (out / "train_images" / "1").mkdir(parents=True)
    (out / "train.csv").write_text("old\n")
    (out / "notes.txt").write_text("the user's\n")
    with pytest.raises(UserError, match=r"already holds a data set \(train_images, train\.csv\).*--overwrite"):
        artifacts.prepare_output_folder(out, ("train_images", "train.csv", "test.csv"), overwrite=False)
    assert (out / "train.csv").read_text() == "old\n"
    assert artifacts.prepare_output_folder(out, ("train_images", "train.csv"), overwrite=True) == out
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt"]
    with pytest.raises(UserError, match="is not a folder"):
        artifacts.prepare_output_folder(out / "notes.txt", ("train.csv",), overwrite=True)
    assert artifacts.prepare_output_folder(tmp_path / "new" / "data", ("train.csv",), overwrite=False).is_dir()
