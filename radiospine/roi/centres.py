"""Where ROIs are cut, per split: train-test parity (``roi.train_centres``).

* test split: the localiser's coordinates (``radiospine localize``), since test studies come without any;
* train split, ``roi.train_centres: label``: the given ``train_label_coordinates.csv``;
* train split, ``roi.train_centres: oof``: the localiser's out-of-fold predictions
  (``radiospine train-localizer`` with that setting), so the classifiers learn on ROIs placed the way the test
  ROIs will be, errors included.

Every frame returned has the coordinates columns of :func:`radiospine.labels.load_label_coordinates` plus
``source`` (``label``, ``predicted`` or ``fallback``), which :func:`radiospine.roi.cut.crops_for_study` copies
onto each ROI.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from radiospine import vocab
from radiospine.config import RoiConfig
from radiospine.errors import DataError, MissingInputError
from radiospine.labels import load_label_coordinates
from radiospine.workspace import Workspace, provenance_path


def load_predicted_coordinates(path: str | Path) -> pd.DataFrame:
    """A localiser coordinates file with the ``source`` of each point from the provenance file beside it."""
    path = Path(path)
    coords = load_label_coordinates(path)
    provenance_file = provenance_path(path)
    if not provenance_file.is_file():
        raise MissingInputError(f"{provenance_file} is missing beside {path}: re-run the localiser that wrote it")
    provenance = pd.read_csv(provenance_file, usecols=[*vocab.KEY_COLUMNS, "source"])
    provenance = provenance[provenance["source"] != "missing"].drop_duplicates(list(vocab.KEY_COLUMNS))
    merged = coords.merge(provenance, on=list(vocab.KEY_COLUMNS), how="left", validate="many_to_one")
    if merged["source"].isna().any():
        row = merged[merged["source"].isna()].iloc[0]
        raise DataError(f"{provenance_file} has no row for study {row.study_id} {row.condition} {row.level} of "
                        f"{path}: the two files do not belong together; re-run the localiser")
    return merged


def roi_centres(data_dir: str | Path, split: str, work_dir: str | Path, config: RoiConfig) -> pd.DataFrame:
    """The coordinates to cut a split's ROIs at (see the module docstring), with a ``source`` column."""
    if split == "train" and config.train_centres == "label":
        coords = load_label_coordinates(Path(data_dir) / "train_label_coordinates.csv")
        return coords.assign(source="label")
    out_of_fold = split == "train"
    workspace = Workspace(work_dir)
    path = workspace.oof_coordinates if out_of_fold else workspace.coordinates(split)
    if not path.is_file():
        how = ("radiospine train-localizer --data DIR --work WORK --set roi.train_centres=oof" if out_of_fold
               else f"radiospine localize --data DIR --split {split} --work WORK")
        raise MissingInputError(f"{path} does not exist: the {split} ROI centres come from the localiser; run {how}")
    return load_predicted_coordinates(path)
