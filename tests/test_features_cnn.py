"""The CNN embedding: inputs, checkpoints, determinism and out-of-fold fitting."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from features_synthetic import disc_crop, labels_of, study_crops

from radiospine.checkpoint import load_checkpoint, save_checkpoint
from radiospine.config import CnnConfig
from radiospine.errors import CheckpointError
from radiospine.features.cnn import (
    FULL_MODEL,
    OOF_RECORD,
    CnnArchitecture,
    CnnExtractor,
    CnnTrainer,
    SpineCnn,
    base_condition_index,
    crop_inputs,
    train_backbone,
)
from radiospine.threads import thread_budget

TINY = CnnConfig(epochs=2, folds=3, input_size=16, widths=(8, 16), embedding_size=6, batch_size=16, device="cpu")


def test_inputs_take_centre_slices_standardise_and_resize() -> None:
    crop = disc_crop(1, "spinal_canal_stenosis", "l4_l5", "sagittal_t2", disc_radius_px=8, size=40, slices=5)
    constant = dataclasses.replace(crop, image=np.ones_like(crop.image))
    single = dataclasses.replace(crop, image=crop.image[2:3], mask=crop.mask[2:3])
    inputs, errors = crop_inputs([crop, constant, single], input_size=16, slices=3)
    assert inputs.shape == (3, 3, 16, 16) and inputs.dtype == np.float32
    assert errors[0] is None and "constant" in errors[1] and errors[2] is None
    assert abs(inputs[0].mean()) < 0.1 and inputs[0].std() == pytest.approx(1.0, abs=0.15)
    assert np.array_equal(inputs[2][0], inputs[2][2])  # one slice: edges repeated
    assert not inputs[1].any()


def test_embedding_size_is_configurable_and_forward_shapes() -> None:
    architecture = CnnArchitecture.from_config(TINY)
    model = SpineCnn(architecture).eval()
    x = torch.zeros(4, 3, 16, 16)
    assert model.embed(x).shape == (4, 6)
    assert model(x, torch.tensor([0, 1, 2, 0])).shape == (4, 3)
    with pytest.raises(ValueError, match="multiple of"):
        CnnConfig(input_size=20, widths=(8, 16, 32))
    with pytest.raises(ValueError, match="odd"):
        CnnConfig(slices=4)


def training_rows(n_studies: int = 6):
    crops = [crop for s in range(1, n_studies + 1) for crop in study_crops(s, size=24)]
    inputs, errors = crop_inputs(crops, input_size=16, slices=3)
    assert all(e is None for e in errors)
    labels = labels_of(range(1, n_studies + 1))
    y = np.array([labels[c.roi.key] for c in crops])
    conditions = np.array([base_condition_index(c.roi.condition) for c in crops])
    return crops, inputs, y, conditions


def test_training_is_seeded_and_checkpoints_round_trip(tmp_path: Path) -> None:
    crops, inputs, y, conditions = training_rows()
    with thread_budget(1):
        first = train_backbone(inputs, y, conditions, TINY, seed=7)
        again = train_backbone(inputs, y, conditions, TINY, seed=7)
        other = train_backbone(inputs, y, conditions, TINY, seed=8)
    assert all(torch.equal(first[k], again[k]) for k in first)
    assert not all(torch.equal(first[k], other[k]) for k in first)

    architecture = CnnArchitecture.from_config(TINY)
    save_checkpoint(tmp_path / "model.pt", first, architecture.to_json(), {"note": "test"})
    _, meta = load_checkpoint(tmp_path / "model.pt", fix="retrain")
    assert CnnArchitecture.from_json(meta["architecture"]) == architecture and meta["note"] == "test"
    direct = CnnExtractor(architecture, {"m": first}, default_model="m", device="cpu")
    from_disk = CnnExtractor.from_checkpoint(tmp_path / "model.pt", device="cpu")
    a, b = direct.extract(crops[:9]), from_disk.extract(crops[:9])
    assert all(r.ok for r in a) and [r.features for r in a] == [r.features for r in b]
    assert from_disk.fingerprint() == CnnExtractor.from_checkpoint(tmp_path / "model.pt").fingerprint()
    assert list(a[0].features) == [f"emb_{i:03d}" for i in range(6)]

    with open(tmp_path / "model.pt", "ab") as handle:
        handle.write(b"\0")
    with pytest.raises(CheckpointError, match=r"model.pt: the weights do not match .*features.cnn.checkpoint"):
        CnnExtractor.from_checkpoint(tmp_path / "model.pt")
    (tmp_path / "model.json").unlink()
    with pytest.raises(ValueError, match=r"model.json"):
        CnnExtractor.from_checkpoint(tmp_path / "model.pt")
    with pytest.raises(FileNotFoundError, match=r"features.cnn.checkpoint"):
        CnnExtractor.from_checkpoint(tmp_path / "absent.pt")


def prepare_all(trainer: CnnTrainer, workdir: Path, study_ids) -> None:
    (workdir / "inputs").mkdir(parents=True)
    for s in study_ids:
        crops = [] if s == 9 else study_crops(s, size=24)  # study 9: its crops could not be made
        np.savez(workdir / "inputs" / f"study_{s}.npz", **trainer.prepare(crops))


def test_out_of_fold_no_study_is_embedded_by_a_model_that_saw_it(tmp_path: Path) -> None:
    study_ids = list(range(1, 10))
    labels = labels_of(range(1, 9))  # study 9 has no labels and no crops
    trainer = CnnTrainer(TINY, labels)
    prepare_all(trainer, tmp_path, study_ids)
    extractor = trainer.fit(tmp_path, study_ids, threads=1, progress=False)

    record = json.loads((tmp_path / OOF_RECORD).read_text())
    assert set(record["training_studies"]) == {"fold_0", "fold_1", "fold_2", FULL_MODEL}
    assert record["training_studies"][FULL_MODEL] == list(range(1, 9))
    for study in range(1, 9):
        model = record["model_for_study"][str(study)]
        assert model == extractor.model_name(study) != FULL_MODEL
        assert study not in record["training_studies"][model]
        # every other fold model saw it
        assert all(study in studies for name, studies in record["training_studies"].items() if name != model)
    assert extractor.model_name(9) == FULL_MODEL

    # The embeddings really come from the recorded model, not the full one.
    for study in (1, 5):
        crops = study_crops(study, size=24)
        got = np.array([list(r.features.values()) for r in extractor.extract(crops)])
        inputs, _ = crop_inputs(crops, input_size=16, slices=3)
        with torch.inference_mode():
            oof = extractor.module(extractor.model_name(study)).embed(torch.from_numpy(inputs)).double().numpy()
            full = extractor.module(FULL_MODEL).embed(torch.from_numpy(inputs)).double().numpy()
        np.testing.assert_allclose(got, oof, rtol=1e-6, atol=1e-6)
        assert np.abs(got - full).max() > 1e-3

    # A second fit reuses the saved models (a resumed run) and gives the same extractor.
    mtimes = {p.name: p.stat().st_mtime_ns for p in tmp_path.glob("*.pt")}
    again = trainer.fit(tmp_path, study_ids, threads=1, progress=False)
    assert {p.name: p.stat().st_mtime_ns for p in tmp_path.glob("*.pt")} == mtimes
    assert again.fingerprint() == extractor.fingerprint()


def test_out_of_fold_needs_enough_labelled_studies(tmp_path: Path) -> None:
    trainer = CnnTrainer(TINY, labels_of([1, 2]))
    prepare_all(trainer, tmp_path, [1, 2, 3])
    with pytest.raises(ValueError, match=r"features.cnn.folds=3"):
        trainer.fit(tmp_path, [1, 2, 3], threads=1, progress=False)
    unlabelled = CnnTrainer(TINY, {})
    with pytest.raises(ValueError, match="no crop of this split has a label"):
        unlabelled.fit(tmp_path, [1, 2, 3], threads=1, progress=False)
