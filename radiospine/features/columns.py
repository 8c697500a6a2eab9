"""The feature table's column names, built and parsed in one place.

Besides the key columns (``study_id``, ``condition``, ``level``), every column of the feature table and of the
models' design matrices is namespaced with :data:`SEPARATOR` (``"__"``)::

    <extractor>__<view>__<name>  feature      radiomics__sagittal_t2__original_glcm_Contrast, cnn__axial_t2__prob_severe
    <extractor>__status          status       radiomics__status ("ok" or the failure reasons, see features.base)
    key__<name>                  key feature  key__level, key__side_left (added by radiospine.models.condition_models)

:func:`feature_column`, :func:`status_column` and :func:`key_column` build them; :func:`parse_column` turns a name
back into a :class:`Column` and rejects anything else with a message saying what was expected. A feature's
``<name>`` is the extractor's own (it may hold ``"__"``); extractor names are snake_case words
(:func:`is_extractor_name`), and ``key`` is reserved for the key features.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from radiospine import vocab

#: Separates extractor, view and feature in a column name.
SEPARATOR = "__"
#: The last part of a status column's name.
STATUS = "status"
#: The namespace of the key features the model driver adds; no extractor may use it.
KEY_EXTRACTOR = "key"
#: What every key feature's name starts with.
KEY_PREFIX = f"{KEY_EXTRACTOR}{SEPARATOR}"
#: The level index feature (0 = L1/L2 .. 4 = L5/S1) of model groups spanning levels.
LEVEL_FEATURE = f"{KEY_PREFIX}level"
#: The side feature (1 left, 0 right) of model groups spanning both sides.
SIDE_FEATURE = f"{KEY_PREFIX}side_left"

def cnn_probability_features(classes: Sequence[str]) -> tuple[str, ...]:
    """The CNN's feature names (:mod:`radiospine.features.cnn`) for its head's classes, lowest first:
    ``prob_<class>`` (the spider task's Pfirrmann grades: ``prob_1`` .. ``prob_5``)."""
    return tuple(f"prob_{name}" for name in classes)


#: The RSNA task's CNN feature names: its probability of each severity, in ``vocab.SEVERITIES`` order
#: (``prob_normal_mild``, ``prob_moderate``, ``prob_severe``).
CNN_PROBABILITY_FEATURES: tuple[str, ...] = cnn_probability_features(vocab.SEVERITIES)

ColumnKind = Literal["feature", "status", "key"]
_EXTRACTOR_NAME = re.compile(r"^[a-z][a-z0-9]*(_[a-z0-9]+)*$")
_FORMS = f"<extractor>{SEPARATOR}<view>{SEPARATOR}<name>, <extractor>{SEPARATOR}{STATUS} or {KEY_PREFIX}<name>"


@dataclass(frozen=True)
class Column:
    """A parsed column name.

    Attributes:
        kind: ``"feature"``, ``"status"`` or ``"key"``.
        extractor: the namespace (``"radiomics"``, ``"cnn"``; :data:`KEY_EXTRACTOR` for key features).
        view: the crop view of a feature (``"sagittal_t2"``); None for status and key columns.
        name: the feature's name (``"original_glcm_Contrast"``, ``"level"``); :data:`STATUS` for a status column.
    """

    kind: ColumnKind
    extractor: str
    view: str | None
    name: str

    @property
    def text(self) -> str:
        """The column name (``parse_column(text).text == text``)."""
        if self.kind == "feature":
            return f"{self.extractor}{SEPARATOR}{self.view}{SEPARATOR}{self.name}"
        return f"{self.extractor}{SEPARATOR}{self.name}"


def is_extractor_name(name: str) -> bool:
    """Whether ``name`` can name an extractor: a snake_case word (``"radiomics"``), no ``"__"``, not ``"key"``."""
    return bool(_EXTRACTOR_NAME.match(name)) and name != KEY_EXTRACTOR


def feature_column(extractor: str, view: str, feature: str) -> str:
    """The name of a feature column: ``("radiomics", "sagittal_t2", "original_glcm_Contrast")`` ->
    ``"radiomics__sagittal_t2__original_glcm_Contrast"``.

    Raises ``ValueError`` when a part is empty, the extractor or view holds :data:`SEPARATOR`, or the extractor is
    :data:`KEY_EXTRACTOR` (the result would not parse back to the same parts).
    """
    if not (extractor and view and feature) or SEPARATOR in extractor or SEPARATOR in view \
            or extractor == KEY_EXTRACTOR:
        raise ValueError(f"cannot name a feature column from extractor {extractor!r}, view {view!r} and feature "
                         f"{feature!r}: all must be non-empty, extractor and view without {SEPARATOR!r}, and the "
                         f"extractor not {KEY_EXTRACTOR!r}")
    return f"{extractor}{SEPARATOR}{view}{SEPARATOR}{feature}"


def status_column(extractor: str) -> str:
    """``"radiomics"`` -> ``"radiomics__status"``; an empty extractor, one holding ``"__"`` or ``"key"`` raises."""
    if not extractor or SEPARATOR in extractor or extractor == KEY_EXTRACTOR:
        raise ValueError(f"cannot name the status column of extractor {extractor!r}: it must be non-empty, without "
                         f"{SEPARATOR!r}, and not {KEY_EXTRACTOR!r}")
    return f"{extractor}{SEPARATOR}{STATUS}"


def key_column(name: str) -> str:
    """``"level"`` -> ``"key__level"``; an empty name raises."""
    if not name:
        raise ValueError("a key feature needs a name")
    return f"{KEY_PREFIX}{name}"


def parse_column(column: str) -> Column:
    """The parts of a namespaced column name (see the module docstring for the three forms).

    Returns:
        A :class:`Column` whose ``text`` is ``column``.

    Raises:
        ValueError: ``column`` is none of the three forms (an empty part, too few parts, a key column such as
            ``study_id``); the message names the column and the expected forms.
    """
    if column.startswith(KEY_PREFIX) and len(column) > len(KEY_PREFIX):
        return Column("key", KEY_EXTRACTOR, None, column[len(KEY_PREFIX):])
    parts = column.split(SEPARATOR, 2)
    if len(parts) == 2 and parts[0] and parts[1] == STATUS:
        return Column("status", parts[0], None, STATUS)
    if len(parts) == 3 and all(parts):
        return Column("feature", parts[0], parts[1], parts[2])
    raise ValueError(f"{column!r} is not a feature-table column name; expected {_FORMS}")


def is_status_column(column: str) -> bool:
    """Whether ``column`` is an extractor's status column (``"<extractor>__status"``)."""
    parts = column.split(SEPARATOR, 2)
    return len(parts) == 2 and bool(parts[0]) and parts[1] == STATUS and parts[0] != KEY_EXTRACTOR
