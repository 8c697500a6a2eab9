"""Typed, validated configuration: pydantic models, YAML loading and ``key.path=value`` overrides.

Unknown keys are errors (``extra="forbid"``), so a typo in a YAML file fails loudly with the key's path.
The resolved config of a run is written beside its artifacts together with :func:`config_hash`, so a stage
knows when its inputs changed.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    NonNegativeFloat,
    NonNegativeInt,
    PositiveFloat,
    PositiveInt,
    ValidationError,
    field_validator,
    model_validator,
)

from radiospine.errors import ConfigError
from radiospine.hashing import json_hash
from radiospine.task import DEFAULT_TASK, TASKS
from radiospine.threads import ResourceBudget, resource_budget
from radiospine.vocab import VIEWS, View

logger = logging.getLogger(__name__)

#: The folder of the shipped YAML configs (``configs/`` at the top of the repository).
CONFIG_DIR = Path(__file__).resolve().parent / "configs"
DEFAULT_CONFIG = CONFIG_DIR / "default.yaml"


#: Marks a config key added after artifacts were first written (``Field(..., json_schema_extra=ADDED_KEY)``) whose
#: default leaves every result as it was before the key existed: at its default it is left out of
#: :func:`config_hash`, so work folders, localisers and bundles written before it stay up to date.
ADDED_KEY: dict[str, Any] = {"hash_omitted_at_default": True}


class Section(BaseModel):
    """Base of every config section: frozen, unknown keys rejected."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class SynthQuirks(Section):
    """Quirks of real data in synthetic studies: the share of series (or studies) showing each; 0 turns it off."""

    instance_offset_rate: float = Field(default=0.002, ge=0.0, le=1.0)
    reversed_order_rate: float = Field(default=0.03, ge=0.0, le=1.0)
    two_stacks_rate: float = Field(default=0.05, ge=0.0, le=1.0)
    missing_series_rate: float = Field(default=0.002, ge=0.0, le=1.0)


class SynthConfig(Section):
    """Defaults of the synthetic study generator (``radiospine synth``); CLI flags override them."""

    train_studies: NonNegativeInt = 60
    test_studies: NonNegativeInt = 20
    seed: NonNegativeInt = 0
    small: bool = True
    reader_noise_sd: PositiveFloat = 0.45
    annotation_jitter_mm: NonNegativeFloat = 0.8
    extra_point_rate: float = Field(default=0.01, ge=0.0, le=1.0)
    stir_fraction: float = Field(default=0.2, ge=0.0, le=1.0)
    shared_sagittal_slab_rate: float = Field(default=0.7, ge=0.0, le=1.0)
    per_disc_axial_rate: float = Field(default=0.45, ge=0.0, le=1.0)
    partial_volume_samples: PositiveInt = 3
    render_spacing_mm: PositiveFloat = 0.5
    noise_sd: NonNegativeFloat = 0.02
    quirks: SynthQuirks = SynthQuirks()


class RoiShape(Section):
    """Crop and mask of one base condition's ROI."""

    crop_mm: tuple[PositiveFloat, PositiveFloat]
    mask_size_mm: PositiveFloat


class RoiConfig(Section):
    """Where and how ROI crops are cut (:mod:`radiospine.roi.cut`); sizes are in mm, not pixels."""

    pixel_mm: PositiveFloat = 0.5
    neighbour_slices: NonNegativeInt = 1
    normalise_percentiles: tuple[float, float] = (1.0, 99.5)
    mask_shape: Literal["disc", "square"] = "disc"
    spinal_canal_stenosis: RoiShape = RoiShape(crop_mm=(48.0, 48.0), mask_size_mm=16.0)
    neural_foraminal_narrowing: RoiShape = RoiShape(crop_mm=(40.0, 40.0), mask_size_mm=12.0)
    subarticular_stenosis: RoiShape = RoiShape(crop_mm=(40.0, 40.0), mask_size_mm=10.0)
    canal_on_axial: bool = True
    axial_max_distance_mm: PositiveFloat = 6.0
    train_centres: Literal["label", "oof"] = "label"

    @field_validator("normalise_percentiles")
    @classmethod
    def _percentiles_in_order(cls, value: tuple[float, float]) -> tuple[float, float]:
        if not 0.0 <= value[0] < value[1] <= 100.0:
            raise ValueError(f"need 0 <= low < high <= 100, got {list(value)}")
        return value


class LocalizerAugment(Section):
    """The localiser's training augmentation (:func:`radiospine.roi.localizer.training.augment`), per sample.

    The geometric draws move the image and its targets alike; the intensity draws act on the image only. The
    defaults are the augmentation the RSNA figures were measured with; ``bias_field``, ``intensity_curve`` and
    ``blur_mm`` (0: off) bring training closer to real scanners (configs/bench_real.yaml).
    """

    rotation_deg: NonNegativeFloat = 15.0
    scale: float = Field(default=0.12, ge=0.0, lt=1.0)
    shift: float = Field(default=0.1, ge=0.0, le=1.0)
    gamma: NonNegativeFloat = 0.35
    contrast: float = Field(default=0.15, ge=0.0, lt=1.0)
    noise_sd: NonNegativeFloat = 0.02
    bias_field: NonNegativeFloat = 0.0
    intensity_curve: float = Field(default=0.0, ge=0.0, le=1.0)
    blur_mm: NonNegativeFloat = 0.0


class LocalizerConfig(Section):
    """The level localiser (:mod:`radiospine.roi.localizer`): input grids, model size, training."""

    sagittal_grid_mm: PositiveFloat = 2.5
    sagittal_grid_px: PositiveInt = 128
    axial_grid_mm: PositiveFloat = 1.25
    axial_grid_px: PositiveInt = 96
    neighbour_slices: NonNegativeInt = 1
    base_channels: PositiveInt = 8
    depth: PositiveInt = 4
    sigma_mm: PositiveFloat = 5.0
    sigma_normal_mm: PositiveFloat = 3.0
    epochs: PositiveInt = 8
    batch_size: PositiveInt = 16
    sagittal_samples_per_epoch: PositiveInt = 1536
    axial_samples_per_epoch: PositiveInt = 1280
    validation_fraction: float = Field(default=0.15, ge=0.0, lt=1.0)
    validation_samples: PositiveInt = 256
    patience: PositiveInt = 3
    learning_rate: PositiveFloat = 2e-3
    weight_decay: NonNegativeFloat = 1e-4
    folds: int = Field(default=5, ge=2)
    min_peak: float = Field(default=0.1, gt=0.0, lt=1.0)
    foramen_min_offset_mm: NonNegativeFloat = 6.0
    augment: LocalizerAugment = LocalizerAugment()
    device: Literal["auto", "cpu", "cuda"] = "auto"
    seed: int = 0

    @model_validator(mode="after")
    def _grids_fit_the_depth(self) -> LocalizerConfig:
        for name in ("sagittal_grid_px", "axial_grid_px"):
            if getattr(self, name) % (2 ** self.depth):
                raise ValueError(f"{name}={getattr(self, name)} must be a multiple of 2**depth = {2 ** self.depth}")
        return self


class GbmParams(Section):
    """Booster parameters of every model member (:class:`radiospine.models.ordinal.OrdinalGBMClassifier`)."""

    n_estimators: PositiveInt = 600
    learning_rate: PositiveFloat = 0.03
    num_leaves: int = Field(default=15, ge=2)
    max_depth: int = -1
    min_child_samples: PositiveInt = 160
    min_child_weight: NonNegativeFloat = 5.0
    subsample: float = Field(default=0.8, gt=0.0, le=1.0)
    colsample: float = Field(default=0.2, gt=0.0, le=1.0)
    reg_lambda: NonNegativeFloat = 1.0
    early_stopping_rounds: PositiveInt | None = 50
    validation_fraction: float = Field(default=0.15, gt=0.0, lt=1.0)


class ModelMember(Section):
    """One member of the blend: a boosting library and a formulation of the three-class problem."""

    backend: Literal["lightgbm", "xgboost"]
    formulation: Literal["ordinal", "multiclass"]

    @property
    def name(self) -> str:
        return f"{self.backend}_{self.formulation}"


class ModelsConfig(Section):
    """Per-condition GBM training (:mod:`radiospine.models.condition_models`)."""

    members: tuple[ModelMember, ...] = (
        ModelMember(backend="lightgbm", formulation="ordinal"),
        ModelMember(backend="xgboost", formulation="ordinal"),
    )
    share_sides: bool = True
    share_levels: bool = True
    extractors: tuple[str, ...] | None = None
    extractor_ablation: bool = True
    cnn_head_blend: bool = True
    sample_weighting: Literal["metric", "none"] = "metric"
    calibration: Literal["none", "temperature", "vector", "isotonic"] = "temperature"
    any_severe_adjustment: bool = True
    blend_step: float = Field(default=0.05, gt=0.0, le=1.0)
    n_folds: int = Field(default=5, ge=2)
    seed: int = 0
    gbm: GbmParams = GbmParams()

    @model_validator(mode="before")
    @classmethod
    def _threads_moved(cls, data: Any) -> Any:
        """``models.n_jobs`` (the boosters' threads) was a models setting until the resource budget took it
        (``resources.threads``): model cards and bundles written before still hold it. It never changed a model,
        so it is dropped, with a warning."""
        if isinstance(data, dict) and "n_jobs" in data:
            logger.warning("models.n_jobs is no longer read (an old config, model card or bundle): the boosters' "
                           "threads are resources.threads or train-gbm --threads")
            data = {key: value for key, value in data.items() if key != "n_jobs"}
        return data

    @model_validator(mode="after")
    def _members_distinct(self) -> ModelsConfig:
        names = [member.name for member in self.members]
        if not names or len(set(names)) != len(names):
            raise ValueError(f"members must be one or more distinct backend/formulation pairs, got {names}")
        if abs(round(1.0 / self.blend_step) * self.blend_step - 1.0) > 1e-9:
            raise ValueError(f"blend_step={self.blend_step} must divide 1 into whole parts (e.g. 0.05, 0.1)")
        return self


class RadiomicsConfig(Section):
    """pyradiomics features of the ROI crops (:mod:`radiospine.features.radiomics`)."""

    enabled: bool = True
    params: str = "radiomics/default.yaml"
    slice_mean: bool = True

    def params_path(self) -> Path:
        """The parameter file: absolute, or relative to the shipped ``configs/`` folder."""
        path = Path(self.params).expanduser()
        return path if path.is_absolute() else CONFIG_DIR / path


class CnnConfig(Section):
    """The 2.5D CNN and its severity probabilities (:mod:`radiospine.features.cnn`)."""

    enabled: bool = True
    checkpoint: str | None = None
    embedding_size: PositiveInt = 32
    input_size: PositiveInt = 64
    slices: PositiveInt = 3
    widths: tuple[PositiveInt, ...] = (16, 32, 64, 128)
    epochs: PositiveInt = 6
    folds: int = Field(default=5, ge=2)
    batch_size: PositiveInt = 64
    learning_rate: PositiveFloat = 2e-3
    weight_decay: NonNegativeFloat = 1e-4
    augment: bool = True
    device: Literal["auto", "cpu", "cuda"] = "auto"
    seed: int = 0

    @model_validator(mode="after")
    def _shapes_fit(self) -> CnnConfig:
        if self.slices % 2 == 0:
            raise ValueError(f"slices={self.slices} must be odd (the centre slice and as many on each side)")
        if not self.widths:
            raise ValueError("widths must list at least one block")
        if self.input_size % (2 ** len(self.widths)):
            raise ValueError(f"input_size={self.input_size} must be a multiple of 2**len(widths) = "
                             f"{2 ** len(self.widths)}")
        return self


class DiscConfig(Section):
    """The disc's signal against the marrow beside it and its height (:mod:`radiospine.features.disc_signal`):
    for crops centred on discs (the spider task), off by default."""

    enabled: bool = False


class FeaturesConfig(Section):
    """Feature extraction (``radiospine features``): which views and extractors (:mod:`radiospine.features`)."""

    views: tuple[View, ...] = VIEWS
    radiomics: RadiomicsConfig = RadiomicsConfig()
    cnn: CnnConfig = CnnConfig()
    disc: DiscConfig = Field(default=DiscConfig(), json_schema_extra=ADDED_KEY)

    @model_validator(mode="after")
    def _something_to_do(self) -> FeaturesConfig:
        if not self.views or len(set(self.views)) != len(self.views):
            raise ValueError(f"views must list distinct views, got {list(self.views)}")
        if not (self.radiomics.enabled or self.cnn.enabled or self.disc.enabled):
            raise ValueError("enable at least one extractor (radiomics.enabled, cnn.enabled or disc.enabled)")
        return self


class ResourcesConfig(Section):
    """The resource budget (:func:`radiospine.threads.resource_budget`): worker processes and compute threads per
    process; None sizes them from the free cores. ``--jobs`` and ``--threads`` override them; results do not
    depend on them."""

    jobs: PositiveInt | None = None
    threads: PositiveInt | None = None


class RadiospineConfig(Section):
    """The root of ``configs/default.yaml``."""

    task: str = DEFAULT_TASK
    resources: ResourcesConfig = ResourcesConfig()
    synth: SynthConfig = SynthConfig()
    roi: RoiConfig = RoiConfig()
    localizer: LocalizerConfig = LocalizerConfig()
    models: ModelsConfig = ModelsConfig()
    features: FeaturesConfig = FeaturesConfig()

    @field_validator("task")
    @classmethod
    def _known_task(cls, value: str) -> str:
        if value not in TASKS:
            raise ValueError(f"unknown task {value!r}; expected one of {', '.join(TASKS)} (radiospine/task.py)")
        return value


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


def _hashed_dump(model: BaseModel) -> dict[str, Any]:
    """``model.model_dump(mode="json")`` without the :data:`ADDED_KEY` keys that hold their defaults, at any depth."""
    dumped = model.model_dump(mode="json")
    for name, field in type(model).model_fields.items():
        value = getattr(model, name)
        extra = field.json_schema_extra if isinstance(field.json_schema_extra, dict) else {}
        if extra.get("hash_omitted_at_default") and value == field.get_default(call_default_factory=True):
            del dumped[name]
        elif isinstance(value, BaseModel):
            dumped[name] = _hashed_dump(value)
    return dumped


def config_hash(config: BaseModel) -> str:
    """A short, stable content hash of a config (or one section of it); keys marked :data:`ADDED_KEY` count only
    when they differ from their defaults."""
    return json_hash(_hashed_dump(config))


def add_config_arguments(parser: Any) -> None:
    """``--config FILE`` and repeatable ``--set key.path=value`` on a runner's ``argparse`` parser."""
    parser.add_argument("--config", default=None, help=f"YAML config (default: {DEFAULT_CONFIG.name})")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config key, e.g. --set roi.pixel_mm=0.4 (repeatable)")


def config_from_arguments(args: Any) -> RadiospineConfig:
    """The config named by :func:`add_config_arguments`' options."""
    return load_config(args.config, args.overrides)


def budget_from_arguments(args: Any, config: RadiospineConfig, *, threads: bool = False) -> ResourceBudget:
    """The run's processes x threads: ``--jobs`` (and, with ``threads``, ``--threads``) when given, else
    ``resources.jobs`` / ``resources.threads``, else sized from the machine's free cores
    (:func:`radiospine.threads.resource_budget`)."""
    jobs = args.jobs if getattr(args, "jobs", None) is not None else config.resources.jobs
    given_threads = getattr(args, "threads", None) if threads else None
    return resource_budget(jobs, given_threads if given_threads is not None else config.resources.threads)
