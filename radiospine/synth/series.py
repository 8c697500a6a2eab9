"""Series geometry of a synthetic study: which series, their orientations, sizes, spacings and slice positions.

All series of a study share the patient frame (one FrameOfReferenceUID): a slice's geometry is its DICOM
ImagePositionPatient (LPS mm of the centre of pixel row 0, column 0), ImageOrientationPatient (row direction,
then column direction), PixelSpacing ``(row spacing, column spacing)``, SliceThickness and SpacingBetweenSlices.
:func:`stack_affine` turns a stack into the shared ``(col, row, slice, 1) -> LPS`` affine of
:mod:`radiospine.io.volume`.

Conventions (as in the real data):

* Sagittal: IOP about ``[0, 1, 0, 0, 0, -1]`` (columns run anterior -> posterior, rows head -> foot), slices step
  towards the patient's left and instance numbers grow with them (so the left foramina sit at higher instance
  numbers). The field of view puts the L3/L4 canal near ``x/width 0.535, y/height 0.534``.
* Axial: IOP about ``[1, 0, 0, 0, 1, 0]`` (columns run towards the patient's left, so the patient's left is on
  the image's right; rows run anterior -> posterior), slices step towards the feet with growing instance
  numbers. A series is either one continuous stack over its levels or one short stack per disc, tilted to the
  disc; either way the image centre sits just in front of the canal.
* Real mixes: image sizes, slice counts and spacings follow ``rsna_facts.json``; 16% of studies have 2-4 axial
  series; a few have two Sagittal T1 series.

Quirks (each drawn at its configured rate): instance numbers that do not start at 1, instance numbers running
against the anatomy, two stacks in one axial series, a study missing one sagittal series.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from radiospine import vocab
from radiospine.config import SynthConfig
from radiospine.geometry import image_plane_normal, make_affine, unit
from radiospine.synth.anatomy import Anatomy
from radiospine.synth.labels import load_facts

#: Acquisition parameters per sequence: (repetition time ms, echo time ms, inversion time ms or None).
SEQUENCE_TIMING: dict[str, tuple[float, float, float | None]] = {
    "T1": (550.0, 10.0, None), "T2": (3500.0, 100.0, None), "STIR": (4200.0, 45.0, 160.0),
}
#: Smallest and largest id a study or series gets (Kaggle's ids have 7 to 10 digits).
ID_RANGE: tuple[int, int] = (4_000_000, 4_294_967_295)


@dataclass(frozen=True, eq=False)
class StackPlan:
    """One stack of parallel slices.

    Attributes:
        orientation: ``(6,)`` ImageOrientationPatient (unit row direction, unit column direction).
        positions: ``(n, 3)`` ImagePositionPatient of each slice, in order along the stack.
        instance_numbers: ``(n,)`` InstanceNumber of each slice (same order as ``positions``).
        rows, cols: image size; ``pixel_spacing``: ``(row spacing, column spacing)`` mm.
        slice_thickness, spacing_between_slices: mm.
    """

    orientation: np.ndarray
    positions: np.ndarray
    instance_numbers: np.ndarray
    rows: int
    cols: int
    pixel_spacing: tuple[float, float]
    slice_thickness: float
    spacing_between_slices: float

    @property
    def n_slices(self) -> int:
        return len(self.positions)



@dataclass(frozen=True, eq=False)
class SeriesPlan:
    """One series: its identity, sequence and stacks."""

    series_id: int
    series_number: int
    description: str
    sequence: str
    stacks: tuple[StackPlan, ...]

    @property
    def timing(self) -> tuple[float, float, float | None]:
        return SEQUENCE_TIMING[self.sequence]


def stack_affine(stack: StackPlan) -> np.ndarray:
    """``(4, 4)`` ``(col, row, slice, 1)`` -> LPS affine of a stack (slice index in ``positions`` order)."""
    step = stack.positions[1] - stack.positions[0] if stack.n_slices > 1 else \
        image_plane_normal(stack.orientation) * stack.spacing_between_slices
    return make_affine(stack.positions[0], stack.orientation, stack.pixel_spacing, step)


def _quantile_draw(rng: np.random.Generator, table: dict) -> float:
    """Draw from a distribution given by quantiles ``{"0.05": v, ..., "min": v, "max": v}`` (piecewise linear)."""
    probabilities = [0.0] + [float(k) for k in table if k not in ("min", "max")] + [1.0]
    values = [table["min"]] + [table[k] for k in table if k not in ("min", "max")] + [table["max"]]
    return float(np.interp(rng.random(), probabilities, values))


def _draw_size(rng: np.random.Generator, description: str, small: bool) -> tuple[int, int]:
    """``(rows, cols)`` like the real series of this type (``small``: about 256 px)."""
    if small:
        return (256, 256) if description != vocab.SAGITTAL_T1 or rng.random() < 0.8 else (288, 256)
    table = load_facts()["image_rows_x_cols_top"][description]
    names = list(table)
    weights = np.array([table[n] for n in names])
    rows, cols = names[rng.choice(len(names), p=weights / weights.sum())].split("x")
    return int(rows), int(cols)


def _slab_positions(centre: np.ndarray, row_dir: np.ndarray, col_dir: np.ndarray, step: np.ndarray,
                    rows: int, cols: int, spacing: float, n: int) -> np.ndarray:
    """``(n, 3)`` IPPs of ``n`` slices centred on ``centre`` (LPS), stepping by ``step``."""
    offsets = (np.arange(n) - (n - 1) / 2.0)[:, None] * step[None, :]
    corner = -(cols - 1) / 2.0 * spacing * row_dir - (rows - 1) / 2.0 * spacing * col_dir
    return centre[None, :] + offsets + corner[None, :]


def _small_rotation(rng: np.random.Generator, sd_deg: float) -> np.ndarray:
    """A random rotation matrix of a few degrees (rotation vector ~ N(0, sd))."""
    vector = np.deg2rad(rng.normal(0.0, sd_deg, 3))
    angle = np.linalg.norm(vector)
    if angle == 0:
        return np.eye(3)
    k = vector / angle
    cross = np.array([[0, -k[2], k[1]], [k[2], 0, -k[0]], [-k[1], k[0], 0]])
    return np.eye(3) + np.sin(angle) * cross + (1 - np.cos(angle)) * cross @ cross


def _instance_numbers(n: int, reverse: bool, first: int) -> np.ndarray:
    numbers = np.arange(first, first + n)
    return numbers[::-1].copy() if reverse else numbers


def _thickness_and_step(rng: np.random.Generator, mean_step: float, sd_step: float) -> tuple[float, float]:
    step = float(np.clip(rng.normal(mean_step, sd_step), 3.0, 6.5))
    thickness = float(np.clip(np.round(step / rng.uniform(1.0, 1.2) * 2.0) / 2.0, 2.5, step))
    return thickness, step


def plan_sagittal(anatomy: Anatomy, rng: np.random.Generator, description: str, small: bool,
                  reverse: bool, first_instance: int, template: StackPlan | None = None) -> StackPlan:
    """A sagittal stack over the lumbar spine (``template``: reuse another series' slab and size)."""
    if template is not None:
        n = template.n_slices
        positions = template.positions[np.argsort(template.positions[:, 0])]  # right -> left
        return StackPlan(orientation=template.orientation, positions=positions[::-1].copy() if reverse else positions,
                         instance_numbers=np.arange(first_instance, first_instance + n),
                         rows=template.rows, cols=template.cols, pixel_spacing=template.pixel_spacing,
                         slice_thickness=template.slice_thickness,
                         spacing_between_slices=template.spacing_between_slices)
    rows, cols = _draw_size(rng, description, small)
    fov = float(np.clip(rng.normal(310.0, 20.0), 260.0, 380.0))
    spacing = fov / max(rows, cols)
    quantiles = load_facts()["slices_per_series_quantiles"][description]
    n = round(_quantile_draw(rng, quantiles))
    if small:
        n = int(np.clip(n - 5, 9, 13))
    thickness, step = _thickness_and_step(rng, 4.5, 0.45)
    rotation = _small_rotation(rng, 1.0)
    row_dir = rotation @ np.array([0.0, 1.0, 0.0])
    col_dir = rotation @ np.array([0.0, 0.0, -1.0])
    step_dir = rotation @ np.array([1.0, 0.0, 0.0])
    canal = anatomy.canal_point_lps("l3_l4")
    height_mm, width_mm = rows * spacing, cols * spacing
    centre = canal + (0.034 + rng.normal(0.0, 0.03)) * height_mm * np.array([0.0, 0.0, 1.0]) \
        - (0.035 + rng.normal(0.0, 0.03)) * width_mm * np.array([0.0, 1.0, 0.0])
    centre[0] = canal[0] + rng.normal(0.0, 2.0)
    positions = _slab_positions(centre, row_dir, col_dir, step * step_dir, rows, cols, spacing, n)
    if reverse:
        positions = positions[::-1].copy()
    return StackPlan(orientation=np.concatenate([row_dir, col_dir]), positions=positions,
                     instance_numbers=np.arange(first_instance, first_instance + n), rows=rows, cols=cols,
                     pixel_spacing=(spacing, spacing), slice_thickness=thickness, spacing_between_slices=step)


def _axial_frame(normal: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Row direction (towards the patient's left) and column direction (posterior) of a plane with this normal
    (``normal`` points to the head)."""
    row_dir = unit(np.array([1.0, 0.0, 0.0]) - normal[0] * normal)
    col_dir = unit(np.cross(normal, row_dir))
    return row_dir, col_dir


def _axial_centre(anatomy: Anatomy, level: str, rng: np.random.Generator) -> np.ndarray:
    """LPS in-plane centre of an axial image at a disc: just in front of the canal, jittered."""
    joint = anatomy.lumbar_joint_index(level)
    depth = float(np.interp(anatomy.joint_s[joint], anatomy.segment_s[::-1], anatomy.segment_depth[::-1]))
    return anatomy.point_lps(rng.normal(0.0, 3.0), depth - 0.5 + rng.normal(0.0, 3.0), float(anatomy.joint_s[joint]))


def plan_axial(anatomy: Anatomy, rng: np.random.Generator, levels: tuple[str, ...], design: str, small: bool,
               reverse: bool, first_instance: int, size: tuple[int, int], fov: float
               ) -> list[StackPlan]:
    """Axial stacks over ``levels`` (top to bottom).

    Args:
        design: ``"per_disc"`` (one short stack per disc, tilted to it), ``"continuous"`` (one stack over all
            the levels, tilted to their mean) or ``"two_stacks"`` (two continuous stacks, upper and lower).
        size, fov: image ``(rows, cols)`` and field of view (mm), shared by the series' stacks.
    """
    rows, cols = size
    spacing = fov / cols
    thickness, step = _thickness_and_step(rng, 4.2, 0.5)
    if design == "per_disc":
        groups = [(level,) for level in levels]
    elif design == "two_stacks":
        cut = len(levels) // 2
        groups = [levels[:cut], levels[cut:]]
    else:
        groups = [levels]
    stacks_geometry = []
    for group in groups:
        normals = np.array([anatomy.disc_normal_lps(level) for level in group])
        tilt_error = _small_rotation(rng, 1.5)
        normal = unit(tilt_error @ unit(normals.mean(axis=0)))
        row_dir, col_dir = _axial_frame(normal)
        centres = np.array([anatomy.disc_centre_lps(level) for level in group])
        in_plane = np.mean([_axial_centre(anatomy, level, rng) for level in group], axis=0)
        if len(group) == 1:
            n = int(rng.integers(4, 9)) if not small else 3
            along = float(centres[0] @ normal) + rng.normal(0.0, 0.6)
            top, bottom = along + (n - 1) / 2.0 * step, along - (n - 1) / 2.0 * step
        else:
            top = float(np.max(centres @ normal)) + rng.uniform(4.0, 35.0 if not small else 8.0)
            bottom = float(np.min(centres @ normal)) - rng.uniform(4.0, 22.0 if not small else 8.0)
            n = int(np.ceil((top - bottom) / step)) + 1
            if small:
                step = (top - bottom) / (n - 1)
        # slices from head to foot: centre of slice 0 at `top` along the normal
        centre_top = in_plane + (top - float(in_plane @ normal)) * normal
        positions = _slab_positions(centre_top - (n - 1) / 2.0 * step * normal, row_dir, col_dir, -step * normal,
                                    rows, cols, spacing, n)
        stacks_geometry.append((np.concatenate([row_dir, col_dir]), positions))
    if reverse:  # instance numbers from the feet up
        stacks_geometry = [(o, p[::-1].copy()) for o, p in stacks_geometry[::-1]]
    stacks, number = [], first_instance
    for orientation, positions in stacks_geometry:
        stacks.append(StackPlan(orientation=orientation, positions=positions,
                                instance_numbers=np.arange(number, number + len(positions)), rows=rows, cols=cols,
                                pixel_spacing=(spacing, spacing), slice_thickness=thickness,
                                spacing_between_slices=step))
        number += len(positions)
    return stacks


def _series_mix(facts: dict) -> tuple[np.ndarray, float]:
    """``(P(n_axial = 1, 2, 3, 4), P(two Sagittal T1))`` from the real series mix (studies missing a type
    excluded: those are the missing-series quirk)."""
    counts = facts["series_mix_per_study_counts"]
    axial = np.zeros(4)
    two_t1 = total = 0.0
    for key, count in counts.items():
        parts = dict(part.split("=") for part in key.split(","))
        if int(parts["sagT1"]) == 0 or int(parts["sagT2"]) == 0:
            continue
        axial[min(int(parts["axial"]), 4) - 1] += count
        two_t1 += count * (int(parts["sagT1"]) >= 2)
        total += count
    return axial / axial.sum(), two_t1 / total


def draw_id(rng: np.random.Generator) -> int:
    """A Kaggle-like positive integer id (7 to 10 digits)."""
    return int(rng.integers(ID_RANGE[0], ID_RANGE[1] + 1))


def plan_study_series(anatomy: Anatomy, axial_levels: tuple[str, ...], rng: np.random.Generator,
                      config: SynthConfig, small: bool) -> list[SeriesPlan]:
    """Every series of one study, in series-number order (sagittal T1, sagittal T2/STIR, axial ...).

    Args:
        axial_levels: the lumbar levels the axial series must cover (top to bottom).
        rng: the study's series generator (consumed in a fixed pattern for a given outcome).
    """
    quirks = config.quirks
    axial_mix, two_t1_rate = _series_mix(load_facts())
    n_axial = int(rng.choice(4, p=axial_mix)) + 1
    n_axial = min(n_axial, len(axial_levels))
    n_t1 = 2 if rng.random() < two_t1_rate else 1
    missing = None
    if rng.random() < quirks.missing_series_rate:
        missing = vocab.SAGITTAL_T1 if rng.random() < 2.0 / 3.0 else vocab.SAGITTAL_T2

    used_ids: set[int] = set()

    def new_id() -> int:
        while True:
            candidate = draw_id(rng)
            if candidate not in used_ids:
                used_ids.add(candidate)
                return candidate

    def instance_start() -> int:
        return int(rng.integers(2, 61)) if rng.random() < quirks.instance_offset_rate else 1

    def reversed_order() -> bool:
        return bool(rng.random() < quirks.reversed_order_rate)

    plans: list[SeriesPlan] = []
    t1_template = None
    for _copy in range(n_t1):
        stack = plan_sagittal(anatomy, rng, vocab.SAGITTAL_T1, small, reversed_order(), instance_start())
        t1_template = t1_template or stack
        plans.append(SeriesPlan(series_id=new_id(), series_number=0, description=vocab.SAGITTAL_T1, sequence="T1",
                                stacks=(stack,)))
    sequence = "STIR" if rng.random() < config.stir_fraction else "T2"
    shared = rng.random() < config.shared_sagittal_slab_rate
    stack = plan_sagittal(anatomy, rng, vocab.SAGITTAL_T2, small, reversed_order(), instance_start(),
                          template=t1_template if shared else None)
    plans.append(SeriesPlan(series_id=new_id(), series_number=0, description=vocab.SAGITTAL_T2, sequence=sequence,
                            stacks=(stack,)))

    # axial: contiguous groups of levels, one per series (neighbouring groups may share a level)
    cuts = np.sort(rng.choice(np.arange(1, len(axial_levels)), size=n_axial - 1, replace=False)) \
        if n_axial > 1 else np.array([], dtype=int)
    bounds = [0, *cuts.tolist(), len(axial_levels)]
    size = _draw_size(rng, vocab.AXIAL_T2, small)
    fov = float(np.clip(rng.normal(190.0, 18.0), 150.0, 240.0))
    for group_index in range(n_axial):
        levels = axial_levels[bounds[group_index]:bounds[group_index + 1]]
        if group_index > 0 and rng.random() < 0.3:  # overlap: repeat the level above in this series
            levels = (axial_levels[bounds[group_index] - 1], *levels)
        design = "per_disc" if rng.random() < config.per_disc_axial_rate else "continuous"
        if design == "continuous" and len(levels) >= 3 and rng.random() < quirks.two_stacks_rate:
            design = "two_stacks"
        if n_axial > 1 and rng.random() < 0.5:  # series of one study sometimes differ in size
            size = _draw_size(rng, vocab.AXIAL_T2, small)
        stacks = plan_axial(anatomy, rng, levels, design, small, reversed_order(), instance_start(), size, fov)
        plans.append(SeriesPlan(series_id=new_id(), series_number=0, description=vocab.AXIAL_T2, sequence="T2",
                                stacks=tuple(stacks)))

    if missing is not None:
        candidates = [p for p in plans if p.description == missing]
        plans = [p for p in plans if p is not candidates[0]]
    return [SeriesPlan(series_id=p.series_id, series_number=number, description=p.description,
                       sequence=p.sequence, stacks=p.stacks) for number, p in enumerate(plans, start=1)]
