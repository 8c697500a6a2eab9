"""CNN features of ROI crops: a small 2.5D network's class probabilities, trained here or loaded from a checkpoint.

What the feature table gets
    Per crop (one per key and view), the network's probabilities of the three severities
    (``prob_normal_mild``, ``prob_moderate``, ``prob_severe``; columns ``cnn__<view>__prob_<severity>``). A
    probability means the same whichever network produced it, so the GBMs can stack them: out of fold on the
    training split, from the full model on the test split. (The network's inner embedding does not: every
    network learns its own basis, and the GBMs fed the embeddings of ``fold_k`` models scored worse than without
    them; see ``docs/design.md``, section 6.)
Input
    Each crop gives ``slices`` channels: its centre slice and neighbours (the 2.5D stack the ROI cutter made,
    ``roi.neighbour_slices``; edge slices repeated when the crop has fewer), standardised per crop (zero mean,
    unit variance over the stack: the series-level normalisation of the ROI cutter fixes the scale between
    series, this one the contrast between crops) and resized to ``input_size`` x ``input_size`` (bilinear with
    antialiasing; non-square crops are stretched). A crop with non-finite or constant pixels is a recorded
    failure.
Network (:class:`SpineCnn`)
    ``len(widths)`` blocks of 3x3 conv - batch norm - ReLU - 2x2 max pool, global average pooling, a linear layer
    to ``embedding_size`` units, and a head mapping ReLU(those units) together with one-hots of the crop's base
    condition (canal, foramen, recess) and view to the three severities' logits. Trained with cross-entropy
    weighted 1/2/4 like the metric.
Augmentation (:func:`augment_batch`, training only, ``features.cnn.augment``)
    Per crop: contrast and brightness (the standardised intensities scaled by 0.8-1.25 and shifted by up to
    0.2 standard deviations), Gaussian noise (up to 0.1), a rotation of up to 10 degrees, a scaling of
    0.9-1.1 and a shift of up to 6% of the side (bilinear resampling, edges repeated), the same for every slice
    of the stack. Flips only where anatomy allows: axial crops are mirrored left-right with probability 1/2 (the
    network is told the base condition, not the side, so a mirrored left recess is a right recess of the same
    grade, and the canal is symmetric); sagittal crops are never flipped (anterior/posterior and head/foot are
    not symmetric).
Out-of-fold fitting (:class:`CnnTrainer`)
    On the training split the studies with labelled crops are split into ``folds`` groups (K-fold over study
    ids, seeded). Model ``fold_k`` is trained on the other groups and describes the studies of group k, so every
    training row's CNN features come from a model that never saw its study; model ``full`` is trained on all of
    them, describes the studies without labelled crops (seen by no model) and is the model for the test split
    (``_cnn/full.pt``). ``_cnn/oof.json`` records which model described each study and what each model saw.
Checkpoints
    ``<name>.pt`` and ``<name>.json`` in the format of :mod:`radiospine.checkpoint` (state dict, and a sidecar
    with the architecture, the weights' hash and what the model was trained on). ``features.cnn.checkpoint`` may
    name such a file instead of training.
Determinism
    Seeds are fixed (``features.cnn.seed``; fold k uses seed + k + 1), batches are drawn and augmented by seeded
    generators (numpy for the order, torch for the augmentation), torch runs its deterministic algorithms
    (:func:`radiospine.device.deterministic_torch`), every model trains with one compute thread (the fold models
    train side by side in ``jobs`` processes instead, each from its own seed, so which process trains which model
    does not matter) and inference runs in evaluation mode with one thread per worker, a study at a time: the
    same inputs and seed give bit-identical weights (and ``.pt`` files) and features whatever ``jobs`` or the
    scheduler (``tests/test_reproducibility.py``).
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from radiospine import artifacts, vocab
from radiospine.checkpoint import load_checkpoint, read_checkpoint_meta, save_checkpoint
from radiospine.config import CnnConfig
from radiospine.device import deterministic_torch, resolve_device
from radiospine.errors import DataError
from radiospine.features.base import ExtractionResult
from radiospine.features.columns import cnn_probability_features
from radiospine.hashing import canonical_json, json_hash, sha256_hex, sha256_stream, short_hash
from radiospine.roi.types import RoiCrop
from radiospine.threads import thread_budget

log = logging.getLogger(__name__)

#: The name of the model trained on every labelled study of the training split.
FULL_MODEL = "full"
#: The file recording which model described each study.
OOF_RECORD = "oof.json"
_TRAIN_ROWS = "train_rows.f16"
#: The config key of the CNN's device (named in errors).
DEVICE_KEY = "features.cnn.device"


@dataclass(frozen=True)
class CnnArchitecture:
    """What :class:`SpineCnn` is built from (saved beside every checkpoint)."""

    in_channels: int
    widths: tuple[int, ...]
    embedding_size: int
    input_size: int
    n_conditions: int = len(vocab.BASE_CONDITIONS)
    n_views: int = len(vocab.VIEWS)
    #: The head's classes, lowest first (RSNA: ``vocab.SEVERITIES``; another task: its CNN target's grades); they
    #: name the probability features (:func:`radiospine.features.columns.cnn_probability_features`).
    classes: tuple[str, ...] = vocab.SEVERITIES

    @property
    def n_classes(self) -> int:
        return len(self.classes)

    @classmethod
    def from_config(cls, config: CnnConfig, classes: Sequence[str] = vocab.SEVERITIES) -> CnnArchitecture:
        return cls(in_channels=config.slices, widths=tuple(config.widths), embedding_size=config.embedding_size,
                   input_size=config.input_size, classes=tuple(classes))

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "widths": list(self.widths), "classes": list(self.classes)}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> CnnArchitecture:
        return cls(**{**data, "widths": tuple(data["widths"]), "classes": tuple(data["classes"])})


class SpineCnn(nn.Module):
    """The 2.5D backbone and its head.

    ``forward(x, condition, view)``: ``x`` ``(batch, in_channels, input_size, input_size)`` float32, ``condition``
    ``(batch,)`` int64 base-condition index (:func:`base_condition_index`), ``view`` ``(batch,)`` int64 view index
    (:func:`view_index`) -> ``(batch, n_classes)`` logits of the architecture's ``classes`` (RSNA: the severities in
    ``vocab.SEVERITIES`` order).
    """

    def __init__(self, architecture: CnnArchitecture) -> None:
        super().__init__()
        self.architecture = architecture
        layers: list[nn.Module] = []
        channels = architecture.in_channels
        for width in architecture.widths:
            layers += [nn.Conv2d(channels, width, 3, padding=1, bias=False), nn.BatchNorm2d(width),
                       nn.ReLU(inplace=True), nn.MaxPool2d(2)]
            channels = width
        self.features = nn.Sequential(*layers)
        self.embedding = nn.Linear(channels, architecture.embedding_size)
        self.head = nn.Linear(architecture.embedding_size + architecture.n_conditions + architecture.n_views,
                              architecture.n_classes)

    def forward(self, x: torch.Tensor, condition: torch.Tensor, view: torch.Tensor) -> torch.Tensor:
        hidden = F.relu(self.embedding(self.features(x).mean(dim=(2, 3))))
        return self.head(torch.cat([hidden, F.one_hot(condition, self.architecture.n_conditions).to(x.dtype),
                                    F.one_hot(view, self.architecture.n_views).to(x.dtype)], dim=1))


def crop_inputs(crops: Sequence[RoiCrop], *, input_size: int, slices: int) -> tuple[np.ndarray, list[str | None]]:
    """The network inputs of crops (see the module docstring).

    Returns:
        ``(n_crops, slices, input_size, input_size)`` float32 (zeros for failed crops) and, per crop, ``None``
        or the reason it cannot be described.
    """
    inputs = np.zeros((len(crops), slices, input_size, input_size), dtype=np.float32)
    errors: list[str | None] = []
    half = slices // 2
    for i, crop in enumerate(crops):
        image = crop.image
        centre = image.shape[0] // 2
        stack = image[np.clip(np.arange(centre - half, centre + half + 1), 0, image.shape[0] - 1)].astype(np.float64)
        if not np.isfinite(stack).all():
            errors.append("non-finite pixel values in the crop")
            continue
        spread = stack.std()
        if spread == 0:
            errors.append("constant image (nothing to describe)")
            continue
        standardised = torch.from_numpy(((stack - stack.mean()) / spread).astype(np.float32))
        inputs[i] = F.interpolate(standardised[None], size=(input_size, input_size), mode="bilinear",
                                  antialias=True, align_corners=False)[0].numpy()
        errors.append(None)
    return inputs, errors


def base_condition_index(condition: str) -> int:
    """``"left_subarticular_stenosis"`` -> index of ``"subarticular_stenosis"`` in ``vocab.BASE_CONDITIONS``."""
    return vocab.BASE_CONDITIONS.index(vocab.split_condition(condition).base)


def view_index(view: str) -> int:
    """``"axial_t2"`` -> its index in ``vocab.VIEWS``."""
    return vocab.VIEWS.index(view)


#: Augmentation ranges (see the module docstring).
_CONTRAST = (0.8, 1.25)
_BRIGHTNESS = 0.2
_NOISE = 0.1
_ROTATION_DEGREES = 10.0
_SCALE = (0.9, 1.1)
_SHIFT = 0.06


def augment_batch(x: torch.Tensor, views: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """A randomly augmented copy of a training batch (see the module docstring).

    Args:
        x: ``(batch, slices, size, size)`` float32 standardised crops (on the cpu).
        views: ``(batch,)`` int64 view index of each crop; only axial crops are mirrored.
        generator: the source of every random draw (seeded by the caller).
    """
    n = x.shape[0]

    def uniform(low: float, high: float) -> torch.Tensor:
        return low + (high - low) * torch.rand(n, generator=generator)

    angle = torch.deg2rad(uniform(-_ROTATION_DEGREES, _ROTATION_DEGREES))
    scale = torch.exp(uniform(np.log(_SCALE[0]), np.log(_SCALE[1])))
    mirror = (views == view_index("axial_t2")) & (torch.rand(n, generator=generator) < 0.5)
    sign = 1.0 - 2.0 * mirror.to(x.dtype)
    theta = torch.zeros(n, 2, 3, dtype=x.dtype)
    theta[:, 0, 0] = torch.cos(angle) / scale * sign
    theta[:, 0, 1] = -torch.sin(angle) / scale
    theta[:, 1, 0] = torch.sin(angle) / scale * sign
    theta[:, 1, 1] = torch.cos(angle) / scale
    theta[:, :, 2] = 2 * _SHIFT * (torch.rand(n, 2, generator=generator) - 0.5) * 2
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    moved = F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)
    contrast = torch.exp(uniform(np.log(_CONTRAST[0]), np.log(_CONTRAST[1])))
    brightness = uniform(-_BRIGHTNESS, _BRIGHTNESS)
    noise = uniform(0.0, _NOISE)
    return (moved * contrast[:, None, None, None] + brightness[:, None, None, None]
            + noise[:, None, None, None] * torch.randn(x.shape, generator=generator))


def train_backbone(inputs: Any, labels: np.ndarray, conditions: np.ndarray, views: np.ndarray, config: CnnConfig,
                   *, seed: int, device: torch.device | None = None,
                   class_weights: Sequence[float] = vocab.SEVERITY_WEIGHTS) -> dict[str, torch.Tensor]:
    """Train :class:`SpineCnn` from scratch and return its state dict (on the cpu).

    Args:
        inputs: ``(n, slices, input_size, input_size)`` rows: an array, or anything whose ``[indices]`` (sorted
            int64 indices) returns those rows as float32 (the on-disk row file of :class:`CnnTrainer`).
        labels: ``(n,)`` class index ``0 .. K-1`` of each row (RSNA: severity 0/1/2).
        conditions: ``(n,)`` base-condition index of each row.
        views: ``(n,)`` view index of each row.
        config: ``features.cnn``: architecture, epochs, batch size, learning rate, weight decay, augmentation.
        seed: seeds torch (initial weights, augmentation) and the batch order.
        class_weights: ``(K,)`` the cross-entropy's weight per true class (RSNA: the metric's 1/2/4); K is the
            head's number of classes.
    """
    labels = np.asarray(labels, dtype=np.int64)
    conditions = np.asarray(conditions, dtype=np.int64)
    views = np.asarray(views, dtype=np.int64)
    if not len(labels) == len(conditions) == len(views) or len(labels) < 2:
        raise ValueError(f"need at least 2 labelled rows with one condition and view each, got {len(labels)} "
                         f"labels, {len(conditions)} conditions and {len(views)} views")
    if labels.min() < 0 or labels.max() >= len(class_weights):
        raise ValueError(f"class labels must be 0..{len(class_weights) - 1}, got {sorted(set(labels))}")
    device = device or torch.device("cpu")
    with deterministic_torch(device):
        return _train_backbone(inputs, labels, conditions, views, config, seed=seed, device=device,
                               class_weights=class_weights)


def _train_backbone(inputs: Any, labels: np.ndarray, conditions: np.ndarray, views: np.ndarray, config: CnnConfig,
                    *, seed: int, device: torch.device, class_weights: Sequence[float]) -> dict[str, torch.Tensor]:
    torch.manual_seed(seed)
    order_rng = np.random.default_rng(seed)
    augment_rng = torch.Generator().manual_seed(seed)
    model = SpineCnn(CnnArchitecture.from_config(config, classes=[str(k) for k in range(len(class_weights))])).to(
        device)  # the classes' names do not change the weights
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay)
    class_weights = torch.tensor(class_weights, dtype=torch.float32, device=device)
    model.train()
    for epoch in range(config.epochs):
        order = order_rng.permutation(len(labels))
        total, seen = 0.0, 0
        for start in range(0, len(order), config.batch_size):
            batch = np.sort(order[start:start + config.batch_size])
            if len(batch) < 2:  # batch norm needs two samples
                continue
            x = torch.as_tensor(np.asarray(inputs[batch], dtype=np.float32))
            v = torch.as_tensor(views[batch])
            if config.augment:
                x = augment_batch(x, v, augment_rng)
            y = torch.as_tensor(labels[batch], device=device)
            c = torch.as_tensor(conditions[batch], device=device)
            loss = F.cross_entropy(model(x.to(device), c, v.to(device)), y, weight=class_weights)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total += loss.item() * len(batch)
            seen += len(batch)
        log.info("cnn epoch %d/%d: weighted cross-entropy %.4f", epoch + 1, config.epochs, total / max(seen, 1))
    return {name: tensor.detach().cpu() for name, tensor in model.state_dict().items()}


def predict_inputs(model: SpineCnn, inputs: np.ndarray, conditions: np.ndarray, views: np.ndarray, *,
                   batch_size: int, device: torch.device) -> np.ndarray:
    """``(n, slices, size, size)`` float32 inputs with ``(n,)`` base-condition and view indices -> ``(n, 3)``
    float64 probabilities of the severities (``vocab.SEVERITIES`` order), in batches."""
    model.eval()
    out = np.zeros((len(inputs), model.architecture.n_classes), dtype=np.float64)
    with torch.inference_mode(), deterministic_torch(device):
        for start in range(0, len(inputs), batch_size):
            stop = start + batch_size
            logits = model(torch.as_tensor(inputs[start:stop], device=device),
                           torch.as_tensor(conditions[start:stop], dtype=torch.int64, device=device),
                           torch.as_tensor(views[start:stop], dtype=torch.int64, device=device))
            out[start:stop] = torch.softmax(logits.double(), dim=1).cpu().numpy()
    return out


# --- checkpoints ---------------------------------------------------------------------------------------

#: What to do when a CNN checkpoint is unusable (the end of :func:`radiospine.checkpoint.load_checkpoint`'s errors).
CHECKPOINT_FIX = "train it with `radiospine features --split train` or set features.cnn.checkpoint to an existing file"


# --- the extractor ---------------------------------------------------------------------------------------

class CnnExtractor:
    """Severity probabilities of crops by one or several trained :class:`SpineCnn` models.

    Args:
        architecture: of every model.
        models: model name -> state dict.
        model_for_study: study id -> the model that describes it (the out-of-fold assignment); other studies use
            ``default_model``.
        default_model: a key of ``models``.
        slices, input_size: the input preparation (from the architecture when omitted).
        batch_size: crops per forward pass.
        device: ``"auto"``, ``"cpu"`` or ``"cuda"``.
    """

    name = "cnn"

    def __init__(self, architecture: CnnArchitecture, models: Mapping[str, Mapping[str, torch.Tensor]], *,
                 default_model: str, model_for_study: Mapping[int, str] | None = None, batch_size: int = 64,
                 device: str = "auto") -> None:
        self.architecture = architecture
        self.models = {name: dict(state) for name, state in models.items()}
        self.default_model = default_model
        self.model_for_study = {int(study): name for study, name in (model_for_study or {}).items()}
        self.batch_size = int(batch_size)
        self.device = device
        unknown = {self.default_model, *self.model_for_study.values()} - set(self.models)
        if unknown:
            raise ValueError(f"CnnExtractor: no weights for model(s) {sorted(unknown)}")
        self._modules: dict[str, SpineCnn] = {}

    @classmethod
    def from_checkpoint(cls, path: str | Path, *, batch_size: int = 64, device: str = "auto") -> CnnExtractor:
        state_dict, sidecar = load_checkpoint(path, fix=CHECKPOINT_FIX)
        architecture = CnnArchitecture.from_json(sidecar["architecture"])
        SpineCnn(architecture).load_state_dict(state_dict)  # raises naming the mismatching tensors
        name = Path(path).stem
        return cls(architecture, {name: state_dict}, default_model=name, batch_size=batch_size, device=device)

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_modules"] = {}
        return state

    def feature_names(self) -> list[str]:
        return list(cnn_probability_features(self.architecture.classes))

    def fingerprint(self) -> str:
        settings = canonical_json({"architecture": self.architecture.to_json(), "default": self.default_model,
                                   "assignment": sorted(self.model_for_study.items())})
        weights = [chunk for name in sorted(self.models) for key in sorted(self.models[name])
                   for chunk in (f"{name}/{key}", self.models[name][key].cpu().numpy().tobytes())]
        return short_hash(settings, *weights)

    def model_name(self, study_id: int) -> str:
        """The model that describes ``study_id``."""
        return self.model_for_study.get(int(study_id), self.default_model)

    def module(self, name: str) -> SpineCnn:
        """The ready (evaluation-mode, on the device) network ``name``."""
        if name not in self._modules:
            model = SpineCnn(self.architecture)
            model.load_state_dict(self.models[name])
            self._modules[name] = model.to(resolve_device(self.device, DEVICE_KEY)).eval()
        return self._modules[name]

    def extract(self, crops: Sequence[RoiCrop]) -> list[ExtractionResult]:
        inputs, errors = crop_inputs(crops, input_size=self.architecture.input_size,
                                     slices=self.architecture.in_channels)
        names = self.feature_names()
        conditions = np.array([base_condition_index(crop.roi.condition) for crop in crops], dtype=np.int64)
        views = np.array([view_index(crop.roi.view) for crop in crops], dtype=np.int64)
        by_model: dict[str, list[int]] = {}
        for i, crop in enumerate(crops):
            if errors[i] is None:
                by_model.setdefault(self.model_name(crop.roi.study_id), []).append(i)
        probabilities = np.zeros((len(crops), len(names)))
        for model_name, rows in by_model.items():
            probabilities[rows] = predict_inputs(self.module(model_name), inputs[rows], conditions[rows],
                                                 views[rows], batch_size=self.batch_size,
                                                 device=resolve_device(self.device, DEVICE_KEY))
        results = []
        for i in range(len(crops)):
            if errors[i] is None and not np.isfinite(probabilities[i]).all():
                errors[i] = f"non-finite probabilities from model {self.model_name(crops[i].roi.study_id)}"
            results.append(ExtractionResult.failure(errors[i]) if errors[i] is not None
                           else ExtractionResult.success(dict(zip(names, probabilities[i].tolist()))))
        return results


# --- out-of-fold training on the split being described --------------------------------------------------------

class CnnTrainer:
    """The CNN as a :class:`~radiospine.features.base.TrainableExtractor`: fitted out-of-fold on this split.

    Args:
        config: ``features.cnn``.
        labels: ``(study_id, condition, level)`` -> class index for the graded keys (others absent): the RSNA
            severity 0/1/2, or another task's grade (:func:`radiospine.features.stage.training_labels`).
        classes: the K classes, lowest first (RSNA: ``vocab.SEVERITIES``); they name the features.
        class_weights: the training loss's weight per class (K of them; RSNA: the metric's 1/2/4).
    """

    name = "cnn"

    def __init__(self, config: CnnConfig, labels: Mapping[tuple[int, str, str], int],
                 classes: Sequence[str] = vocab.SEVERITIES,
                 class_weights: Sequence[float] = vocab.SEVERITY_WEIGHTS) -> None:
        if len(classes) != len(class_weights):
            raise ValueError(f"one class weight per class: {len(classes)} classes, {len(class_weights)} weights")
        self.config = config
        self.labels = {(int(s), str(c), str(lv)): int(v) for (s, c, lv), v in labels.items()}
        self.classes = tuple(str(c) for c in classes)
        self.class_weights = tuple(float(w) for w in class_weights)

    def feature_names(self) -> list[str]:
        return list(cnn_probability_features(self.classes))

    def fingerprint(self) -> str:
        extra = {} if (self.classes, self.class_weights) == (vocab.SEVERITIES, vocab.SEVERITY_WEIGHTS) else {
            "classes": list(self.classes), "class_weights": list(self.class_weights)}
        return json_hash({"config": self.config.model_dump(mode="json"),
                          "labels": sorted([*key, value] for key, value in self.labels.items()), **extra})

    def prepare(self, crops: Sequence[RoiCrop]) -> dict[str, np.ndarray]:
        """The describable crops' inputs (float16), keys and views; crops that cannot be described are left out."""
        inputs, errors = crop_inputs(crops, input_size=self.config.input_size, slices=self.config.slices)
        keep = [i for i, error in enumerate(errors) if error is None]
        return {
            "inputs": inputs[keep].astype(np.float16),
            "study_id": np.array([crops[i].roi.study_id for i in keep], dtype=np.int64),
            "condition": np.array([crops[i].roi.condition for i in keep], dtype=str),
            "level": np.array([crops[i].roi.level for i in keep], dtype=str),
            "view": np.array([crops[i].roi.view for i in keep], dtype=str),
        }

    def fit(self, workdir: Path, study_ids: Sequence[int], *, threads: int, progress: bool) -> CnnExtractor:
        """Train the fold models and the full model (reusing complete checkpoints in ``workdir``); see the module
        docstring. Returns the extractor that describes each study with its out-of-fold model.

        The models are independent: on the cpu they train in ``threads`` worker processes of one thread each
        (so the weights do not depend on ``threads``); on a GPU one after the other in this process.
        """
        from joblib import Parallel, delayed
        from joblib.externals.loky import get_reusable_executor
        from sklearn.model_selection import KFold

        config = self.config
        workdir = Path(workdir)
        device = resolve_device(config.device, DEVICE_KEY)
        architecture = CnnArchitecture.from_config(config, classes=self.classes)
        rows = self._write_training_rows(workdir, sorted(int(s) for s in study_ids))
        labelled_studies = np.unique(rows["study_id"])
        if len(labelled_studies) < config.folds:
            raise DataError(f"the CNN needs labelled crops from at least features.cnn.folds={config.folds} "
                            f"studies for out-of-fold features, found {len(labelled_studies)}; lower "
                            f"features.cnn.folds or name a checkpoint in features.cnn.checkpoint")
        fold_of_study: dict[int, int] = {}
        plan: list[tuple[str, np.ndarray, int]] = []
        for fold, (train_idx, held_idx) in enumerate(
                KFold(n_splits=config.folds, shuffle=True, random_state=config.seed).split(labelled_studies)):
            fold_of_study.update({int(s): fold for s in labelled_studies[held_idx]})
            plan.append((f"fold_{fold}", labelled_studies[train_idx], config.seed + fold + 1))
        plan.append((FULL_MODEL, labelled_studies, config.seed))

        train_hash = sha256_hex(canonical_json(config.model_dump(mode="json")))
        models: dict[str, dict[str, torch.Tensor]] = {}
        to_train = []
        for name, train_studies, seed in plan:
            path = workdir / f"{name}.pt"
            meta = {"train_config_sha256": train_hash, "rows_sha256": rows["sha256"], "seed": seed,
                    "training_studies": [int(s) for s in train_studies]}
            saved = read_checkpoint_meta(path)
            if saved is not None and saved.get("architecture") == architecture.to_json() \
                    and all(saved.get(key) == value for key, value in meta.items()):
                log.info("cnn model %s: reusing %s", name, path)
                models[name], _ = load_checkpoint(path, fix=CHECKPOINT_FIX)
                continue
            selected = np.flatnonzero(np.isin(rows["study_id"], train_studies))
            to_train.append(delayed(_train_and_save)(
                path, workdir / _TRAIN_ROWS, selected, rows["label"][selected], rows["condition"][selected],
                rows["view"][selected], config, seed, str(device), meta, self.classes, self.class_weights))
        bar = tqdm(total=len(plan), initial=len(models), desc="cnn models", unit="model", disable=not progress)
        workers = 1 if device.type == "cuda" else max(1, min(threads, len(to_train)))
        try:
            with Parallel(n_jobs=workers, return_as="generator_unordered") as parallel:
                for path, state in parallel(to_train):
                    models[path.stem] = state
                    bar.update(1)
        finally:
            bar.close()
            if workers > 1:
                # The training workers keep what training allocated; reused for describing studies, loky would
                # restart them one by one ("a worker stopped ... memory leak" warnings) and they would hold that
                # memory meanwhile. Fresh workers start from a small footprint.
                get_reusable_executor().shutdown(wait=True)
        record = {
            "model_for_study": {str(s): f"fold_{k}" for s, k in sorted(fold_of_study.items())},
            "default_model": FULL_MODEL,
            "training_studies": {name: [int(s) for s in studies] for name, studies, _ in plan},
        }
        artifacts.atomic_write_text(workdir / OOF_RECORD, json.dumps(record, indent=2))
        return CnnExtractor(architecture, models, default_model=FULL_MODEL,
                            model_for_study={s: f"fold_{k}" for s, k in fold_of_study.items()},
                            batch_size=config.batch_size, device=config.device)

    def _write_training_rows(self, workdir: Path, study_ids: list[int]) -> dict[str, Any]:
        """Gather the labelled prepared rows of all studies into one float16 file (read back by rows).

        Returns ``(n_rows,)`` arrays ``study_id``, ``label``, ``condition`` (base-condition index) and ``view``
        (view index), and
        ``sha256``: a hash of the rows and their labels (a saved model is reused only if it matches).
        """
        study_of_row, labels, conditions, views = [], [], [], []
        digest = sha256_stream()
        with artifacts.atomic_path(workdir / _TRAIN_ROWS) as tmp, open(tmp, "wb") as out:
            for study_id in study_ids:
                path = workdir / "inputs" / f"study_{study_id}.npz"
                with np.load(path) as prepared:
                    if "view" not in prepared.files:
                        raise DataError(f"{path} was prepared by an older radiospine (no crop views); delete "
                                        f"{workdir / 'inputs'} and run the feature stage again")
                    keys = zip(prepared["study_id"].tolist(), prepared["condition"].tolist(),
                               prepared["level"].tolist())
                    found = [(i, self.labels.get((int(s), c, lv))) for i, (s, c, lv) in enumerate(keys)]
                    found = [(i, label) for i, label in found if label is not None]
                    if not found:
                        continue
                    index = [i for i, _ in found]
                    block = np.ascontiguousarray(prepared["inputs"][index], dtype=np.float16).tobytes()
                    out.write(block)
                    digest.update(block)
                    study_of_row += [study_id] * len(index)
                    labels += [label for _, label in found]
                    conditions += [base_condition_index(str(c)) for c in prepared["condition"][index]]
                    views += [view_index(str(v)) for v in prepared["view"][index]]
        if not labels:
            raise DataError("no crop of this split has a label: the CNN cannot be trained; check the labels "
                            "file or name a checkpoint in features.cnn.checkpoint")
        rows = {"study_id": np.asarray(study_of_row, dtype=np.int64), "label": np.asarray(labels, dtype=np.int64),
                "condition": np.asarray(conditions, dtype=np.int64), "view": np.asarray(views, dtype=np.int64)}
        for name in ("study_id", "label", "condition", "view"):
            digest.update(rows[name].tobytes())
        rows["sha256"] = digest.hexdigest()
        return rows


def _train_and_save(path: Path, rows_path: Path, selected: np.ndarray, labels: np.ndarray, conditions: np.ndarray,
                    views: np.ndarray, config: CnnConfig, seed: int, device: str, meta: Mapping[str, Any],
                    classes: Sequence[str], class_weights: Sequence[float]) -> tuple[Path, dict[str, torch.Tensor]]:
    """Train one model on rows ``selected`` of the row file (one compute thread) and save its checkpoint."""
    rows = _RowFile(rows_path, (config.slices, config.input_size, config.input_size))
    try:
        with thread_budget(1):
            state = train_backbone(_Subset(rows, selected), labels, conditions, views, config, seed=seed,
                                   device=torch.device(device), class_weights=class_weights)
    finally:
        rows.close()
    save_checkpoint(path, state, CnnArchitecture.from_config(config, classes=classes).to_json(), meta)
    return path, state


class _RowFile:
    """Rows ``(slices, size, size)`` float16 stored back to back in a file; ``rows[indices]`` reads only those.

    Keeps training memory bounded by the batch, whatever the number of crops.
    """

    def __init__(self, path: Path, row_shape: tuple[int, ...]) -> None:
        self.row_shape = row_shape
        self.row_bytes = int(np.prod(row_shape)) * 2
        self.fd = os.open(path, os.O_RDONLY)

    def __getitem__(self, indices: np.ndarray) -> np.ndarray:
        data = b"".join(os.pread(self.fd, self.row_bytes, int(i) * self.row_bytes) for i in indices)
        return np.frombuffer(data, dtype=np.float16).reshape(len(indices), *self.row_shape).astype(np.float32)

    def close(self) -> None:
        os.close(self.fd)


class _Subset:
    """``rows[indices]`` of a subset of another row source (``indices`` index the subset)."""

    def __init__(self, source: _RowFile, selected: np.ndarray) -> None:
        self.source = source
        self.selected = selected

    def __getitem__(self, indices: np.ndarray) -> np.ndarray:
        return self.source[self.selected[indices]]
