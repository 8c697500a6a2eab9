"""Task definitions: which targets a data set is graded for, how each is seen, and how it is scored; defined once.

The config's ``task`` key selects one of :data:`TASKS` (``rsna2024``, the default, or ``spider``).

A :class:`Task` grades every :class:`Target` at every one of its ``levels`` (``vocab.LEVELS``, L1/L2 .. L5/S1).
A target has

* a grade scale: ``ordinal`` with K >= 3 grades, or ``binary`` (K = 2: absent, present); its grades are spelled
  in the task's labels table as ``grades`` (lowest first), and a grade's index ``0 .. K-1`` is what models predict;
* the metric's row weight per true grade (``weights``, one per grade);
* the view its crop is cut from and the feature rows that describe it: ``roi_condition`` is the condition of the
  feature table's key (``study_id, condition, level``) whose crop the target reads (:mod:`radiospine.roi.cut`
  places and cuts that crop; the ``roi`` config sizes it);
* for tasks imported from gradings (``radiospine import-volumes --gradings``): the gradings column it comes from
  and how that column's values map to grade indices.

``rsna2024`` is the competition's task, built from :mod:`radiospine.vocab`: the five conditions (with their
sides), three severities weighted 1/2/4, labels in ``train.csv`` (25 columns), submissions and the metric of
:mod:`radiospine.metrics` (``metric = "rsna2024"``). Nothing about it changes when another task exists.

``spider`` grades each disc L1/L2 .. L5/S1 of the SPIDER data set (sagittal T2 only) for the Pfirrmann grade
(ordinal, 1-5), disc narrowing, disc bulging, disc herniation and Modic change (binary: SPIDER grades Modic type
0-3, but on its 155 lumbar discs type 1 never occurs and type 3 once, so the type is not learnable; any type > 0
is a change: 65 of 155 discs). Every target reads the sagittal T2 crop of the ``spinal_canal_stenosis`` key at its
level: the only series SPIDER has, centred where the data folder's coordinates put that key (the canal point, or
the disc centre with ``import-volumes --points disc``). Its rows weigh 1 whatever the grade (no clinical weighting
is published for these gradings, so the weighted log loss is the plain log loss); scored per target with
:func:`radiospine.metrics.target_metrics` (``metric = "per_target"``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final, Literal

from radiospine import vocab

Scale = Literal["ordinal", "binary"]


@dataclass(frozen=True)
class Target:
    """One graded finding of a task, at every level of the task (module docstring)."""

    name: str
    scale: Scale
    grades: tuple[str, ...]
    weights: tuple[float, ...]
    view: vocab.View
    roi_condition: str
    #: The gradings column the importer reads, and (value, grade index) pairs mapping its values to grades.
    source_column: str | None = None
    source_values: tuple[tuple[int, int], ...] = ()

    def __post_init__(self) -> None:
        if self.scale == "binary" and len(self.grades) != 2:
            raise ValueError(f"target {self.name}: a binary target has 2 grades, got {self.grades}")
        if self.scale == "ordinal" and len(self.grades) < 3:
            raise ValueError(f"target {self.name}: an ordinal target has 3 or more grades, got {self.grades}")
        if len(self.weights) != len(self.grades) or min(self.weights) <= 0:
            raise ValueError(f"target {self.name}: one positive weight per grade, got {self.weights}")
        if self.roi_condition not in vocab.CONDITIONS:
            raise ValueError(f"target {self.name}: unknown roi_condition {self.roi_condition!r}")

    @property
    def n_grades(self) -> int:
        return len(self.grades)

    def grade_index(self, label: str) -> int:
        """A grade as spelled in the labels table (``"3"``, ``"Moderate"``) -> its index ``0 .. K-1``."""
        if label not in self.grades:
            raise ValueError(f"unknown {self.name} grade {label!r}; expected one of {', '.join(self.grades)}")
        return self.grades.index(label)

    def grade_of_source(self, value: int) -> int:
        """A value of the gradings column (:attr:`source_column`) -> grade index."""
        for source, grade in self.source_values:
            if int(value) == source:
                return grade
        raise ValueError(f"{self.source_column} value {value!r} is not a {self.name} grade; expected one of "
                         f"{', '.join(str(source) for source, _ in self.source_values)}")


@dataclass(frozen=True)
class Task:
    """A set of targets graded at every level (module docstring)."""

    name: str
    targets: tuple[Target, ...]
    levels: tuple[str, ...]
    #: The training labels table in the data folder: ``study_id`` and one column per :meth:`target_columns`.
    labels_file: str
    metric: Literal["rsna2024", "per_target"]

    def target(self, name: str) -> Target:
        for target in self.targets:
            if target.name == name:
                return target
        raise ValueError(f"task {self.name} has no target {name!r}; its targets: "
                         f"{', '.join(t.name for t in self.targets)}")

    @property
    def target_names(self) -> tuple[str, ...]:
        return tuple(target.name for target in self.targets)

    @property
    def target_columns(self) -> tuple[str, ...]:
        """``<target>_<level>`` for every target and level, target-major (``train.csv``'s order for RSNA)."""
        return tuple(f"{target.name}_{level}" for target in self.targets for level in self.levels)

    @property
    def max_grades(self) -> int:
        """The largest K of its targets: the number of probability columns of its predictions."""
        return max(target.n_grades for target in self.targets)

    @property
    def probability_columns(self) -> tuple[str, ...]:
        """The probability columns of its long predictions, ``p0 .. p<K-1>`` for the largest K: a target with
        fewer grades leaves the columns beyond its K empty (``predictions.csv``: ``study_id, target, level``
        then these)."""
        return tuple(f"p{k}" for k in range(self.max_grades))


RSNA2024: Final = Task(
    name="rsna2024",
    targets=tuple(
        Target(name=condition, scale="ordinal", grades=vocab.SEVERITY_LABELS, weights=vocab.SEVERITY_WEIGHTS,
               view=vocab.VIEW_OF_BASE_CONDITION[vocab.split_condition(condition).base], roi_condition=condition)
        for condition in vocab.CONDITIONS),
    levels=vocab.LEVELS,
    labels_file="train.csv",
    metric="rsna2024",
)

_BINARY: Final = ("0", "1")
_NO_YES: Final = ((0, 0), (1, 1))


def _disc_target(name: str, column: str, *, grades: tuple[str, ...] = _BINARY,
                 values: tuple[tuple[int, int], ...] = _NO_YES) -> Target:
    return Target(name=name, scale="binary" if len(grades) == 2 else "ordinal", grades=grades,
                  weights=(1.0,) * len(grades), view="sagittal_t2", roi_condition=vocab.SPINAL,
                  source_column=column, source_values=values)


SPIDER: Final = Task(
    name="spider",
    targets=(
        _disc_target("pfirrmann_grade", "Pfirrman grade", grades=("1", "2", "3", "4", "5"),
                     values=tuple((grade, grade - 1) for grade in range(1, 6))),
        _disc_target("disc_narrowing", "Disc narrowing"),
        _disc_target("disc_bulging", "Disc bulging"),
        _disc_target("disc_herniation", "Disc herniation"),
        _disc_target("modic_change", "Modic", values=((0, 0), (1, 1), (2, 1), (3, 1))),
    ),
    levels=vocab.LEVELS,
    labels_file="train_spider.csv",
    metric="per_target",
)

#: The tasks the config's ``task`` key can name.
TASKS: Final[dict[str, Task]] = {task.name: task for task in (RSNA2024, SPIDER)}
DEFAULT_TASK: Final = RSNA2024.name


def get_task(name: str) -> Task:
    """The task called ``name``; ``ValueError`` naming the known ones otherwise."""
    if name not in TASKS:
        raise ValueError(f"unknown task {name!r}; expected one of {', '.join(TASKS)}")
    return TASKS[name]
