"""Synthetic labels: latent severities, a noisy reader, and the exact posterior (the oracle).

The model, per study
--------------------
* A latent **grade-scale severity** ``g`` for each of the 25 targets (``(25,)`` float, in
  :data:`radiospine.vocab.TARGET_COLUMNS` order). The scale is the reader's: ``g = 1`` is the border
  between Normal/Mild and Moderate, ``g = 2`` the border between Moderate and Severe, for every condition
  and level alike, so the anatomy can be one function of ``g`` per condition (:mod:`radiospine.synth.anatomy`).
  ``g = mean + scale * z`` with ``z ~ N(0, correlation)``.
* A **noisy reader** grades ``y = g + eps``, ``eps ~ N(0, reader_noise_sd**2)`` independently per target:
  label 0 (Normal/Mild) if ``y <= 1``, 1 (Moderate) if ``1 < y <= 2``, 2 (Severe) if ``y > 2``.
* The **oracle** is the exact posterior the generator used:
  ``P(label | g) = [Phi((1 - g)/sd), Phi((2 - g)/sd) - Phi((1 - g)/sd), 1 - Phi((2 - g)/sd)]``.
  No model of the images can beat it on average, because the reader's noise is not in the images.

Fitting the model to the real figures (``rsna_facts.json``)
-----------------------------------------------------------
* Marginals: with ``S = sqrt(scale**2 + sd**2)`` the reader's ``y ~ N(mean, S**2)``; the two label
  fractions of a column fix ``mean`` and ``S`` in closed form, hence ``scale`` (a column whose ``S`` is below
  the reader's noise gets ``scale`` at a floor and its frequencies drift; none does at the default noise).
* Correlations: for each pair of columns the correlation of the reader's ``y`` is solved (bisection) so that
  the expected Spearman correlation of the two *ordinal labels*, ties included, equals the real one (a plain
  Spearman-to-Pearson conversion would ignore the ties of labels that are 90% Normal/Mild and give far too
  weak label correlations). It is converted to the correlation of ``g`` and repaired to positive definite.
* Missing labels: the axial series may start below L1/L2 or L2/L3, or stop above L5/S1, at the rates the real
  data's missing subarticular labels imply; both subarticular labels of an uncovered level are missing. Every
  other target goes missing at random at the rest of its real rate.

Everything here is cheap: :func:`draw_labels` renders nothing and draws many studies at once, so label-only
samples of tens of thousands of studies take a fraction of a second.
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from scipy.special import ndtr, ndtri

from radiospine import vocab
from radiospine.errors import MissingInputError

#: The real-data figures the generator imitates (a copy of the derived figures, no records).
FACTS_PATH = Path(__file__).resolve().parent / "rsna_facts.json"

#: Grade-scale borders: Normal/Mild | Moderate at 1, Moderate | Severe at 2.
GRADE_BORDERS: tuple[float, float] = (1.0, 2.0)
#: Smallest latent standard deviation a column may get (when the reader noise alone exceeds its spread).
_MIN_SCALE = 0.05
#: Largest absolute latent correlation kept before the positive-definite repair.
_MAX_CORRELATION = 0.97
#: Smallest eigenvalue of the repaired latent correlation matrix.
_MIN_EIGENVALUE = 1e-3
#: Levels where the axial coverage may start late (in order) or end early.
_LATE_START_LEVELS: tuple[str, ...] = vocab.LEVELS[:2]
_EARLY_END_LEVELS: tuple[str, ...] = vocab.LEVELS[-1:]


@functools.lru_cache(maxsize=4)
def load_facts(path: str | Path = FACTS_PATH) -> dict:
    """The real-data figures (``rsna_facts.json``) as a dict; cached."""
    path = Path(path)
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise MissingInputError(f"{path} is missing: the synthetic generator needs the real-data figures "
                                f"(reinstall radiospine or restore the file)") from None


def label_fractions(facts: dict) -> tuple[np.ndarray, np.ndarray]:
    """``(fractions (25, 3) of labelled rows per target, missing (25,) fraction)`` in TARGET_COLUMNS order."""
    table = facts["label_fractions_per_column"]
    fractions = np.array([[table[c][s] for s in vocab.SEVERITIES] for c in vocab.TARGET_COLUMNS], dtype=float)
    missing = np.array([table[c]["missing"] for c in vocab.TARGET_COLUMNS], dtype=float)
    return fractions / fractions.sum(axis=1, keepdims=True), missing


def real_spearman(facts: dict) -> np.ndarray:
    """The real ``(25, 25)`` Spearman matrix of the labels, reordered to TARGET_COLUMNS."""
    block = facts["label_spearman_matrix_25x25"]
    order = [block["columns"].index(column) for column in vocab.TARGET_COLUMNS]
    matrix = np.asarray(block["matrix"], dtype=float)
    return matrix[np.ix_(order, order)]


# --- bivariate normal ------------------------------------------------------------------------------------

_GL_NODES, _GL_WEIGHTS = np.polynomial.legendre.leggauss(24)


def bivariate_normal_cdf(h: np.ndarray, k: np.ndarray, rho: np.ndarray) -> np.ndarray:
    """``P(X <= h, Y <= k)`` for standard normals with correlation ``rho``; broadcast, ``|rho| < 0.995``.

    Uses ``Phi2 = Phi(h) Phi(k) + int_0^rho phi2(h, k; r) dr`` with 24-point Gauss-Legendre quadrature
    (absolute error below 1e-7 for ``|rho| <= 0.97``). Infinite ``h`` or ``k`` are allowed.
    """
    h, k, rho = np.broadcast_arrays(*(np.asarray(v, dtype=float) for v in (h, k, rho)))
    finite = np.isfinite(h) & np.isfinite(k)
    hf, kf = np.where(finite, h, 0.0), np.where(finite, k, 0.0)
    r = 0.5 * rho[..., None] * (_GL_NODES + 1.0)  # nodes mapped to [0, rho]
    one_minus = 1.0 - r * r
    density = np.exp(-(hf[..., None] ** 2 - 2.0 * r * hf[..., None] * kf[..., None] + kf[..., None] ** 2)
                     / (2.0 * one_minus)) / (2.0 * np.pi * np.sqrt(one_minus))
    integral = 0.5 * rho * np.sum(_GL_WEIGHTS * density, axis=-1)
    # with an infinite bound the other variable alone decides: +inf -> its Phi, -inf -> 0
    limit = np.where((h == -np.inf) | (k == -np.inf), 0.0, np.where(h == np.inf, ndtr(k), ndtr(h)))
    return np.where(finite, ndtr(h) * ndtr(k) + integral, limit)


def _ordinal_spearman(q_i: np.ndarray, q_j: np.ndarray, p_i: np.ndarray, p_j: np.ndarray,
                      rho: np.ndarray) -> np.ndarray:
    """Expected Spearman correlation (ties as mid-ranks) of two 3-class ordinal labels cut from correlated
    standard normals at thresholds ``q`` (``(n, 2)``) with class probabilities ``p`` (``(n, 3)``)."""
    cumulative = np.zeros(rho.shape + (4, 4))
    thresholds_i = np.concatenate([np.full(q_i.shape[:-1] + (1,), -np.inf), q_i,
                                   np.full(q_i.shape[:-1] + (1,), np.inf)], axis=-1)
    thresholds_j = np.concatenate([np.full(q_j.shape[:-1] + (1,), -np.inf), q_j,
                                   np.full(q_j.shape[:-1] + (1,), np.inf)], axis=-1)
    for a in range(1, 4):  # row/column 0 (a -inf bound) stays 0
        for b in range(1, 4):
            cumulative[..., a, b] = bivariate_normal_cdf(thresholds_i[..., a], thresholds_j[..., b], rho)
    joint = np.diff(np.diff(cumulative, axis=-1), axis=-2)  # (n, 3, 3)
    midrank_i = np.cumsum(p_i, axis=-1) - p_i / 2.0
    midrank_j = np.cumsum(p_j, axis=-1) - p_j / 2.0
    mean_i, mean_j = (p_i * midrank_i).sum(-1), (p_j * midrank_j).sum(-1)
    var_i = (p_i * midrank_i ** 2).sum(-1) - mean_i ** 2
    var_j = (p_j * midrank_j ** 2).sum(-1) - mean_j ** 2
    cross = np.einsum("...ab,...a,...b->...", joint, midrank_i, midrank_j)
    return (cross - mean_i * mean_j) / np.sqrt(var_i * var_j)


def _repair_correlation(matrix: np.ndarray) -> np.ndarray:
    """Nearest-ish positive definite correlation matrix: clip eigenvalues, rescale to a unit diagonal."""
    matrix = np.clip((matrix + matrix.T) / 2.0, -_MAX_CORRELATION, _MAX_CORRELATION)
    np.fill_diagonal(matrix, 1.0)
    values, vectors = np.linalg.eigh(matrix)
    repaired = (vectors * np.maximum(values, _MIN_EIGENVALUE)) @ vectors.T
    scale = np.sqrt(np.diag(repaired))
    repaired = repaired / scale[:, None] / scale[None, :]
    np.fill_diagonal(repaired, 1.0)
    return repaired


# --- the model --------------------------------------------------------------------------------------------

@dataclass(frozen=True, eq=False)
class LabelModel:
    """The fitted label model (see the module docstring). Arrays are in TARGET_COLUMNS order.

    Attributes:
        mean, scale: ``(25,)`` latent ``g = mean + scale * z``.
        correlation: ``(25, 25)`` positive definite correlation of ``z``.
        reader_noise_sd: the reader's noise on the grade scale.
        cholesky: ``(25, 25)`` lower Cholesky factor of ``correlation``.
        late_start: ``(len(_LATE_START_LEVELS),)`` probability that the axial coverage starts below each of the
            first levels (non-increasing).
        early_end: ``(1,)`` probability that the axial coverage stops above L5/S1.
        random_missing: ``(25,)`` probability that a target goes missing at random.
    """

    mean: np.ndarray
    scale: np.ndarray
    correlation: np.ndarray
    reader_noise_sd: float
    cholesky: np.ndarray
    late_start: np.ndarray
    early_end: np.ndarray
    random_missing: np.ndarray

    def marginal_probabilities(self) -> np.ndarray:
        """``(25, 3)`` exact label probabilities per target (labelled rows)."""
        total = np.sqrt(self.scale ** 2 + self.reader_noise_sd ** 2)
        below = ndtr((np.asarray(GRADE_BORDERS)[None, :] - self.mean[:, None]) / total[:, None])
        return np.diff(np.concatenate([np.zeros((25, 1)), below, np.ones((25, 1))], axis=1), axis=1)


@functools.lru_cache(maxsize=8)
def build_label_model(reader_noise_sd: float, facts_path: str = str(FACTS_PATH)) -> LabelModel:
    """Fit the label model to the real figures for a given reader noise (cached; about 50 ms)."""
    if not reader_noise_sd > 0:
        raise ValueError(f"reader_noise_sd must be > 0, got {reader_noise_sd}")
    facts = load_facts(facts_path)
    fractions, missing = label_fractions(facts)
    q = ndtri(np.cumsum(fractions, axis=1)[:, :2])  # (25, 2) standard-normal thresholds of the reader's y
    total = 1.0 / (q[:, 1] - q[:, 0])
    mean = GRADE_BORDERS[0] - q[:, 0] * total
    scale = np.sqrt(np.maximum(total ** 2 - reader_noise_sd ** 2, _MIN_SCALE ** 2))
    total = np.sqrt(scale ** 2 + reader_noise_sd ** 2)
    q = (np.asarray(GRADE_BORDERS)[None, :] - mean[:, None]) / total[:, None]
    probabilities = np.diff(np.concatenate([np.zeros((25, 1)), ndtr(q), np.ones((25, 1))], axis=1), axis=1)

    target = real_spearman(facts)
    i, j = np.triu_indices(25, k=1)
    low, high = np.full(i.shape, -0.99), np.full(i.shape, 0.99)
    for _ in range(40):  # bisection: the ordinal Spearman grows with the reader-level correlation
        middle = (low + high) / 2.0
        too_low = _ordinal_spearman(q[i], q[j], probabilities[i], probabilities[j], middle) < target[i, j]
        low, high = np.where(too_low, middle, low), np.where(too_low, high, middle)
    reader_correlation = np.eye(25)
    reader_correlation[i, j] = reader_correlation[j, i] = (low + high) / 2.0
    latent = reader_correlation * np.outer(total, total) / np.outer(scale, scale)
    correlation = _repair_correlation(latent)

    structural = np.zeros(25)
    subarticular = [vocab.target_column(c, lv) for c in vocab.CONDITIONS for lv in vocab.LEVELS
                    if vocab.split_condition(c).base == vocab.SUBARTICULAR]
    both_sides = {lv: min(missing[vocab.TARGET_COLUMNS.index(col)] for col in subarticular
                          if col.endswith(lv)) for lv in vocab.LEVELS}
    late_start = np.minimum.accumulate([both_sides[lv] for lv in _LATE_START_LEVELS])
    early_end = np.array([both_sides[lv] for lv in _EARLY_END_LEVELS])
    for col in subarticular:
        level = vocab.split_target_column(col)[1]
        if level in _LATE_START_LEVELS:
            structural[vocab.TARGET_COLUMNS.index(col)] = late_start[_LATE_START_LEVELS.index(level)]
        elif level in _EARLY_END_LEVELS:
            structural[vocab.TARGET_COLUMNS.index(col)] = early_end[_EARLY_END_LEVELS.index(level)]
    random_missing = np.clip((missing - structural) / np.maximum(1.0 - structural, 1e-9), 0.0, 1.0)
    return LabelModel(mean=mean, scale=scale, correlation=correlation, reader_noise_sd=float(reader_noise_sd),
                      cholesky=np.linalg.cholesky(correlation), late_start=late_start, early_end=early_end,
                      random_missing=random_missing)


@dataclass(frozen=True)
class StudyLabels:
    """One study's drawn labels.

    Attributes:
        grade: ``(25,)`` latent grade-scale severities (TARGET_COLUMNS order); the anatomy follows these.
        labels: ``(25,)`` int8 reader labels 0/1/2, ``-1`` where missing.
        oracle: ``(25, 3)`` exact ``P(label | grade)`` (defined for missing targets too).
        axial_levels: the levels the axial series cover (a contiguous run of LEVELS, top to bottom); the
            subarticular labels of the other levels are missing.
        first_axial, last_axial: ``(n,)`` index into LEVELS of the first and last covered level.
    """

    grade: np.ndarray
    labels: np.ndarray
    oracle: np.ndarray
    axial_levels: tuple[str, ...]
    first_axial: np.ndarray
    last_axial: np.ndarray

    def grade_of(self, condition: str, level: str) -> float:
        return float(self.grade[vocab.TARGET_COLUMNS.index(vocab.target_column(condition, level))])

    def label_of(self, condition: str, level: str) -> int:
        return int(self.labels[vocab.TARGET_COLUMNS.index(vocab.target_column(condition, level))])


def oracle_probabilities(grade: np.ndarray, reader_noise_sd: float) -> np.ndarray:
    """``(..., 3)`` exact ``P(label | grade)`` of the noisy reader for grade-scale severities ``(...)``."""
    grade = np.asarray(grade, dtype=float)
    below = [ndtr((border - grade) / reader_noise_sd) for border in GRADE_BORDERS]
    return np.stack([below[0], below[1] - below[0], 1.0 - below[1]], axis=-1)


def draw_labels(model: LabelModel, rng: np.random.Generator, n_studies: int) -> StudyLabels:
    """Draw ``n_studies`` studies' latent severities, reader labels and missing targets at once.

    Returns a :class:`StudyLabels` whose arrays have a leading study axis (``grade (n, 25)`` ...;
    ``axial_levels`` is then empty: see ``first_axial``/``last_axial``). Draws from ``rng`` in a fixed pattern:
    one study drawn alone consumes exactly what :func:`draw_study_labels` consumes.
    """
    z = rng.standard_normal((n_studies, 25)) @ model.cholesky.T
    grade = model.mean + model.scale * z
    reading = grade + model.reader_noise_sd * rng.standard_normal((n_studies, 25))
    labels = (reading > GRADE_BORDERS[0]).astype(np.int8) + (reading > GRADE_BORDERS[1]).astype(np.int8)
    uniform = rng.random((n_studies, 2))
    first = np.sum(uniform[:, :1] < model.late_start[None, :], axis=1)  # 0: L1/L2, 1: L2/L3, 2: L3/L4
    last = len(vocab.LEVELS) - 1 - np.sum(uniform[:, 1:] < model.early_end[None, :], axis=1)
    missing = rng.random((n_studies, 25)) < model.random_missing
    level_index = np.array([vocab.LEVELS.index(vocab.split_target_column(c)[1]) for c in vocab.TARGET_COLUMNS])
    subarticular = np.array([vocab.split_condition(vocab.split_target_column(c)[0]).base == vocab.SUBARTICULAR
                             for c in vocab.TARGET_COLUMNS])
    outside = (level_index[None, :] < first[:, None]) | (level_index[None, :] > last[:, None])
    uncovered = subarticular[None, :] & outside
    labels[missing | uncovered] = -1
    return StudyLabels(grade=grade, labels=labels, oracle=oracle_probabilities(grade, model.reader_noise_sd),
                       axial_levels=(), first_axial=first, last_axial=last)


def draw_study_labels(model: LabelModel, rng: np.random.Generator) -> StudyLabels:
    """Draw one study's latent severities, reader labels and missing targets from ``rng``."""
    drawn = draw_labels(model, rng, 1)
    first, last = int(drawn.first_axial[0]), int(drawn.last_axial[0])
    return StudyLabels(grade=drawn.grade[0], labels=drawn.labels[0], oracle=drawn.oracle[0],
                       axial_levels=vocab.LEVELS[first:last + 1], first_axial=drawn.first_axial,
                       last_axial=drawn.last_axial)


def labels_frame(study_ids: list[int], labels: np.ndarray) -> pd.DataFrame:
    """Wide labels (``train.csv`` layout: study_id + 25 columns of label strings, NaN where missing) of
    ``(n, 25)`` label codes (-1 missing)."""
    names = np.array(vocab.SEVERITY_LABELS, dtype=object)
    rows = np.asarray(labels, dtype=np.int8).reshape(-1, 25)
    cells = np.where(rows >= 0, names[np.clip(rows, 0, 2)], np.nan).astype(object)
    frame = pd.DataFrame(cells, columns=list(vocab.TARGET_COLUMNS))
    frame.insert(0, "study_id", np.asarray(study_ids, dtype=np.int64))
    return frame


def oracle_frame(study_ids: list[int], oracle: np.ndarray) -> pd.DataFrame:
    """``row_id, normal_mild, moderate, severe``: the oracle's ``(n, 25, 3)`` probabilities, 25 rows per study."""
    row_ids = [row_id for study_id in study_ids for row_id in vocab.study_row_ids(study_id)]
    values = np.asarray(oracle, dtype=float).reshape(-1, 3)
    frame = pd.DataFrame(values, columns=list(vocab.SEVERITIES))
    frame.insert(0, "row_id", row_ids)
    return frame
