"""The work folder's layout: every artifact path derived from the root."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from radiospine.workspace import Workspace, provenance_path


def test_every_artifact_path_is_under_the_root() -> None:
    workspace = Workspace("demo/work")
    assert workspace.root == Path("demo/work")
    assert workspace.localizer_dir == Path("demo/work/localizer")
    assert workspace.coordinates("test") == Path("demo/work/localizer/test_coordinates.csv")
    assert workspace.oof_coordinates == Path("demo/work/localizer/oof_coordinates.csv")
    assert workspace.features_dir("train") == Path("demo/work/features/train")
    assert workspace.models_dir == Path("demo/work/models")
    assert workspace.prior == Path("demo/work/models/prior.csv")


def test_a_workspace_is_a_value_and_creates_nothing(tmp_path: Path) -> None:
    workspace = Workspace(tmp_path / "work")
    assert workspace == Workspace(str(tmp_path / "work")) and hash(workspace) == hash(Workspace(tmp_path / "work"))
    with pytest.raises(dataclasses.FrozenInstanceError):
        workspace.root = tmp_path  # type: ignore[misc]
    workspace.features_dir("test"), workspace.models_dir, workspace.coordinates("test")
    assert not (tmp_path / "work").exists()


def test_provenance_sits_beside_any_coordinates_file() -> None:
    assert provenance_path("out/coords.csv") == Path("out/coords.provenance.csv")
    assert provenance_path(Workspace("w").coordinates("test")) == Path("w/localizer/test_coordinates.provenance.csv")
