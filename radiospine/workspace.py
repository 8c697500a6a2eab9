"""The work folder's layout: every artifact path a stage writes or reads, derived from the folder's root.

Every stage reads the previous stage's artifact from the work folder (``--work WORK``) and writes its own
there; :class:`Workspace` is the one place that knows where each lives::

    WORK/localizer/                 the localiser: weights, localizer.json, _manifest.json
    WORK/localizer/{split}_coordinates.csv      the localiser's points of a split (+ .provenance.csv, ...)
    WORK/localizer/oof_coordinates.csv          its out-of-fold points on the training split
    WORK/cache/localizer_slices/    the localiser's decoded, resampled training slices (a cache: safe to delete)
    WORK/features/<split>/          the feature table of a split (shards, _manifest.json, _<extractor>/)
    WORK/models/                    the trained models (model card, boosters, out-of-fold predictions)
    WORK/models/prior.csv           the training prior that fills rows the models cannot predict

What is inside the localiser's, the feature store's and the models' folders is the business of the code that
saves them (:mod:`radiospine.roi.localizer`, :mod:`radiospine.features.store`,
:mod:`radiospine.models.condition_models`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Workspace:
    """A work folder: ``Workspace("demo/work").models_dir == Path("demo/work/models")``. Nothing is created."""

    root: Path

    def __post_init__(self) -> None:
        object.__setattr__(self, "root", Path(self.root))

    @property
    def localizer_dir(self) -> Path:
        """``WORK/localizer``: the localiser's weights and description, its coordinates files."""
        return self.root / "localizer"

    def coordinates(self, split: str) -> Path:
        """``WORK/localizer/{split}_coordinates.csv``: the localiser's points of a split (``radiospine localize``)."""
        return self.localizer_dir / f"{split}_coordinates.csv"

    @property
    def oof_coordinates(self) -> Path:
        """``WORK/localizer/oof_coordinates.csv``: out-of-fold points on the training split
        (``radiospine train-localizer --oof``)."""
        return self.localizer_dir / "oof_coordinates.csv"

    @property
    def localizer_slice_cache(self) -> Path:
        """``WORK/cache/localizer_slices``: the localiser's training slices, decoded and resampled once
        (:class:`radiospine.roi.localizer.data.SliceCache`); deleting it only costs the time to make it again."""
        return self.root / "cache" / "localizer_slices"

    def features_dir(self, split: str) -> Path:
        """``WORK/features/<split>``: the split's feature table (:class:`radiospine.features.store.FeatureStore`)."""
        return self.root / "features" / split

    @property
    def models_dir(self) -> Path:
        """``WORK/models``: the trained models (``radiospine train-gbm``)."""
        return self.root / "models"

    @property
    def prior(self) -> Path:
        """``WORK/models/prior.csv``: the training prior per condition and level (the weighted prior)."""
        return self.models_dir / "prior.csv"


def provenance_path(coordinates_path: str | Path) -> Path:
    """``coords.csv`` -> ``coords.provenance.csv``: where each point of a coordinates file came from (predicted,
    fallback or missing, and how); written beside every coordinates file the localiser writes."""
    path = Path(coordinates_path)
    return path.with_name(f"{path.stem}.provenance.csv")
