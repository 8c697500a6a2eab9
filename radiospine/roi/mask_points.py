"""Points from segmentation masks: per intervertebral disc, its centre and the spinal canal point at the disc.

Input: a label mask on a stack's voxel grid (``(slice, row, col)``, the stack's ``(col, row, slice)`` -> LPS
affine, :mod:`radiospine.geometry`), with one label value for discs and one for the spinal canal (parameters:
masks differ in their numbering). Discs are not told apart by the mask: each 3-D connected component of the
disc label (face connectivity) larger than ``min_disc_mm3`` is one disc.

Per disc, in patient LPS mm:

* ``centre``: the centroid of the disc's voxels (when the centroid falls outside a curved or wedged disc, the
  disc voxel nearest to it, so the centre always lies in the disc);
* ``canal``: the centroid of the canal voxels in a slab ``canal_slab_mm`` thick around the disc's mid-plane (the
  plane through the centre, normal to the disc's thinnest principal axis) and within ``canal_radius_mm`` of the
  centre: the canal at the disc's level, centred left-right and anterior-posterior in the canal. ``NaN`` when no
  canal voxel lies there.

Discs are ordered from superior to inferior (decreasing LPS z of the centre). Which anatomical level each disc is
belongs to the caller (e.g. the volume importer's SPIDER mapping, :mod:`radiospine.volume_import`).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from radiospine.geometry import voxel_to_patient

#: The columns of :func:`disc_points`' table (``*_x/y/z`` LPS mm; ``*_slice/row/col`` fractional voxels).
DISC_POINT_COLUMNS: tuple[str, ...] = (
    "disc_index", "component", "voxels", "volume_mm3", "touches_edge",
    "centre_x", "centre_y", "centre_z", "centre_slice", "centre_row", "centre_col",
    "normal_x", "normal_y", "normal_z", "thickness_mm",
    "canal_voxels", "canal_x", "canal_y", "canal_z", "canal_slice", "canal_row", "canal_col",
)


def disc_points(mask: np.ndarray, affine: np.ndarray, *, disc_label: int, canal_label: int,
                min_disc_mm3: float = 100.0, canal_slab_mm: float = 2.0, canal_radius_mm: float = 40.0
                ) -> pd.DataFrame:
    """One row per disc component, superior to inferior (see the module docstring and :data:`DISC_POINT_COLUMNS`).

    Args:
        mask: ``(slice, row, col)`` integer labels.
        affine: the mask's ``(col, row, slice, 1)`` -> LPS affine.
        disc_label, canal_label: the mask values of discs and of the spinal canal.
        min_disc_mm3: smaller disc components (specks of the segmentation) are ignored.
        canal_slab_mm: thickness of the slab around the disc's mid-plane in which canal voxels are averaged.
        canal_radius_mm: canal voxels farther than this from the disc centre are not at this disc.

    ``disc_index`` counts the kept discs from 0 at the top; ``component`` is the ``scipy.ndimage.label`` number;
    ``touches_edge`` says the disc reaches the border of the image plane (it may be cut off; reaching the first
    or last slice is common in a stack restricted to the midline and is not counted); ``normal_*`` is the disc's
    thinnest axis (pointing to the head), ``thickness_mm`` four standard deviations of the disc along it.
    """
    from scipy import ndimage

    mask = np.asarray(mask)
    affine = np.asarray(affine, dtype=float)
    if mask.ndim != 3:
        raise ValueError(f"mask must be (slice, row, col), got shape {mask.shape}")
    voxel_mm3 = float(abs(np.linalg.det(affine[:3, :3])))
    components, n_components = ndimage.label(mask == disc_label)
    canal_src = np.argwhere(mask == canal_label).astype(float)
    canal_lps = voxel_to_patient(affine, canal_src) if len(canal_src) else np.zeros((0, 3))
    objects = ndimage.find_objects(components)
    rows = []
    for number in range(1, n_components + 1):
        box = objects[number - 1]
        local = np.argwhere(components[box] == number)
        if local.shape[0] * voxel_mm3 < min_disc_mm3:
            continue
        src = local + np.array([s.start for s in box], dtype=float)
        lps = voxel_to_patient(affine, src)
        centre = lps.mean(axis=0)
        _, axes = np.linalg.eigh(np.cov((lps - centre).T) if len(lps) > 3 else np.eye(3))
        centre_src = src.mean(axis=0)
        nearest_voxel = tuple(np.round(centre_src).astype(int) - np.array([s.start for s in box]))
        inside_box = all(0 <= v < s.stop - s.start for v, s in zip(nearest_voxel, box))
        if not (inside_box and components[box][nearest_voxel] == number):
            # a curved or wedged disc whose centroid falls outside it: its voxel nearest the centroid
            closest = int(np.argmin(np.linalg.norm(lps - centre, axis=1)))
            centre, centre_src = lps[closest], src[closest]
        normal = axes[:, 0] if axes[2, 0] >= 0 else -axes[:, 0]
        thickness = 4.0 * float(np.std((lps - centre) @ normal))
        touches = any(s.start == 0 or s.stop == size for s, size in zip(box[1:], mask.shape[1:]))
        canal = np.full(3, np.nan)
        n_canal = 0
        if len(canal_lps):
            offset = canal_lps - centre
            near = (np.abs(offset @ normal) <= canal_slab_mm / 2) & (np.linalg.norm(offset, axis=1) <= canal_radius_mm)
            n_canal = int(near.sum())
            if n_canal:
                canal = canal_lps[near].mean(axis=0)
        canal_src_point = (np.linalg.solve(affine[:3, :3], canal - affine[:3, 3])[::-1] if n_canal
                           else np.full(3, np.nan))
        rows.append(dict(
            component=number, voxels=int(local.shape[0]), volume_mm3=local.shape[0] * voxel_mm3,
            touches_edge=bool(touches),
            centre_x=centre[0], centre_y=centre[1], centre_z=centre[2],
            centre_slice=centre_src[0], centre_row=centre_src[1], centre_col=centre_src[2],
            normal_x=normal[0], normal_y=normal[1], normal_z=normal[2], thickness_mm=thickness,
            canal_voxels=n_canal, canal_x=canal[0], canal_y=canal[1], canal_z=canal[2],
            canal_slice=canal_src_point[0], canal_row=canal_src_point[1], canal_col=canal_src_point[2]))
    table = pd.DataFrame(rows, columns=[c for c in DISC_POINT_COLUMNS if c != "disc_index"])
    table = table.sort_values("centre_z", ascending=False, kind="stable").reset_index(drop=True)
    table.insert(0, "disc_index", np.arange(len(table), dtype=np.int64))
    return table
