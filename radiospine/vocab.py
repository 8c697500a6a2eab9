"""The task's vocabulary, defined once: conditions, levels, sides, severities, views, key and target columns, row ids.

Everything else in radiospine imports these names; nothing else spells them out.

Two spellings exist in the competition files:

* snake_case in ``train.csv`` columns and submission ``row_id`` s
  (``spinal_canal_stenosis``, ``l4_l5``);
* human spelling in ``train_label_coordinates.csv`` (``Spinal Canal Stenosis``, ``L4/L5``).

Conditions are split here into a *base condition* (``spinal_canal_stenosis``,
``neural_foraminal_narrowing``, ``subarticular_stenosis``) and a *side* (``left``, ``right`` or ``None``
for the canal); a *condition* is the full name used in target columns (``left_subarticular_stenosis``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Final, Literal, get_args

SPINAL: Final = "spinal_canal_stenosis"
FORAMINAL: Final = "neural_foraminal_narrowing"
SUBARTICULAR: Final = "subarticular_stenosis"
BASE_CONDITIONS: Final[tuple[str, ...]] = (SPINAL, FORAMINAL, SUBARTICULAR)

SIDES: Final[tuple[str, ...]] = ("left", "right")

#: The five graded conditions, in the order of ``train.csv``'s columns.
CONDITIONS: Final[tuple[str, ...]] = (
    SPINAL,
    "left_neural_foraminal_narrowing",
    "right_neural_foraminal_narrowing",
    "left_subarticular_stenosis",
    "right_subarticular_stenosis",
)

#: Intervertebral levels from top to bottom.
LEVELS: Final[tuple[str, ...]] = ("l1_l2", "l2_l3", "l3_l4", "l4_l5", "l5_s1")

#: Severity classes in ordinal order; also the submission's probability columns.
SEVERITIES: Final[tuple[str, ...]] = ("normal_mild", "moderate", "severe")
#: The labels as spelled in ``train.csv`` cells, in the same order as :data:`SEVERITIES`.
SEVERITY_LABELS: Final[tuple[str, ...]] = ("Normal/Mild", "Moderate", "Severe")
#: The metric's row weight by true severity index (1, 2, 4).
SEVERITY_WEIGHTS: Final[tuple[float, ...]] = (1.0, 2.0, 4.0)

#: The 25 target columns of ``train.csv``, condition-major as in the real file.
TARGET_COLUMNS: Final[tuple[str, ...]] = tuple(f"{c}_{lv}" for c in CONDITIONS for lv in LEVELS)

#: Series descriptions, exactly as in ``*_series_descriptions.csv``.
SAGITTAL_T1: Final = "Sagittal T1"
SAGITTAL_T2: Final = "Sagittal T2/STIR"
AXIAL_T2: Final = "Axial T2"
SERIES_DESCRIPTIONS: Final[tuple[str, ...]] = (SAGITTAL_T1, SAGITTAL_T2, AXIAL_T2)

#: On which series type each base condition is marked in the coordinates file.
SERIES_FOR_BASE_CONDITION: Final[dict[str, str]] = {
    SPINAL: SAGITTAL_T2,
    FORAMINAL: SAGITTAL_T1,
    SUBARTICULAR: AXIAL_T2,
}

#: The views an ROI can be cut from: which kind of image a crop shows. ``"sagittal_t2"`` the canal,
#: ``"sagittal_t1"`` the foramina, ``"axial_t2"`` the subarticular recesses (and the canal on axial slices).
View = Literal["sagittal_t1", "sagittal_t2", "axial_t2"]
VIEWS: Final[tuple[View, ...]] = get_args(View)

#: The view of each series description.
VIEW_OF_SERIES: Final[dict[str, View]] = {SAGITTAL_T1: "sagittal_t1", SAGITTAL_T2: "sagittal_t2", AXIAL_T2: "axial_t2"}
#: The series description of each view: its human name (``"sagittal_t2"`` -> ``"Sagittal T2/STIR"``).
SERIES_OF_VIEW: Final[dict[View, str]] = {view: series for series, view in VIEW_OF_SERIES.items()}
#: The view each base condition is graded on (the view of its series in the coordinates file).
VIEW_OF_BASE_CONDITION: Final[dict[str, View]] = {
    base: VIEW_OF_SERIES[series] for base, series in SERIES_FOR_BASE_CONDITION.items()}

#: The key of a row of the long tables (labels, predictions, features): one condition at one level of a study.
KEY_COLUMNS: Final[tuple[str, ...]] = ("study_id", "condition", "level")

SUBMISSION_COLUMNS: Final[tuple[str, ...]] = ("row_id", *SEVERITIES)


@dataclass(frozen=True)
class ConditionParts:
    """A condition split into its base condition and side (``None`` for the canal)."""

    base: str
    side: str | None

    @property
    def condition(self) -> str:
        return self.base if self.side is None else f"{self.side}_{self.base}"


def split_condition(condition: str) -> ConditionParts:
    """``"left_subarticular_stenosis"`` -> ``ConditionParts("subarticular_stenosis", "left")``."""
    if condition not in CONDITIONS:
        raise ValueError(f"unknown condition {condition!r}; expected one of {', '.join(CONDITIONS)}")
    for side in SIDES:
        prefix = f"{side}_"
        if condition.startswith(prefix):
            return ConditionParts(condition[len(prefix):], side)
    return ConditionParts(condition, None)


def join_condition(base: str, side: str | None) -> str:
    """The inverse of :func:`split_condition`; validates the pair."""
    if base not in BASE_CONDITIONS:
        raise ValueError(f"unknown base condition {base!r}; expected one of {', '.join(BASE_CONDITIONS)}")
    if (base == SPINAL) != (side is None):
        raise ValueError(f"{base!r} {'takes no side' if base == SPINAL else 'needs a side'}, got side={side!r}")
    if side is not None and side not in SIDES:
        raise ValueError(f"unknown side {side!r}; expected 'left' or 'right'")
    return ConditionParts(base, side).condition


# --- human spelling <-> snake_case -------------------------------------------------------------

def condition_to_human(condition: str) -> str:
    """``"left_neural_foraminal_narrowing"`` -> ``"Left Neural Foraminal Narrowing"``."""
    split_condition(condition)  # validates
    return " ".join(word.capitalize() for word in condition.split("_"))


def condition_from_human(text: str) -> str:
    """``"Left Neural Foraminal Narrowing"`` (any case, extra spaces) -> ``"left_neural_foraminal_narrowing"``."""
    snake = "_".join(str(text).strip().lower().split())
    if snake not in CONDITIONS:
        raise ValueError(
            f"unknown condition {text!r}; expected one of {', '.join(map(condition_to_human, CONDITIONS))}"
        )
    return snake


def level_to_human(level: str) -> str:
    """``"l4_l5"`` -> ``"L4/L5"``."""
    if level not in LEVELS:
        raise ValueError(f"unknown level {level!r}; expected one of {', '.join(LEVELS)}")
    return level.upper().replace("_", "/")


def level_from_human(text: str) -> str:
    """``"L4/L5"`` (or ``"l4_l5"``, ``"L4-L5"``) -> ``"l4_l5"``."""
    snake = re.sub(r"[\s/\-_]+", "_", str(text).strip().lower())
    if snake not in LEVELS:
        raise ValueError(f"unknown level {text!r}; expected one of {', '.join(map(level_to_human, LEVELS))}")
    return snake


def severity_index(label: str) -> int:
    """``"Normal/Mild"`` / ``"normal_mild"`` -> 0, ``"Moderate"`` -> 1, ``"Severe"`` -> 2."""
    if label in SEVERITY_LABELS:
        return SEVERITY_LABELS.index(label)
    if label in SEVERITIES:
        return SEVERITIES.index(label)
    raise ValueError(f"unknown severity {label!r}; expected one of {', '.join(SEVERITY_LABELS)}")


# --- target columns and row ids -----------------------------------------------------------------

def target_column(condition: str, level: str) -> str:
    if condition not in CONDITIONS:
        raise ValueError(f"unknown condition {condition!r}")
    if level not in LEVELS:
        raise ValueError(f"unknown level {level!r}")
    return f"{condition}_{level}"


def split_target_column(column: str) -> tuple[str, str]:
    """``"spinal_canal_stenosis_l4_l5"`` -> ``("spinal_canal_stenosis", "l4_l5")``."""
    for level in LEVELS:
        suffix = f"_{level}"
        if column.endswith(suffix) and column[: -len(suffix)] in CONDITIONS:
            return column[: -len(suffix)], level
    raise ValueError(f"{column!r} is not a target column like 'spinal_canal_stenosis_l4_l5'")


def make_row_id(study_id: int, condition: str, level: str) -> str:
    """``(4003253, "spinal_canal_stenosis", "l1_l2")`` -> ``"4003253_spinal_canal_stenosis_l1_l2"``."""
    return f"{int(study_id)}_{target_column(condition, level)}"


def parse_row_id(row_id: str) -> tuple[int, str, str]:
    """The inverse of :func:`make_row_id`; a malformed id raises ``ValueError`` naming it."""
    head, sep, column = str(row_id).partition("_")
    if not sep or not head.isdigit():
        raise ValueError(f"row_id {row_id!r} does not start with a numeric study id")
    try:
        condition, level = split_target_column(column)
    except ValueError as exc:
        raise ValueError(f"row_id {row_id!r}: {exc}") from None
    return int(head), condition, level


def study_row_ids(study_id: int) -> list[str]:
    """The 25 row ids of one study, in ``TARGET_COLUMNS`` order."""
    return [f"{int(study_id)}_{column}" for column in TARGET_COLUMNS]
