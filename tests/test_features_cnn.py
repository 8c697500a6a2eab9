"""The CNN features: inputs, augmentation, checkpoints, determinism and out-of-fold fitting."""

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
    augment_batch,
    base_condition_index,
    crop_inputs,
    predict_inputs,
    train_backbone,
    view_index,
)
from radiospine.features.columns import CNN_PROBABILITY_FEATURES
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


def test_forward_shapes_and_probabilities() -> None:
    architecture = CnnArchitecture.from_config(TINY)
    model = SpineCnn(architecture).eval()
    x = torch.randn(4, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    conditions, views = np.array([0, 1, 2, 0]), np.array([1, 0, 2, 2])
    assert model(x, torch.from_numpy(conditions), torch.from_numpy(views)).shape == (4, 3)
    proba = predict_inputs(model, x.numpy(), conditions, views, batch_size=3, device=torch.device("cpu"))
    assert proba.shape == (4, 3) and proba.dtype == np.float64
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, atol=1e-12)
    # the view is an input: the same pixels seen as another view give other probabilities
    other = predict_inputs(model, x.numpy(), conditions, (views + 1) % 3, batch_size=4, device=torch.device("cpu"))
    assert np.abs(other - proba).max() > 1e-6
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
    views = np.array([view_index(c.roi.view) for c in crops])
    return crops, inputs, y, conditions, views


def test_augmentation_is_seeded_mirrors_only_axial_crops_and_keeps_shapes() -> None:
    x = torch.randn(64, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    views = torch.tensor([view_index("axial_t2"), view_index("sagittal_t1")] * 32)
    first = augment_batch(x, views, torch.Generator().manual_seed(5))
    again = augment_batch(x, views, torch.Generator().manual_seed(5))
    assert first.shape == x.shape and first.dtype == x.dtype and torch.equal(first, again)
    assert not torch.equal(first, augment_batch(x, views, torch.Generator().manual_seed(6)))

    # A left-right asymmetric image (bright left half): mirrored axial crops put the bright half on the right,
    # sagittal crops never do.
    half = torch.zeros(64, 3, 16, 16)
    half[..., :8] = 1.0
    moved = augment_batch(half, views, torch.Generator().manual_seed(7))
    mirrored = (moved[..., 8:].mean(dim=(1, 2, 3)) > moved[..., :8].mean(dim=(1, 2, 3))).numpy()
    axial = (views == view_index("axial_t2")).numpy()
    assert not mirrored[~axial].any()
    assert 5 < mirrored[axial].sum() < 27  # about half of the 32 axial crops
    # Every slice of a stack moves together: equal slices of random pixels stay equal up to the noise (at most
    # 0.1 per slice), where slices moved independently would differ by about 1.4.
    same = x[:, :1].expand(-1, 3, -1, -1).contiguous()
    out = augment_batch(same, views, torch.Generator().manual_seed(8))
    assert float((out[:, 0] - out[:, 2]).std()) < 0.2


def test_training_is_seeded_and_checkpoints_round_trip(tmp_path: Path) -> None:
    crops, inputs, y, conditions, views = training_rows()
    with thread_budget(1):
        first = train_backbone(inputs, y, conditions, views, TINY, seed=7)
        again = train_backbone(inputs, y, conditions, views, TINY, seed=7)
        other = train_backbone(inputs, y, conditions, views, TINY, seed=8)
        plain = train_backbone(inputs, y, conditions, views, TINY.model_copy(update={"augment": False}), seed=7)
    assert all(torch.equal(first[k], again[k]) for k in first)
    assert not all(torch.equal(first[k], other[k]) for k in first)
    assert not all(torch.equal(first[k], plain[k]) for k in first)  # augmentation changes what is learnt

    architecture = CnnArchitecture.from_config(TINY)
    save_checkpoint(tmp_path / "model.pt", first, architecture.to_json(), {"note": "test"})
    _, meta = load_checkpoint(tmp_path / "model.pt", fix="retrain")
    assert CnnArchitecture.from_json(meta["architecture"]) == architecture and meta["note"] == "test"
    direct = CnnExtractor(architecture, {"m": first}, default_model="m", device="cpu")
    from_disk = CnnExtractor.from_checkpoint(tmp_path / "model.pt", device="cpu")
    a, b = direct.extract(crops[:9]), from_disk.extract(crops[:9])
    assert all(r.ok for r in a) and [r.features for r in a] == [r.features for r in b]
    assert from_disk.fingerprint() == CnnExtractor.from_checkpoint(tmp_path / "model.pt").fingerprint()
    assert list(a[0].features) == list(CNN_PROBABILITY_FEATURES) == ["prob_normal_mild", "prob_moderate", "prob_severe"]
    assert all(sum(r.features.values()) == pytest.approx(1.0) for r in a)

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


def test_out_of_fold_no_study_is_described_by_a_model_that_saw_it(tmp_path: Path) -> None:
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

    # The probabilities really come from the recorded model, not the full one.
    for study in (1, 5):
        crops = study_crops(study, size=24)
        got = np.array([list(r.features.values()) for r in extractor.extract(crops)])
        inputs, _ = crop_inputs(crops, input_size=16, slices=3)
        conditions = np.array([base_condition_index(c.roi.condition) for c in crops])
        views = np.array([view_index(c.roi.view) for c in crops])
        cpu = torch.device("cpu")
        oof = predict_inputs(extractor.module(extractor.model_name(study)), inputs, conditions, views, batch_size=64,
                             device=cpu)
        full = predict_inputs(extractor.module(FULL_MODEL), inputs, conditions, views, batch_size=64, device=cpu)
        np.testing.assert_allclose(got, oof, rtol=1e-9, atol=1e-12)
        assert np.abs(got - full).max() > 1e-4

    # The test split's features come from the full model, loaded from the checkpoint the fit saved (as the
    # feature stage does for --split test): equal to the full model's probabilities, not a fold model's.
    test_extractor = CnnExtractor.from_checkpoint(tmp_path / f"{FULL_MODEL}.pt", device="cpu")
    unseen = study_crops(77, size=24)
    inputs, _ = crop_inputs(unseen, input_size=16, slices=3)
    conditions = np.array([base_condition_index(c.roi.condition) for c in unseen])
    views = np.array([view_index(c.roi.view) for c in unseen])
    got = np.array([list(r.features.values()) for r in test_extractor.extract(unseen)])
    full = predict_inputs(extractor.module(FULL_MODEL), inputs, conditions, views, batch_size=64, device=cpu)
    np.testing.assert_array_equal(got, full)
    fold = predict_inputs(extractor.module("fold_0"), inputs, conditions, views, batch_size=64, device=cpu)
    assert np.abs(got - fold).max() > 1e-4

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
