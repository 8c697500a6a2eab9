"""Reproducibility (issue 18): a tiny pipeline run twice, with ``--jobs 1`` and with ``--jobs 2``, into two work
folders gives the same artifacts, bit for bit.

synth (``--small``, once: both runs read the same data folder) -> train-localizer -> train-gbm (the train
features first: ROI crops, radiomics, the CNN's out-of-fold fold models trained side by side in ``jobs``
processes, its embeddings) -> predict (localise, the test features, the models, the prior fill). The two runs are
two separate trainings from the same seeds, one with one process and one with two, so equal results show both
halves of the requirement: a run repeats exactly on one machine, and ``--jobs`` does not change the results.

Compared as bytes: every file of the two work folders (the localiser's and the CNN's ``.pt`` weights and their
sidecars, the Parquet feature shards, the CNN's prepared inputs and training rows, the boosters, the
out-of-fold predictions, the prior, the coordinates and their provenance, the submission and its filled rows),
except the few JSON files in :data:`VOLATILE`, which are compared with the fields below removed (and must be
equal otherwise):

* ``written_at`` in every ``_manifest.json``: when the stage finished (a timestamp).
* ``*seconds`` (``preparation_seconds``, ``total_seconds``, ``fit_seconds``, ``seconds``, ...): wall-clock
  timings of the localiser's training (in ``localizer.json`` and its manifest), of the localisation
  (``test_coordinates.summary.json``) and of each booster's fit (the model card's ``report.fit_seconds``, the
  models' manifest).

The compacted feature table (``features/<split>/_compact.arrow``) is compared as an Arrow table (schema and every
value) and its metadata record without ``shards``: that fingerprint names the shard files' inodes and
modification times, which belong to one folder by design (a copied folder falls back to its shards).

No artifact holds an absolute path of the work folder, so none is excluded for that reason (the test would see
it: the two work folders have different paths). The last part checks that the comparison can fail: changing
one CNN weight by one ulp, or one probability of the submission, is reported.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pytest
import torch
from tiny_pipeline import TINY_PIPELINE, set_options

from radiospine.checkpoint import load_checkpoint, save_checkpoint
from radiospine.cli import main
from radiospine.features.store import COMPACT_METADATA_KEY, COMPACT_NAME

pytestmark = pytest.mark.slow


#: JSON files whose bytes legitimately differ between runs (work-folder relative), compared without the fields
#: named in :func:`_without_volatile_fields` (see the module docstring).
VOLATILE = {"localizer/_manifest.json", "localizer/localizer.json", "localizer/test_coordinates.summary.json",
            "features/train/_manifest.json", "features/test/_manifest.json", "models/_manifest.json",
            "models/model_card.json"}


def _without_volatile_fields(value: Any) -> Any:
    """``value`` without the keys ``written_at`` (a timestamp) and ``*seconds`` (wall-clock timings), at any depth."""
    if isinstance(value, dict):
        return {key: _without_volatile_fields(item) for key, item in value.items()
                if key != "written_at" and not key.endswith("seconds")}
    if isinstance(value, list):
        return [_without_volatile_fields(item) for item in value]
    return value


def _compact_table(path: Path) -> tuple[pa.Table, dict]:
    """A compacted feature table without its schema metadata, and that metadata's record without ``shards``."""
    with pa.memory_map(str(path)) as source:
        table = pa.ipc.open_file(source).read_all()
    record = json.loads(table.schema.metadata[COMPACT_METADATA_KEY])
    return table.replace_schema_metadata(None), {key: item for key, item in record.items() if key != "shards"}


def artifact_differences(first: Path, second: Path) -> list[str]:
    """What differs between two work folders: files present in one only, and files whose bytes (or, for the
    files in :data:`VOLATILE`, whose JSON without the volatile fields) differ."""
    files = {str(path.relative_to(first)) for path in first.rglob("*") if path.is_file()}
    other = {str(path.relative_to(second)) for path in second.rglob("*") if path.is_file()}
    differences = [f"only in one run: {name}" for name in sorted(files ^ other)]
    for name in sorted(files & other):
        a, b = (first / name).read_bytes(), (second / name).read_bytes()
        if name in VOLATILE:
            if _without_volatile_fields(json.loads(a)) != _without_volatile_fields(json.loads(b)):
                differences.append(f"{name} (beyond its timestamps and timings)")
        elif Path(name).name == COMPACT_NAME:
            (table_a, record_a), (table_b, record_b) = _compact_table(first / name), _compact_table(second / name)
            # pandas' equals: NaN (a failed crop's features) equals NaN, which Arrow's equals does not grant
            same_values = table_a.schema.equals(table_b.schema) and table_a.to_pandas().equals(table_b.to_pandas())
            if not (same_values and record_a == record_b):
                differences.append(f"{name} (beyond its shard fingerprint)")
        elif a != b:
            differences.append(name)
    return differences


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("reproducibility") / "data"
    assert main(["synth", "--out", str(out), "--train-studies", "6", "--test-studies", "1", "--seed", "3", "--small",
                 "--set", "synth.partial_volume_samples=1"]) == 0
    return out


def run_pipeline(data: Path, work: Path, jobs: int, *extra: str) -> None:
    settings = set_options([*TINY_PIPELINE, *extra])
    assert main(["train-localizer", "--data", str(data), "--work", str(work), "--jobs", str(jobs), *settings]) == 0
    assert main(["train-gbm", "--data", str(data), "--work", str(work), "--jobs", str(jobs), "--no-progress",
                 *settings]) == 0
    assert main(["predict", "--data", str(data), "--split", "test", "--work", str(work), "--jobs", str(jobs),
                 "--out", str(work / "submission.csv"), "--no-progress", *settings]) == 0


def test_two_runs_with_one_and_two_worker_processes_give_identical_artifacts(data: Path, tmp_path: Path) -> None:
    one, two = tmp_path / "jobs1", tmp_path / "jobs2"
    run_pipeline(data, one, jobs=1)
    run_pipeline(data, two, jobs=2)

    produced = {str(path.relative_to(one)) for path in one.rglob("*") if path.is_file()}
    for expected in ("localizer/sagittal.pt", "localizer/axial.pt", "features/train/_cnn/full.pt",
                     "features/train/_cnn/fold_0.pt", "models/model_card.json", "submission.csv"):
        assert expected in produced
    assert sum(name.endswith(".parquet") for name in produced) == 7  # 6 train + 1 test shards
    assert sum(name.endswith((".txt", ".json")) and "/groups/" in name for name in produced) > 6  # boosters
    assert produced >= VOLATILE
    assert artifact_differences(one, two) == []

    # The comparison sees a change of one ulp in one weight, and in one probability of the submission.
    state, sidecar = load_checkpoint(two / "features/train/_cnn/full.pt", fix="")
    name = next(iter(state))
    state[name] = state[name].clone()
    state[name].view(-1)[0] = torch.nextafter(state[name].view(-1)[0], torch.tensor(np.inf))
    save_checkpoint(two / "features/train/_cnn/full.pt", state, sidecar["architecture"],
                    {k: v for k, v in sidecar.items() if k not in ("architecture", "state_sha256")})
    lines = (two / "submission.csv").read_text().splitlines()
    row_id, *values = lines[1].split(",")
    values[0] = repr(np.nextafter(float(values[0]), 1.0))
    (two / "submission.csv").write_text("\n".join([lines[0], ",".join([row_id, *values]), *lines[2:]]) + "\n")
    assert artifact_differences(one, two) == ["features/train/_cnn/full.json", "features/train/_cnn/full.pt",
                                              "submission.csv"]
