"""The whole pipeline on a tiny synthetic data set, through the `radiospine` command: synth -> train-localizer ->
train-gbm (train features first) -> predict (localise, test features, models, prior fill) -> score -> report.

The test study whose axial series is unreadable must still get its 25 valid rows."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from radiospine import vocab
from radiospine.cli import main
from radiospine.submission import read_submission, validate_submission

pytestmark = pytest.mark.slow

TINY_LOCALIZER = ["localizer.epochs=1", "localizer.base_channels=4", "localizer.depth=2",
                  "localizer.sagittal_grid_px=32", "localizer.sagittal_grid_mm=10", "localizer.axial_grid_px=32",
                  "localizer.axial_grid_mm=4", "localizer.sagittal_samples_per_epoch=8",
                  "localizer.axial_samples_per_epoch=8", "localizer.validation_samples=8", "localizer.batch_size=4",
                  "localizer.device=cpu"]
TINY_MODELS = ["features.radiomics.params=radiomics/original_only.yaml", "features.cnn.epochs=1",
               "features.cnn.folds=2", "models.n_folds=2", "models.gbm.n_estimators=20",
               "models.gbm.min_child_samples=3"]


def options(settings: list[str]) -> list[str]:
    return [token for setting in settings for token in ("--set", setting)]


def test_pipeline_end_to_end(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data, work = tmp_path / "data", tmp_path / "work"
    settings = options(TINY_LOCALIZER + TINY_MODELS)
    assert main(["synth", "--out", str(data), "--train-studies", "8", "--test-studies", "2", "--seed", "3",
                 "--small"]) == 0
    assert main(["train-localizer", "--data", str(data), "--work", str(work), *settings]) == 0
    assert main(["train-gbm", "--data", str(data), "--work", str(work), "--no-progress", *settings]) == 0
    card = json.loads((work / "models" / "model_card.json").read_text())
    assert set(card["classes"]) == set(vocab.SEVERITIES)

    # an unreadable series in a test study: every file of its axial series cut short
    test_series = pd.read_csv(data / "test_series_descriptions.csv")
    broken = test_series[test_series["series_description"] == vocab.AXIAL_T2].iloc[0]
    for path in (data / "test_images" / str(broken.study_id) / str(broken.series_id)).glob("*.dcm"):
        path.write_bytes(path.read_bytes()[:300])

    submission = tmp_path / "submission.csv"
    capsys.readouterr()
    assert main(["predict", "--data", str(data), "--split", "test", "--work", str(work), "--out", str(submission),
                 "--no-progress", *settings]) == 0
    out = capsys.readouterr().out
    frame = validate_submission(read_submission(submission), test_series["study_id"].unique())
    assert len(frame) == 25 * test_series["study_id"].nunique()
    assert f"study {broken.study_id}" in out  # the run says which study was filled from the prior, and why

    assert main(["score", "--labels", str(data / "truth" / "test_labels.csv"), "--pred", str(submission)]) == 0
    scores = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert 0 < scores["score"] < 5

    report = tmp_path / "report"
    assert main(["report", "--data", str(data), "--work", str(work), "--out", str(report), *settings]) == 0
    assert (report / "index.html").is_file()
    assert len(list((report / "studies").glob("*.html"))) == 1 + test_series["study_id"].nunique()
    # the explained member is named with its blend weight and what it is blended with (the CNN head among them)
    weights = card["blend_weights"]["spinal_canal_stenosis"]
    assert set(weights) == {"lightgbm_ordinal", "xgboost_ordinal", "cnn_head"}
    page = (report / "conditions" / "spinal_canal_stenosis.html").read_text()
    assert f"lightgbm_ordinal, blend weight {weights['lightgbm_ordinal']:.2f} (blended with xgboost_ordinal" in page
    assert f"cnn_head {weights['cnn_head']:.2f}, then calibrated)" in page
