"""The ``radiospine`` command: its registry of runners and what it does with errors."""

from __future__ import annotations

import argparse
import importlib
import sys
import types
from pathlib import Path

import pytest

from radiospine import cli, errors
from radiospine.cli import COMMANDS, main


@pytest.fixture()
def runner(monkeypatch):
    """A ``boom`` command whose runner raises ``runner.error`` (set by the test)."""
    module = types.ModuleType("boom_runner")
    module.error = None

    def add_arguments(parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--what", default="x")

    def run(args: argparse.Namespace) -> int:
        raise module.error

    module.add_arguments, module.run = add_arguments, run
    monkeypatch.setitem(sys.modules, "boom_runner", module)
    monkeypatch.setitem(COMMANDS, "boom", ("boom_runner", "raises what the test sets"))
    return module


@pytest.mark.parametrize("error", [
    errors.UserError("--jobs must be >= 1, got 0"),
    errors.MissingInputError("WORK/models/model_card.json does not exist: run radiospine train-gbm"),
    errors.DataError("train.csv, line 4: 'Mild' is not a severity"),
    errors.SubmissionError(["1 row(s) sum to zero"]),
])
def test_a_radiospine_error_is_one_line_and_exit_code_2(runner, capsys, error) -> None:
    runner.error = error
    assert main(["boom"]) == 2
    err = capsys.readouterr().err
    assert err == f"radiospine boom: error: {error}\n"
    assert "Traceback" not in err


@pytest.mark.parametrize("error", [KeyError("sevrity"), ValueError("a bug"), FileNotFoundError("a bug's path"),
                                   TypeError("a bug")])
def test_a_programming_error_propagates_with_its_traceback(runner, error) -> None:
    runner.error = error
    with pytest.raises(type(error)) as caught:
        main(["boom"])
    assert caught.value is error


def test_very_verbose_shows_the_traceback_of_a_radiospine_error(runner) -> None:
    runner.error = errors.UserError("bad")
    with pytest.raises(errors.UserError):
        main(["-vv", "boom"])


def test_project_errors_keep_their_second_base() -> None:
    for name in ("ConfigError", "CatalogError", "DicomReadError", "RoiError", "StoreError", "SubmissionError",
                 "CheckpointError", "DataError"):
        cls = getattr(errors, name)
        assert issubclass(cls, errors.RadiospineError) and issubclass(cls, ValueError), name
    assert issubclass(errors.MissingInputError, FileNotFoundError)
    assert not issubclass(errors.UserError, ValueError)


def test_every_command_has_a_runner_in_the_package() -> None:
    for name, (module_name, _) in COMMANDS.items():
        assert module_name == f"radiospine.stages.{name.replace('-', '_')}", name
        module = importlib.import_module(module_name)
        assert callable(module.add_arguments) and callable(module.run), name


def test_runners_do_not_import_each_other() -> None:
    stages = Path(cli.__file__).parent / "stages"
    for path in stages.glob("*.py"):
        text = path.read_text()
        for forbidden in ("from radiospine.stages", "import radiospine.stages", "from pipelines", "import pipelines"):
            assert forbidden not in text, f"{path.name}: {forbidden}"


def test_an_out_of_range_argument_is_a_usage_error(tmp_path, capsys) -> None:
    with pytest.raises(SystemExit) as exit_code:
        main(["features", "--data", str(tmp_path), "--split", "train", "--work", str(tmp_path), "--jobs", "0"])
    assert exit_code.value.code == 2
    assert "argument --jobs: must be at least 1, got 0" in capsys.readouterr().err


def test_a_missing_stage_artifact_is_one_line(tmp_path, capsys) -> None:
    assert main(["report", "--data", str(tmp_path), "--work", str(tmp_path / "work"), "--out",
                 str(tmp_path / "report")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("radiospine report: error: ") and "model_card.json does not exist" in err
    assert err.count("\n") == 1
