"""The features stage of a split: catalog + ROI centres + ROI cutter + extractors -> ``WORK/features/<split>/``.

What goes in (and is hashed into the manifest, so that a change re-computes the table):

* the studies of the split's catalog (:func:`radiospine.catalog.scan`) and its content hash;
* the ROI centres (:func:`radiospine.roi.centres.roi_centres`: label coordinates or the localiser's points) and
  the ``roi`` config, which decide the crops;
* the ``features`` config: the pyradiomics parameter file's content, and for the CNN either the labels of the
  training split (:func:`training_labels`: the config's task's; the CNN is then trained out-of-fold on this
  split's crops, see
  :mod:`radiospine.features.cnn`) or the weights of a checkpoint: ``features.cnn.checkpoint`` when set, else,
  for the test split, the full model the training split's run saved (``WORK/features/train/_cnn/full.pt``).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from radiospine import vocab
from radiospine.config import RadiospineConfig, RoiConfig, config_hash
from radiospine.errors import MissingInputError
from radiospine.features.base import Extractor, TrainableExtractor
from radiospine.features.driver import RunSummary, StudyCrops, compute_features
from radiospine.features.store import FeatureStore
from radiospine.hashing import short_hash
from radiospine.task import RSNA2024, Task, get_task
from radiospine.workspace import Workspace

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RoiCutter:
    """study id -> :class:`StudyCrops` cut by :func:`radiospine.roi.cut.crops_for_study` (picklable).

    Attributes:
        data_dir, split: the data folder and split.
        coords: the split's ROI centres (a coordinates frame with a ``source`` column), one frame for all studies:
            it is pickled with every task sent to a worker, and one frame pickles far smaller than many.
        roi: the ``roi`` config.
    """

    data_dir: Path
    split: str
    coords: pd.DataFrame = field(repr=False)
    roi: RoiConfig

    def __call__(self, study_id: int) -> StudyCrops:
        from radiospine.roi.cut import RoiFailure, crops_for_study

        if not (self.coords["study_id"] == int(study_id)).any():
            raise ValueError(f"study {study_id} has no ROI centres (no coordinates at all)")
        failures: list[RoiFailure] = []
        crops = crops_for_study(self.data_dir, self.split, int(study_id), self.coords, self.roi, failures=failures)
        return StudyCrops(crops, failures)


def frame_hash(frame: pd.DataFrame) -> str:
    """A content hash of a frame's values and column names."""
    return short_hash(",".join(map(str, frame.columns)),
                      pd.util.hash_pandas_object(frame, index=False).to_numpy().tobytes())


def build_extractors(config: RadiospineConfig, split: str, data_dir: str | Path, work_dir: str | Path
                     ) -> list[Extractor | TrainableExtractor]:
    """The extractors the ``features`` config enables, for ``split`` (see the module docstring)."""
    from radiospine.features.radiomics import RadiomicsExtractor

    features = config.features
    extractors: list[Extractor | TrainableExtractor] = []
    if features.radiomics.enabled:
        extractors.append(RadiomicsExtractor(features.radiomics.params_path(),
                                             slice_mean=features.radiomics.slice_mean))
    if features.cnn.enabled:
        from radiospine.features.cnn import FULL_MODEL, CnnExtractor, CnnTrainer

        cnn = features.cnn
        if cnn.checkpoint is not None or split != "train":
            checkpoint = Path(cnn.checkpoint).expanduser() if cnn.checkpoint is not None else (
                Workspace(work_dir).features_dir("train") / "_cnn" / f"{FULL_MODEL}.pt")
            if not checkpoint.is_file():
                raise MissingInputError(
                    f"CNN checkpoint {checkpoint} does not exist: run `radiospine features --split train` first "
                    f"(it trains the CNN), set features.cnn.checkpoint, or disable it with features.cnn.enabled=false")
            extractors.append(CnnExtractor.from_checkpoint(checkpoint, batch_size=cnn.batch_size, device=cnn.device))
        else:
            labels, classes, class_weights = training_labels(data_dir, get_task(config.task))
            extractors.append(CnnTrainer(cnn, labels, classes, class_weights))
    if features.disc.enabled:
        from radiospine.features.disc_signal import DiscSignalExtractor

        extractors.append(DiscSignalExtractor())
    return extractors


def training_labels(data_dir: str | Path, task: Task = RSNA2024
                    ) -> tuple[dict[tuple[int, str, str], int], tuple[str, ...], tuple[float, ...]]:
    """The CNN's training labels, classes and class weights for ``task``.

    RSNA 2024: ``(study_id, condition, level)`` -> severity index of every graded key of ``DATA/train.csv``,
    classes ``vocab.SEVERITIES`` weighted 1/2/4. Another task: its first target's grades (``spider``: the
    Pfirrmann grade) keyed by the target's ``roi_condition`` (the crop it is read from) and level, classes the
    target's grades weighted by the target's weights; the CNN's probabilities of them serve every target.
    """
    from radiospine.labels import labels_to_long, load_task_labels, load_train_labels

    if task.metric == "rsna2024":
        long = labels_to_long(load_train_labels(Path(data_dir) / task.labels_file)).dropna(subset=["severity"])
        return ({(int(r.study_id), str(r.condition), str(r.level)): int(r.severity) for r in long.itertuples()},
                vocab.SEVERITIES, vocab.SEVERITY_WEIGHTS)
    target = task.targets[0]
    long = load_task_labels(Path(data_dir) / task.labels_file, task)
    long = long[(long["target"] == target.name) & long["grade"].notna()]
    return ({(int(r.study_id), target.roi_condition, str(r.level)): int(r.grade) for r in long.itertuples()},
            target.grades, target.weights)


def run_features_stage(data_dir: str | Path, split: str, work_dir: str | Path, config: RadiospineConfig, *,
                       jobs: int = 1, scheduler: str | None = None, progress: bool = True) -> dict[str, Any]:
    """Compute (or complete) ``WORK/features/<split>`` and return a summary for the user."""
    from radiospine.catalog import scan
    from radiospine.roi.centres import roi_centres

    data_dir, work_dir = Path(data_dir), Path(work_dir)
    extractors = build_extractors(config, split, data_dir, work_dir)
    catalog = scan(data_dir, split)
    study_ids = catalog.study_ids
    if not study_ids:
        raise MissingInputError(f"{data_dir / f'{split}_images'} holds no study folders")
    coords = roi_centres(data_dir, split, work_dir, config.roi)
    cutter = RoiCutter(data_dir, split, coords.sort_values("study_id", kind="stable").reset_index(drop=True),
                       config.roi)
    store = FeatureStore(Workspace(work_dir).features_dir(split))
    summary: RunSummary = compute_features(
        study_ids, cutter, extractors, store, config=config.features, catalog_hash=catalog.content_hash(),
        jobs=jobs, scheduler=scheduler, progress=progress,
        extra_inputs={"roi_config": config_hash(config.roi), "roi_centres": frame_hash(coords), "split": split})
    return {"split": split, "table": str(store.root), "studies": summary.studies, "written": summary.written,
            "skipped": summary.skipped, "studies_without_crops": len(summary.failed), "rois": summary.rois,
            "seconds": round(summary.seconds, 1),
            "seconds_per_roi": {name: round(value, 4) for name, value in summary.seconds_per_roi.items()},
            "fit_seconds": {name: round(value, 1) for name, value in summary.fit_seconds.items()}}
