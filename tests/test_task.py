"""The task schema (radiospine.task): RSNA 2024 is the vocabulary unchanged; spider's targets; validation; config."""

from __future__ import annotations

import pytest

from radiospine import vocab
from radiospine.config import CONFIG_DIR, load_config
from radiospine.errors import ConfigError
from radiospine.task import DEFAULT_TASK, RSNA2024, SPIDER, TASKS, Target, get_task


def test_rsna2024_is_the_competition_vocabulary() -> None:
    assert DEFAULT_TASK == "rsna2024" and get_task("rsna2024") is RSNA2024
    assert RSNA2024.target_columns == vocab.TARGET_COLUMNS
    assert RSNA2024.target_names == vocab.CONDITIONS and RSNA2024.levels == vocab.LEVELS
    assert RSNA2024.labels_file == "train.csv" and RSNA2024.metric == "rsna2024"
    for target in RSNA2024.targets:
        assert target.scale == "ordinal" and target.grades == vocab.SEVERITY_LABELS
        assert target.weights == (1.0, 2.0, 4.0) and target.roi_condition == target.name
        assert target.view == vocab.VIEW_OF_BASE_CONDITION[vocab.split_condition(target.name).base]
    assert RSNA2024.target("left_subarticular_stenosis").view == "axial_t2"
    assert RSNA2024.max_grades == 3 and RSNA2024.probability_columns == ("p0", "p1", "p2")


def test_spider_targets() -> None:
    assert SPIDER.target_names == ("pfirrmann_grade", "disc_narrowing", "disc_bulging", "disc_herniation",
                                   "modic_change")
    assert len(SPIDER.target_columns) == 25 and SPIDER.target_columns[0] == "pfirrmann_grade_l1_l2"
    pfirrmann = SPIDER.target("pfirrmann_grade")
    assert pfirrmann.scale == "ordinal" and pfirrmann.n_grades == 5 and pfirrmann.grades[0] == "1"
    assert [pfirrmann.grade_of_source(v) for v in (1, 3, 5)] == [0, 2, 4]
    assert pfirrmann.grade_index("4") == 3
    modic = SPIDER.target("modic_change")
    assert modic.scale == "binary" and [modic.grade_of_source(v) for v in (0, 1, 2, 3)] == [0, 1, 1, 1]
    for target in SPIDER.targets:
        assert target.view == "sagittal_t2" and target.roi_condition == vocab.SPINAL
        assert set(target.weights) == {1.0} and target.source_column
    assert SPIDER.max_grades == 5 and SPIDER.metric == "per_target" and SPIDER.labels_file == "train_spider.csv"
    with pytest.raises(ValueError, match="Pfirrman grade value 6"):
        pfirrmann.grade_of_source(6)
    with pytest.raises(ValueError, match="unknown pfirrmann_grade grade '0'"):
        pfirrmann.grade_index("0")
    with pytest.raises(ValueError, match="no target 'modic'"):
        SPIDER.target("modic")


@pytest.mark.parametrize("fields, message", [
    (dict(scale="binary", grades=("0", "1", "2"), weights=(1.0, 1.0, 1.0)), "a binary target has 2 grades"),
    (dict(scale="ordinal", grades=("0", "1"), weights=(1.0, 1.0)), "3 or more grades"),
    (dict(scale="binary", grades=("0", "1"), weights=(1.0,)), "one positive weight per grade"),
    (dict(scale="binary", grades=("0", "1"), weights=(1.0, 0.0)), "one positive weight per grade"),
    (dict(scale="binary", grades=("0", "1"), weights=(1.0, 1.0), roi_condition="disc"), "unknown roi_condition"),
])
def test_targets_are_validated(fields: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Target(**{"name": "x", "view": "sagittal_t2", "roi_condition": vocab.SPINAL, **fields})


def test_the_config_selects_the_task() -> None:
    assert load_config().task == "rsna2024"
    assert load_config(overrides=["task=spider"]).task == "spider"
    assert load_config(CONFIG_DIR / "spider.yaml").task == "spider"
    with pytest.raises(ConfigError, match="unknown task 'kaggle'"):
        load_config(overrides=["task=kaggle"])
    with pytest.raises(ValueError, match="expected one of rsna2024, spider"):
        get_task("kaggle")
    documented = (CONFIG_DIR / "default.yaml").read_text()
    assert all(name in documented for name in TASKS) and "\ntask: rsna2024" in documented
