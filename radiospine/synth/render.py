"""Render the slices of a planned series: tissue at the LPS position of every pixel -> MR signal -> stored values.

Per slice:

1. the LPS position of every pixel centre (from the slice's DICOM geometry, :func:`~radiospine.synth.series.
   stack_affine`), on a grid no finer than ``render_spacing_mm`` (finer images are interpolated from it, as
   scanners interpolate their reconstructions);
2. the tissue there (:meth:`~radiospine.synth.anatomy.Anatomy.tissues`), turned into signal by the sequence's
   contrast (T1: fat bright, CSF dark; T2: CSF bright, fat fairly bright; STIR: CSF bright, fat dark), averaged
   over ``partial_volume_samples`` sub-slices across the slice thickness (partial volume) near the spine;
3. a bias field (the posterior surface coil: signal falls off forward from the back, plus a gentle gradient);
4. Rician noise, scaled with the voxel volume, then a gain to 12-bit stored values.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from radiospine.geometry import image_plane_normal, slice_origin
from radiospine.synth.anatomy import TEXTURE_AMPLITUDE, TISSUES, Anatomy
from radiospine.synth.series import StackPlan, stack_affine

#: Signal of each tissue (TISSUES order) per sequence, relative to fat on T1.
CONTRAST: dict[str, np.ndarray] = {
    #                  air   fat   musc  visc  skin  vess  cort  marr  annu  nucl  csf   neur  liga  joint fibr
    "T1": np.array([0.00, 1.00, 0.36, 0.42, 0.50, 0.06, 0.05, 0.72, 0.30, 0.36, 0.14, 0.42, 0.16, 0.22, 0.30]),
    "T2": np.array([0.00, 0.66, 0.22, 0.42, 0.40, 0.05, 0.04, 0.48, 0.13, 0.82, 1.00, 0.30, 0.10, 0.75, 0.20]),
    "STIR": np.array([0.00, 0.07, 0.20, 0.38, 0.35, 0.04, 0.04, 0.14, 0.14, 0.78, 1.00, 0.30, 0.10, 0.75, 0.18]),
}

#: Voxel volume (mm3) at which ``noise_sd`` applies; smaller voxels are noisier (noise ~ 1 / sqrt(volume)).
_REFERENCE_VOXEL_MM3 = 0.7 * 0.7 * 4.0
#: Largest stored value (12-bit data).
MAX_STORED = 4095


@dataclass(frozen=True)
class SeriesAppearance:
    """What makes one series look the way it does (drawn per series).

    Attributes:
        contrast: ``(n_tissues,)`` signal per tissue (the sequence's contrast with a study's jitter).
        gain: stored value of signal 1.0.
        noise_sd: Rician noise sd (signal units) for the reference voxel.
        gradient: ``(3,)`` relative bias-field gradient per mm along LPS.
        coil_falloff_mm: e-folding depth of the posterior coil's sensitivity.
    """

    contrast: np.ndarray
    gain: float
    noise_sd: float
    gradient: np.ndarray
    coil_falloff_mm: float


def draw_appearance(rng: np.random.Generator, sequence: str, noise_sd: float) -> SeriesAppearance:
    """A series' contrast jitter, gain, noise and bias field."""
    contrast = CONTRAST[sequence] * np.clip(rng.normal(1.0, 0.04, len(TISSUES)), 0.85, 1.15)
    return SeriesAppearance(contrast=contrast, gain=float(rng.uniform(900.0, 2400.0)),
                            noise_sd=float(noise_sd * rng.uniform(0.7, 1.3)),
                            gradient=rng.normal(0.0, 0.0007, 3), coil_falloff_mm=float(rng.uniform(110.0, 190.0)))


def _upsample_axis(image: np.ndarray, n_out: int, axis: int) -> np.ndarray:
    """Linear interpolation of ``image`` along ``axis`` from its samples (spanning the same extent) to ``n_out``."""
    n_in = image.shape[axis]
    if n_in == n_out:
        return image
    position = np.linspace(0.0, n_in - 1.0, n_out)
    low = np.minimum(np.floor(position).astype(int), n_in - 2)
    weight = (position - low).astype(image.dtype)
    shape = [1, 1]
    shape[axis] = n_out
    weight = weight.reshape(shape)
    return np.take(image, low, axis=axis) * (1 - weight) + np.take(image, low + 1, axis=axis) * weight


def _grid(origin: np.ndarray, row_step: np.ndarray, col_step: np.ndarray, row_index: np.ndarray,
          col_index: np.ndarray) -> np.ndarray:
    """``(len(row_index) * len(col_index), 3)`` float32 points ``origin + r * row_step + c * col_step``."""
    grid = (origin.astype(np.float32)[None, None, :]
            + row_index.astype(np.float32)[:, None, None] * row_step.astype(np.float32)[None, None, :]
            + col_index.astype(np.float32)[None, :, None] * col_step.astype(np.float32)[None, None, :])
    return grid.reshape(-1, 3)


def _internal_size(n: int, spacing: float, render_spacing_mm: float) -> int:
    """Samples rendered along an image axis of ``n`` pixels: all of them, or fewer for fine pixels."""
    if spacing >= render_spacing_mm:
        return n
    return max(2, round((n - 1) * spacing / render_spacing_mm) + 1)


#: Texture and bias field are smooth: they are evaluated on every ``_SMOOTH_STRIDE``-th rendered sample.
_SMOOTH_STRIDE = 4


def render_slice(anatomy: Anatomy, stack: StackPlan, index: int, appearance: SeriesAppearance,
                 rng: np.random.Generator, *, partial_volume_samples: int, render_spacing_mm: float) -> np.ndarray:
    """Stored values ``(rows, cols)`` uint16 of slice ``index`` (in ``stack.positions`` order) of a stack."""
    rows, cols = stack.rows, stack.cols
    row_spacing, col_spacing = stack.pixel_spacing
    n_rows = _internal_size(rows, row_spacing, render_spacing_mm)
    n_cols = _internal_size(cols, col_spacing, render_spacing_mm)
    # the slice's pixel geometry, moved into the anatomical frame once (not point by point)
    affine = stack_affine(stack)
    to_anatomical = anatomy.patient_rotation.T
    origin = anatomy.lps_to_anatomical(slice_origin(affine, index)[None, :])[0]
    row_step, col_step = to_anatomical @ affine[:3, 1], to_anatomical @ affine[:3, 0]
    normal = to_anatomical @ image_plane_normal(stack.orientation)
    row_index = np.linspace(0.0, rows - 1.0, n_rows)
    col_index = np.linspace(0.0, cols - 1.0, n_cols)
    points = _grid(origin, row_step, col_step, row_index, col_index)

    coarse_rows, coarse_cols = row_index[::_SMOOTH_STRIDE], col_index[::_SMOOTH_STRIDE]
    coarse = _grid(origin, row_step, col_step, coarse_rows, coarse_cols)
    texture = anatomy.texture(coarse).reshape(len(coarse_rows), len(coarse_cols)).astype(np.float32)
    texture = _upsample_axis(_upsample_axis(texture, n_rows, 0), n_cols, 1).reshape(-1)
    falloff = np.exp(-np.clip(anatomy.distance_from_back(coarse), 0.0, None) / appearance.coil_falloff_mm)
    bias = (0.45 + 0.55 * falloff) * (1.0 + np.einsum("ni,i->n", coarse - anatomy.patient_origin @ anatomy.
                                                            patient_rotation, to_anatomical @ appearance.gradient))
    bias = bias.reshape(len(coarse_rows), len(coarse_cols)).astype(np.float32)
    bias = _upsample_axis(_upsample_axis(bias, n_rows, 0), n_cols, 1)

    contrast = appearance.contrast.astype(np.float32)
    textured = TEXTURE_AMPLITUDE

    def signal_of(tissue: np.ndarray, grain: np.ndarray) -> np.ndarray:
        return contrast[tissue] * (1.0 + textured[tissue] * grain)

    background = anatomy.background(points)
    tissue = anatomy.tissues_anatomical(points, background)
    signal = signal_of(tissue, texture)
    # partial volume across the slice thickness where the anatomy is fine (the spine's box)
    if partial_volume_samples > 1:
        low, high = anatomy.spine_box_anatomical
        margin = stack.slice_thickness
        near = np.flatnonzero(np.all((points >= low - margin) & (points <= high + margin), axis=1))
        offsets = ((np.arange(partial_volume_samples) + 0.5) / partial_volume_samples - 0.5) * stack.slice_thickness
        total = np.zeros(near.size, dtype=np.float32)
        for offset in offsets:
            if abs(offset) < 1e-9:
                total += signal[near]
            else:
                shifted = points[near] + np.float32(offset) * normal.astype(np.float32)
                total += signal_of(anatomy.tissues_anatomical(shifted, background[near]), texture[near])
        signal[near] = total / partial_volume_samples

    image = signal.reshape(n_rows, n_cols) * bias
    image = _upsample_axis(_upsample_axis(image, rows, 0), cols, 1)

    voxel_mm3 = row_spacing * col_spacing * stack.slice_thickness
    sd = appearance.noise_sd * np.sqrt(_REFERENCE_VOXEL_MM3 / voxel_mm3)
    noise = rng.standard_normal((2, rows, cols), dtype=np.float32) * np.float32(sd)
    magnitude = np.sqrt((image + noise[0]) ** 2 + noise[1] ** 2)
    return np.clip(np.rint(magnitude * appearance.gain), 0, MAX_STORED).astype(np.uint16)
