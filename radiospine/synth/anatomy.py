"""A synthetic lumbar spine in patient LPS millimetres, with the latent severities acting on its anatomy.

Frames
------
* **LPS** (DICOM patient frame): +x patient's left, +y posterior, +z head.
* **anatomical**: the same axes for a patient lying perfectly straight; ``lps = R_patient @ anatomical + origin``
  (a small random rotation and a table position). Its origin is the centre of the L3 body.
* **straight**: the spine unbent, coordinates ``q = (u, a, s)``: ``u`` lateral (+ patient's left), ``a``
  antero-posterior (+ posterior, 0 on the vertebral bodies' centre line), ``s`` along the spine (+ head, 0 at
  the centre of L3). Every structure is drawn here as a simple shape (bodies are super-ellipse cylinders,
  the dural sac an elliptic tube, the canal's narrowing a bump centred on a disc ...).

The bend: each vertebra (*segment*) maps rigidly straight -> anatomical, ``T_k(q) = R_k q + t_k`` with
``R_k`` a rotation about the lateral axis by the segment's tilt ``phi_k``. Neighbouring segments agree on the
lateral line through the centre of the disc between them (the *joint*), and a point belongs to the segment on
its side of the joint's bisector plane. Straight content that is symmetric about a disc's mid-plane is
therefore continuous across the bend, and the disc opens into a wedge: the lordotic discs are taller in
front than behind (L5/S1 about 14 vs 6 mm), as in real spines.

Severity is anatomy
-------------------
Each lumbar level's three severities (canal, left/right foramen, left/right subarticular recess) are the
latent grade-scale values ``g`` of :mod:`radiospine.synth.labels` (1 = moderate border, 2 = severe border),
turned into a narrowing index ``m = softplus(g)`` (about 0 for normal discs, about ``g`` above 0.5), which
acts on the anatomy and on nothing else:

* canal (Lee): the dural sac's antero-posterior diameter at the disc shrinks by ``0.26 m`` of its normal
  value (about 13 mm: 9.6 mm at the moderate border, 6.2 at the severe one), 60% from a central disc bulge
  and 40% from ligamentum flavum hypertrophy, and the sac narrows sideways; the cauda equina roots keep their
  size, so they crowd together and the CSF between them disappears;
* foramen (parasagittal T1): the fat around the exiting root loses ``0.27 m`` of its antero-posterior
  half-width and ``0.12 m`` of its height; once the fat is thinner than the root, the root is flattened;
* subarticular recess (axial at the disc): the recess height (normally about 5.5 mm) loses ``0.3 m`` of
  itself, half from a paracentral disc protrusion and half from the superior articular process moving in;
  the traversing root is flattened once the recess is under about 3.5 mm.

Nuisance variation (body size, disc hydration, tilt, fat) is drawn independently of the severities.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field

import numpy as np
from scipy.ndimage import gaussian_filter, map_coordinates

from radiospine import vocab

# --- tissues ---------------------------------------------------------------------------------------------

#: Tissue classes, indexed by the uint8 codes :meth:`Anatomy.tissues` returns.
TISSUES: tuple[str, ...] = (
    "air", "fat", "muscle", "viscera", "skin", "vessel", "cortex", "marrow", "annulus", "nucleus", "csf",
    "neural", "ligament", "joint_fluid", "fibrous",
)
AIR, FAT, MUSCLE, VISCERA, SKIN, VESSEL, CORTEX, MARROW, ANNULUS, NUCLEUS, CSF, NEURAL, LIGAMENT, JOINT, \
    FIBROUS = range(len(TISSUES))

# --- nominal sizes (mm) ------------------------------------------------------------------------------------

#: Segments from top to bottom: (name, body height, AP half-depth, lateral half-width).
_SEGMENTS: tuple[tuple[str, float, float, float], ...] = (
    ("T9", 20.0, 13.0, 15.5), ("T10", 21.0, 13.5, 16.0), ("T11", 22.0, 14.0, 17.0), ("T12", 23.0, 15.0, 19.0),
    ("L1", 26.5, 16.0, 21.0), ("L2", 27.5, 16.5, 22.0), ("L3", 28.5, 17.0, 23.0), ("L4", 28.5, 17.5, 24.0),
    ("L5", 27.5, 17.5, 25.0), ("S1", 28.0, 16.0, 24.0), ("S2", 22.0, 12.0, 18.0), ("S3", 18.0, 9.0, 14.0),
    ("S4", 14.0, 7.0, 10.0),
)
#: Joints between consecutive segments: (mid-plane disc height, tilt change going down in degrees, fused).
#: Positive tilt changes are lordotic (the disc opens in front).
_JOINTS: tuple[tuple[float, float, bool], ...] = (
    (5.0, -2.0, False), (5.5, -3.0, False), (6.0, -3.0, False), (7.0, -1.0, False),   # T9/T10 .. T12/L1
    (8.0, 3.0, False), (9.0, 5.0, False), (10.0, 7.0, False), (10.5, 10.0, False), (10.0, 14.0, False),
    (3.0, -10.0, True), (3.0, -14.0, True), (3.0, -16.0, True),                       # S1/S2 .. S3/S4
)
_REFERENCE_SEGMENT = "L3"
_LUMBAR_JOINT_NAMES = {"L1": "l1_l2", "L2": "l2_l3", "L3": "l3_l4", "L4": "l4_l5", "L5": "l5_s1"}

#: Severity -> anatomy (see the module docstring).
CANAL_NARROWING_PER_INDEX = 0.26
FORAMEN_AP_LOSS_PER_INDEX = 0.27
FORAMEN_HEIGHT_LOSS_PER_INDEX = 0.12
RECESS_LOSS_PER_INDEX = 0.30
_SOFTPLUS_SHARPNESS = 3.0


def narrowing_index(grade: np.ndarray | float) -> np.ndarray:
    """``softplus(g)`` with sharpness 3: about 0 below g = -0.5, about ``g`` above 0.5; monotone."""
    grade = np.asarray(grade, dtype=float)
    return np.logaddexp(0.0, _SOFTPLUS_SHARPNESS * grade) / _SOFTPLUS_SHARPNESS


def _rotation_x(angle_rad: float) -> np.ndarray:
    """Rotation about +x: (0, 0, 1) -> (0, -sin, cos) (a positive angle tilts the head end anteriorly)."""
    c, s = np.cos(angle_rad), np.sin(angle_rad)
    return np.array([[1.0, 0.0, 0.0], [0.0, c, -s], [0.0, s, c]])


def _rotation(yaw_deg: float, roll_deg: float, pitch_deg: float) -> np.ndarray:
    """Small patient rotation: about z (yaw), y (roll) and x (pitch), in degrees."""
    yaw, roll, pitch = np.deg2rad([yaw_deg, roll_deg, pitch_deg])
    rz = np.array([[np.cos(yaw), -np.sin(yaw), 0], [np.sin(yaw), np.cos(yaw), 0], [0, 0, 1]])
    ry = np.array([[np.cos(roll), 0, np.sin(roll)], [0, 1, 0], [-np.sin(roll), 0, np.cos(roll)]])
    return rz @ ry @ _rotation_x(pitch)


@dataclass(frozen=True)
class LevelAnatomy:
    """What one lumbar level's severities did to its anatomy (mm); sides are the patient's.

    Attributes:
        level: ``"l4_l5"`` ...
        canal_index, foramen_index, recess_index: narrowing indices ``m`` (``foramen_index`` and
            ``recess_index`` are ``{"left": m, "right": m}``).
        sac_ap_mm: dural sac antero-posterior diameter at the disc's centre (normal value minus narrowing).
        sac_ap_normal_mm: the same without narrowing (the study's normal sac at this level).
        foramen_fat_ap_mm, foramen_height_mm: full antero-posterior width and height of the foraminal fat.
        recess_height_mm: lateral recess antero-posterior height at the traversing root.
        nucleus_fraction: disc hydration nuisance (fraction of the disc that is bright nucleus; not a label).
    """

    level: str
    canal_index: float
    foramen_index: dict[str, float]
    recess_index: dict[str, float]
    sac_ap_mm: float
    sac_ap_normal_mm: float
    foramen_fat_ap_mm: dict[str, float]
    foramen_height_mm: dict[str, float]
    recess_height_mm: dict[str, float]
    nucleus_fraction: float


@dataclass(frozen=True, eq=False)
class Anatomy:
    """One study's spine. See the module docstring for frames; all lengths in mm.

    Attributes:
        patient_rotation: ``(3, 3)`` anatomical -> LPS rotation; ``patient_origin`` ``(3,)`` LPS of the
            anatomical origin (centre of L3).
        segment_names: ``(n_seg,)`` "T9" .. "S4", top to bottom.
        segment_s, segment_height, segment_depth, segment_width: ``(n_seg,)`` straight-space centre ``s``,
            body height, AP half-depth, lateral half-width.
        segment_rotation: ``(n_seg, 3, 3)``, ``segment_translation``: ``(n_seg, 3)``: ``T_k``.
        joint_s, joint_height: ``(n_seg - 1,)`` straight ``s`` of each disc's mid-plane and its mid height.
        joint_fused: ``(n_seg - 1,)`` bool (sacral joints).
        joint_plane_point, joint_plane_normal: ``(n_seg - 1, 3)`` anatomical bisector planes (normal -> head).
        levels: the five lumbar levels' :class:`LevelAnatomy`, in vocab.LEVELS order.
        sac_ap, sac_width: study's normal dural sac diameters; ``conus_s``: straight s of the conus tip.
        body: outline of the trunk (anatomical frame): back and front skin offsets from the spine's centre line
            (``a``), lateral half-width, subcutaneous fat thickness.
        texture_grid: ``_TEXTURE_SHAPE`` float32 smooth unit-variance noise on a lattice in the anatomical frame.
        roots: ``(n_roots, 4)``: normalised sac position (fu, fa), radius, straight s below which the root
            has left the sac.
    """

    patient_rotation: np.ndarray
    patient_origin: np.ndarray
    segment_names: tuple[str, ...]
    segment_s: np.ndarray
    segment_height: np.ndarray
    segment_depth: np.ndarray
    segment_width: np.ndarray
    segment_rotation: np.ndarray
    segment_translation: np.ndarray
    joint_s: np.ndarray
    joint_height: np.ndarray
    joint_fused: np.ndarray
    joint_plane_point: np.ndarray
    joint_plane_normal: np.ndarray
    levels: tuple[LevelAnatomy, ...]
    sac_ap: float
    sac_width: float
    conus_s: float
    body: dict[str, float]
    texture_grid: np.ndarray
    roots: np.ndarray
    _profiles: dict[str, np.ndarray] = field(repr=False)
    _joint_params: tuple[dict, ...] = field(repr=False)

    # --- frames ------------------------------------------------------------------------------------------
    def lps_to_anatomical(self, points_lps: np.ndarray) -> np.ndarray:
        """``(n, 3)`` LPS -> ``(n, 3)`` anatomical."""
        return np.einsum("ni,ij->nj", np.asarray(points_lps, dtype=float) - self.patient_origin, self.patient_rotation)

    def anatomical_to_lps(self, points: np.ndarray) -> np.ndarray:
        """``(n, 3)`` anatomical -> ``(n, 3)`` LPS."""
        return np.asarray(points, dtype=float) @ self.patient_rotation.T + self.patient_origin

    def segment_of(self, points: np.ndarray) -> np.ndarray:
        """``(n,)`` int segment index of ``(n, 3)`` anatomical points (by the joints' bisector planes)."""
        offsets = np.sum(self.joint_plane_point * self.joint_plane_normal, axis=1)
        y, z = points[:, 1], points[:, 2]  # the planes contain the lateral axis (their normals have no x)
        segment = np.zeros(len(points), dtype=np.intp)
        if not len(points):
            return segment
        corners = np.array([[y0, z0] for y0 in (y.min(), y.max()) for z0 in (z.min(), z.max())], dtype=float)
        for (_, ny, nz), offset in zip(self.joint_plane_normal, offsets):
            below = corners @ np.array([ny, nz]) < offset
            if below.all():  # every point is below this plane (the points' bounding box is)
                segment += 1
            elif below.any():
                segment += y * float(ny) + z * float(nz) < float(offset)
        return segment

    def straight_to_lps(self, points_straight: np.ndarray, segment: int | np.ndarray) -> np.ndarray:
        """``(n, 3)`` straight ``(u, a, s)`` of segment ``segment`` (one index or ``(n,)``) -> LPS."""
        q = np.atleast_2d(np.asarray(points_straight, dtype=float))
        segment = np.broadcast_to(np.asarray(segment), (len(q),))
        anatomical = np.einsum("nij,nj->ni", self.segment_rotation[segment], q) + self.segment_translation[segment]
        return self.anatomical_to_lps(anatomical)

    def lps_to_straight(self, points_lps: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(n, 3)`` LPS -> ``((n, 3) straight (u, a, s), (n,) segment index)``."""
        return self._anatomical_to_straight(self.lps_to_anatomical(np.atleast_2d(points_lps)))

    def _anatomical_to_straight(self, points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Inverse of the segments' maps; the rotations are about x, so only (y, z) turn."""
        segment = self.segment_of(points)
        dtype = points.dtype if points.dtype == np.float32 else np.float64
        local = points - self.segment_translation.astype(dtype)[segment]
        cos = self.segment_rotation[:, 1, 1].astype(dtype)[segment]
        sin = self.segment_rotation[:, 2, 1].astype(dtype)[segment]
        q = np.empty_like(local)
        q[:, 0] = local[:, 0]
        q[:, 1] = cos * local[:, 1] + sin * local[:, 2]
        q[:, 2] = -sin * local[:, 1] + cos * local[:, 2]
        return q, segment

    def _segment_at(self, s: float) -> int:
        """Index of the segment whose straight span holds ``s`` (the one above a joint's mid-plane)."""
        return int(np.sum(self.joint_s > s))

    def point_lps(self, u: float, a: float, s: float) -> np.ndarray:
        """``(3,)`` LPS of the straight point ``(u, a, s)``, mapped by the segment whose span holds ``s``."""
        return self.straight_to_lps(np.array([[u, a, s]]), self._segment_at(s))[0]

    # --- landmarks ----------------------------------------------------------------------------------------
    def lumbar_joint_index(self, level: str) -> int:
        """Index into the joint arrays of a lumbar level (``"l4_l5"``)."""
        upper = {v: k for k, v in _LUMBAR_JOINT_NAMES.items()}[level]
        return self.segment_names.index(upper)

    def disc_centre_lps(self, level: str) -> np.ndarray:
        """``(3,)`` LPS centre of a lumbar disc."""
        return self.point_lps(0.0, 0.0, float(self.joint_s[self.lumbar_joint_index(level)]))

    def disc_normal_lps(self, level: str) -> np.ndarray:
        """``(3,)`` unit LPS normal of a lumbar disc's mid-plane (towards the head)."""
        return self.patient_rotation @ self.joint_plane_normal[self.lumbar_joint_index(level)]

    def _on_disc_plane(self, level: str, u: float, a: float) -> np.ndarray:
        """``(3,)`` LPS of the point at straight ``(u, a)`` on a lumbar disc's mid-plane (its bisector plane,
        where the upper and lower vertebrae's frames meet), in the upper vertebra's frame."""
        j = self.lumbar_joint_index(level)
        normal = self.segment_rotation[j].T @ self.joint_plane_normal[j]  # in the upper segment's straight frame
        s = float(self.joint_s[j]) - a * normal[1] / normal[2]
        return self.straight_to_lps(np.array([[u, a, s]]), j)[0]

    def canal_point_lps(self, level: str) -> np.ndarray:
        """``(3,)`` LPS centre of the dural sac on a lumbar disc's mid-plane (where a canal label is marked)."""
        joint = self._joint_params[self.lumbar_joint_index(level)]
        return self._on_disc_plane(level, 0.0, joint["sac_centre_a"])

    def foramen_point_lps(self, level: str, side: str) -> np.ndarray:
        """``(3,)`` LPS centre of the foraminal fat on ``side`` (``"left"``: +u)."""
        foramen = self._joint_params[self.lumbar_joint_index(level)]["foramen"][side]
        return self.point_lps(foramen["u"], foramen["a"], foramen["s"])

    def recess_point_lps(self, level: str, side: str) -> np.ndarray:
        """``(3,)`` LPS of the traversing root in the lateral recess at the disc's mid-plane."""
        recess = self._joint_params[self.lumbar_joint_index(level)]["recess"][side]
        return self._on_disc_plane(level, recess["u_root"], recess["a_mid"])

    def spine_extent_lps(self) -> tuple[np.ndarray, np.ndarray]:
        """``((3,), (3,))`` LPS bounding box of the straight region drawn by :meth:`tissues`."""
        return self._box_corners_lps.min(axis=0), self._box_corners_lps.max(axis=0)

    @functools.cached_property
    def _box_corners_anatomical(self) -> np.ndarray:
        """``(n, 3)`` anatomical corners of every segment's share of the straight box."""
        corners = []
        for k in range(len(self.segment_s)):
            top = self.joint_s[k - 1] if k > 0 else self.segment_s[0] + 40.0
            bottom = self.joint_s[k] if k < len(self.joint_s) else self.segment_s[-1] - 40.0
            for cu in _STRAIGHT_BOX_U:
                for ca in _STRAIGHT_BOX_A:
                    for cs in (bottom - 25, top + 25):
                        corners.append(self.segment_rotation[k] @ np.array([cu, ca, cs]) + self.segment_translation[k])
        return np.array(corners)

    @functools.cached_property
    def _box_corners_lps(self) -> np.ndarray:
        return self.anatomical_to_lps(self._box_corners_anatomical)

    # --- tissues ------------------------------------------------------------------------------------------
    def tissues(self, points_lps: np.ndarray) -> np.ndarray:
        """``(n,)`` uint8 tissue code (:data:`TISSUES`) at each of ``(n, 3)`` LPS points."""
        anatomical = self.lps_to_anatomical(points_lps)
        return self.tissues_anatomical(anatomical, self.background(anatomical))

    def tissues_anatomical(self, points: np.ndarray, background: np.ndarray) -> np.ndarray:
        """``(n,)`` uint8 tissue codes at ``(n, 3)`` anatomical points, given their :meth:`background`
        (deep tissue near the spine is repainted by the spine's structures; skin and subcutaneous fat stay)."""
        tissue = background.copy()
        low, high = self.spine_box_anatomical
        candidates = np.flatnonzero((points[:, 0] >= low[0]) & (points[:, 0] <= high[0]) & (points[:, 1] >= low[1])
                                    & (points[:, 1] <= high[1]) & (points[:, 2] >= low[2]) & (points[:, 2] <= high[2])
                                    & (tissue != AIR) & (tissue != SKIN) & (tissue != FAT))
        if candidates.size:
            q, _ = self._anatomical_to_straight(points[candidates])
            inside = (q[:, 0] > _STRAIGHT_BOX_U[0]) & (q[:, 0] < _STRAIGHT_BOX_U[1]) \
                & (q[:, 1] > _STRAIGHT_BOX_A[0]) & (q[:, 1] < _STRAIGHT_BOX_A[1])
            if inside.any():
                self._paint_spine(_Canvas(q[inside], candidates[inside], tissue))
        return tissue

    @functools.cached_property
    def spine_box_anatomical(self) -> tuple[np.ndarray, np.ndarray]:
        """``((3,), (3,))`` anatomical bounding box of the region the spine's structures are drawn in."""
        return self._box_corners_anatomical.min(axis=0), self._box_corners_anatomical.max(axis=0)

    def texture(self, points: np.ndarray) -> np.ndarray:
        """``(n,)`` smooth random field (unit sd, about 5 mm grain) at ``(n, 3)`` anatomical points; a tissue's
        signal is scaled by ``1 + TEXTURE_AMPLITUDE[tissue] * texture``."""
        index = (np.asarray(points, dtype=float) - _TEXTURE_ORIGIN) / _TEXTURE_SPACING_MM
        return map_coordinates(self.texture_grid, index.T, order=1, mode="nearest")

    def distance_from_back(self, points: np.ndarray) -> np.ndarray:
        """``(n,)`` mm from the back's skin, forward, of ``(n, 3)`` anatomical points (the posterior surface
        coil's falloff)."""
        spine_y = np.interp(-points[:, 2], -self._profiles["centre_z"], self._profiles["centre_y"])
        return self.body["back"] - (points[:, 1] - spine_y)

    def background(self, p: np.ndarray) -> np.ndarray:
        """``(n,)`` uint8 tissue of the trunk at ``(n, 3)`` anatomical points, without the spine: air, skin,
        subcutaneous fat, muscle and viscera."""
        body = self.body
        spine_y = np.interp(-p[:, 2], -self._profiles["centre_z"], self._profiles["centre_y"])
        a = p[:, 1] - spine_y
        centre = (body["back"] + body["front"]) / 2.0
        half_ap = (body["back"] - body["front"]) / 2.0

        lateral, sagittal = np.abs(p[:, 0]), np.abs(a - centre)

        def outline(shrink: float) -> np.ndarray:  # a super-ellipse of power 3
            x, y = lateral / (body["half_width"] - shrink), sagittal / (half_ap - shrink)
            return x * x * x + y * y * y <= 1.0

        tissue = np.full(len(p), AIR, dtype=np.uint8)
        tissue[outline(0.0)] = SKIN
        tissue[outline(2.5)] = FAT
        deep = outline(body["fat"])
        tissue[deep] = MUSCLE
        viscera = deep & outline(body["fat"] + 12.0) & (a < body["viscera_back"])
        tissue[viscera] = VISCERA
        return tissue

    @functools.cached_property
    def _profile_table(self) -> tuple[float, dict[str, np.ndarray]]:
        """The ``s`` profiles sampled every ``_PROFILE_STEP_MM`` (float32), for fast lookups."""
        prof = self._profiles
        start = float(prof["s"][0]) - 80.0
        grid = np.arange(start, float(prof["s"][-1]) + 80.0, _PROFILE_STEP_MM)
        names = ("depth", "width", "psoas", "canal_half_width", "lamina_inner", "sac_half_width", "sac_half_ap",
                 "sac_centre_a")
        return start, {name: np.interp(grid, prof["s"], prof[name]).astype(np.float32) for name in names}

    def _profiles_at(self, s: np.ndarray, *names: str) -> list[np.ndarray]:
        """The named ``s`` profiles at each point (nearest sample of :attr:`_profile_table`)."""
        start, table = self._profile_table
        index = np.clip(((s - start) * (1.0 / _PROFILE_STEP_MM) + 0.5).astype(np.int32), 0,
                        len(table["depth"]) - 1)
        return [table[name][index] for name in names]

    def _paint_spine(self, c: _Canvas) -> None:
        prof = self._profiles
        s_top, s_bottom = float(self.segment_s[0] + self.segment_height[0] / 2), float(self.segment_s[-1] - 30.0)

        # muscles and vessels in front of the spine (follow the spine)
        p = c.view(s_bottom, s_top)
        psoas_r, depth, width, canal_u, lam_inner = self._profiles_at(
            p.s, "psoas", "depth", "width", "canal_half_width", "lamina_inner")
        front = p.a < 25.0  # the psoas reaches beside the bodies
        f = p.where(front)
        f_psoas, f_depth, f_width = psoas_r[front], depth[front], width[front]
        for side in (-1.0, 1.0):
            du = (f.u - side * (f_width + 0.7 * f_psoas)) / np.maximum(f_psoas, 1e-3)
            da = (f.a + 0.2 * f_depth - 0.3 * f_psoas) / np.maximum(0.8 * f_psoas, 1e-3)
            c.paint(f.t, (du * du + da * da <= 1.0) & (f_psoas > 1.0), MUSCLE)
        bifurcation = float(prof["bifurcation_s"][0])
        vessel_a = -(f_depth + 13.0)
        above = f.s > bifurcation
        aorta = above & (((f.u - 12.0) / 10.0) ** 2 + ((f.a - vessel_a) / 10.0) ** 2 <= 1.0)
        ivc = (f.s > bifurcation - 10.0) & (((f.u + 16.0) / 11.0) ** 2 + ((f.a - vessel_a + 2.0) / 7.5) ** 2 <= 1.0)
        spread = np.clip(bifurcation - f.s, 0.0, None) * 0.45
        iliac = ~above & ((((np.abs(f.u) - 12.0 - spread) / 6.5) ** 2 + ((f.a - vessel_a) / 6.5) ** 2) <= 1.0)
        c.paint(f.t, aorta | ivc | iliac, VESSEL)

        # the bony canal's contents start as epidural fat
        c.paint(p.t, (np.abs(p.u) <= canal_u) & (p.a >= depth - 0.5) & (p.a <= lam_inner)
                & (p.s > prof["sac_end_s"][0] - 60), FAT)

        for k in range(len(self.segment_s)):
            self._paint_segment(c, k)
        for j in range(len(self.joint_s)):
            self._paint_joint(c, j)
        self._paint_sacrum(c)
        self._paint_sac(c)

    # -- vertebrae
    def _paint_segment(self, c: _Canvas, k: int) -> None:
        name = self.segment_names[k]
        if name.startswith("S"):
            return  # the sacrum is painted as one bone
        s0, h, depth, width = (float(v[k]) for v in (self.segment_s, self.segment_height, self.segment_depth,
                                                   self.segment_width))
        # body: super-ellipse cylinder (posterior half squarer), rounded rims, cortex shell
        p = c.view(s0 - h / 2, s0 + h / 2)
        p = p.where((np.abs(p.u) <= width) & (np.abs(p.a) <= depth))
        in_body = _rounded_body(p.u, p.a, p.s - s0, width, depth, h / 2)
        c.paint(p.t, in_body, CORTEX)
        c.paint(p.t, in_body & _rounded_body(p.u, p.a, p.s - s0, width - 1.3, depth - 1.3, h / 2 - 1.2), MARROW)

        sac_half_width, lam_inner = (float(v[0]) for v in self._profiles_at(np.array([s0]), "sac_half_width",
                                                                            "lamina_inner"))
        # pedicles: elliptic cylinders along a, upper half of the body; transverse processes from them
        pedicle_u, pedicle_s = sac_half_width + _FORAMEN_OFFSET, s0 + h / 4 - 1.0
        length = {"L1": 14.0, "L2": 20.0, "L3": 26.0, "L4": 22.0, "L5": 18.0}.get(name, 10.0)
        p = c.view(pedicle_s - 7.5, pedicle_s + 7.5)
        p = p.where((np.abs(p.u) >= pedicle_u - 4.0) & (np.abs(p.u) <= pedicle_u + length)
                    & (p.a >= depth - 3.0) & (p.a <= lam_inner + 2.0))
        for side in (-1.0, 1.0):
            su = side * p.u
            radial = ((su - pedicle_u) / 4.0) ** 2 + ((p.s - pedicle_s) / 7.5) ** 2
            c.paint(p.t, radial <= 1.0, CORTEX)
            c.paint(p.t, radial <= 0.55, MARROW)
            bar = ((p.a - (depth + 7.0)) / 4.0) ** 2 + ((p.s - pedicle_s) / 4.5) ** 2
            lateral = (su >= pedicle_u) & (su <= pedicle_u + length)
            c.paint(p.t, lateral & (bar <= 1.0), CORTEX)
            c.paint(p.t, lateral & (bar <= 0.45) & (su <= pedicle_u + length - 1.5), MARROW)
        # lamina: a plate behind the canal from the pedicles down past the lower endplate
        lamina_bottom, lamina_top = s0 - h / 2 - 4.0, s0 + h / 4
        p = c.view(lamina_bottom, lamina_top)
        p = p.where((np.abs(p.u) <= sac_half_width + 9.0) & (p.a >= lam_inner))
        lam = p.a <= lam_inner + 5.5 + 0.15 * np.abs(p.u)
        c.paint(p.t, lam, CORTEX)
        c.paint(p.t, lam & (p.a >= lam_inner + 1.0) & (p.a <= lam_inner + 4.5 + 0.15 * np.abs(p.u))
                & (p.s >= lamina_bottom + 1) & (p.s <= lamina_top - 1), MARROW)
        # spinous process: thin, sloping down posteriorly
        p = c.view(s0 - 9.0 - 0.2 * 36.0, s0 + 7.0 - 0.2 * 3.0)
        p = p.where((np.abs(p.u) <= 3.5) & (p.a >= lam_inner + 3.0) & (p.a <= lam_inner + 36.0))
        slope = 0.2 * (p.a - lam_inner)
        spinous = (p.s >= s0 - 9.0 - slope) & (p.s <= s0 + 7.0 - slope)
        c.paint(p.t, spinous, CORTEX)
        c.paint(p.t, spinous & (np.abs(p.u) <= 2.2) & (p.a - lam_inner <= 35.0) & (p.s >= s0 - 8.0 - slope)
                & (p.s <= s0 + 6.0 - slope), MARROW)

    # -- discs and the structures at a disc level
    def _paint_joint(self, c: _Canvas, j: int) -> None:
        joint = self._joint_params[j]
        if self.joint_fused[j]:
            return
        s0, d = joint["s"], joint["height"]
        width, depth = joint["width"], joint["depth"]
        # disc: annulus (with the posterior bulges) and the nucleus
        p = c.view(s0 - d / 2 - 1.0, s0 + d / 2 + 1.0)
        p = p.where((np.abs(p.u) <= width) & (np.abs(p.a) <= depth + joint["bulge_central"] + 8.0))
        ds = p.s - s0
        disc_window = np.abs(ds) <= d / 2
        margin = _disc_margin(p.u, ds, joint, depth)
        in_disc = disc_window & _body_section(p.u, p.a, width, depth) | (
            (p.a >= 0.0) & (p.a <= margin) & (np.abs(p.u) <= width * 0.8))
        c.paint(p.t, in_disc, ANNULUS)
        nucleus = joint["nucleus_fraction"]
        c.paint(p.t, disc_window & (np.abs(ds) <= d / 2 * (0.35 + 0.45 * nucleus))
                & ((p.u / (width * (0.3 + 0.35 * nucleus))) ** 2 + ((p.a + 1.5) / (depth * (0.3 + 0.3 * nucleus))) ** 2
                   <= 1.0), NUCLEUS)
        if joint["level"] is None:
            return

        sac_half_width = joint["sac_half_width"]
        lam_inner = joint["lamina_inner"]
        # ligamentum flavum: lines the laminae around the disc level, thicker laterally; hypertrophy narrows
        p = c.view(s0 - d / 2 - 10.0, s0 + d / 2 + 10.0)
        p = p.where((np.abs(p.u) <= sac_half_width + 7.0) & (p.a <= lam_inner + 3.0) & (p.a >= depth))
        ds = p.s - s0
        lf_window = np.clip(1.0 - (np.abs(ds) / (d / 2 + 10.0)) ** 2, 0.0, None)
        thickness = _flavum_thickness(p.u, joint) * lf_window
        c.paint(p.t, (p.a >= lam_inner - thickness) & (lf_window > 0.0) & (p.a >= _disc_margin(p.u, ds, joint, depth)),
                LIGAMENT)

        for side_name, side in (("left", 1.0), ("right", -1.0)):
            recess = joint["recess"][side_name]
            foramen = joint["foramen"][side_name]
            foramen_u = side * foramen["u"]
            top = max(12.0, d / 2 + 10.0, foramen["s"] - s0 + foramen["normal_half_height"] + 0.8)
            p = c.view(s0 - d / 2 - 10.0, s0 + top)
            su_all = side * p.u
            p = p.where((su_all >= sac_half_width - 4.5) & (su_all <= max(recess["sap_u"] + 7.5, foramen_u + 4.0)))
            su = side * p.u
            ds = p.s - s0
            # lateral recess: fat between the disc margin and the superior articular process
            rec = (su <= sac_half_width + 3.0) & (np.abs(ds) <= d / 2 + 8.0) \
                & (p.a >= _disc_margin(p.u, ds, joint, depth)) \
                & (p.a <= recess["front"] + recess["normal_height"] + 2.0)
            c.paint(p.t, rec, FAT)
            # facet joint: superior articular process (below, anterolateral), inferior (above, posteromedial)
            dsu, dsa = su - recess["sap_u"], p.a - recess["sap_a"]
            sap = ((dsu / 6.0) ** 2 + (dsa / 5.0) ** 2 <= 1.0) & (ds >= -d / 2 - 8.0) & (ds <= 12.0)
            iap = (((dsu - 1.5) / 5.0) ** 2 + ((dsa - 8.5) / 4.5) ** 2 <= 1.0) & (ds >= -d / 2 - 4.0) & (ds <= 8.0)
            line = dsu * 0.6 - (dsa - 4.5) * 0.8  # signed mm from the joint line
            facet = sap | iap
            c.paint(p.t, facet, CORTEX)
            c.paint(p.t, sap & (((dsu / 5.0) ** 2 + (dsa / 4.0) ** 2) <= 1.0) & (line > 0.8), MARROW)
            c.paint(p.t, iap & ((((dsu - 1.5) / 4.0) ** 2 + ((dsa - 8.5) / 3.5) ** 2) <= 1.0) & (line < -0.8), MARROW)
            c.paint(p.t, facet & (np.abs(line) <= 0.7), JOINT)
            # neural foramen (pedicle zone between the pedicles): fibrous bed, fat, exiting root
            zone = np.abs(su - foramen_u) <= 4.0
            fs = p.s - foramen["s"]
            bed = zone & ((fs / (foramen["normal_half_height"] + 0.8)) ** 2
                          + ((p.a - foramen["front"] - foramen["normal_half_ap"])
                             / (foramen["normal_half_ap"] + 0.8)) ** 2 <= 1.0)
            c.paint(p.t, bed, FIBROUS)
            half_ap = foramen["half_ap"] * np.clip(0.8 + 0.3 * fs / foramen["half_height"], 0.45, 1.1)
            fat = zone & ((fs / foramen["half_height"]) ** 2 + ((p.a - foramen["a"]) / half_ap) ** 2 <= 1.0)
            c.paint(p.t, fat, FAT)
            root_ap = min(2.4, 0.85 * foramen["half_ap"])
            root = zone & (((fs - 0.3 * foramen["half_height"]) / foramen["root_half_height"]) ** 2
                           + ((p.a - foramen["a"]) / root_ap) ** 2 <= 1.0)
            c.paint(p.t, root, NEURAL)
            # traversing root in the recess (flattened when the recess is tight)
            root_a_radius = min(1.6, 0.45 * recess["height"])
            root = ((su - side * recess["u_root"]) / 1.7) ** 2 + ((p.a - recess["a_mid"]) / root_a_radius) ** 2 <= 1.0
            c.paint(p.t, root & (np.abs(ds) <= d / 2 + 10.0), NEURAL)

    def _paint_sacrum(self, c: _Canvas) -> None:
        first = self.segment_names.index("S1")
        s_top = float(self.segment_s[first] + self.segment_height[first] / 2)
        s_end = float(self.segment_s[-1] - self.segment_height[-1] / 2)
        p = c.view(s_end, s_top)
        if p.u.size == 0:
            return
        depth, width, canal_half, canal_back = self._profiles_at(p.s, "depth", "width", "canal_half_width",
                                                                 "lamina_inner")
        below_top = s_top - p.s
        body = _body_section(p.u, p.a, width, depth)
        c.paint(p.t, body, CORTEX)
        c.paint(p.t, body & (below_top >= 1.2) & (p.s >= s_end + 1.2) & _body_section(p.u, p.a, width - 1.3,
                                                                                      depth - 1.3), MARROW)
        # alae: lateral masses of S1/S2, and the dorsal plate behind the sacral canal
        s1_bottom = float(self.segment_s[first + 1])
        abs_u = np.abs(p.u)
        ala = (p.s <= s_top - 3.0) & (p.s >= s1_bottom) & (abs_u >= 0.5 * width) & (abs_u <= width + 28.0) \
            & (p.a >= -0.5 * depth) & (p.a <= depth + 14.0)
        c.paint(p.t, ala & ~((abs_u <= canal_half + 2.0) & (p.a >= depth - 1.0)), CORTEX)
        c.paint(p.t, ala & (abs_u >= 0.5 * width + 1.2) & (abs_u <= width + 26.8) & (p.a >= -0.5 * depth + 1.2)
                & (p.a <= depth + 12.8) & (p.s <= s_top - 4.2) & ~((abs_u <= canal_half + 3.2)
                                                                 & (p.a >= depth - 2.2)), MARROW)
        plate = (p.s <= s_top - 6.0) & (abs_u <= canal_half + 10.0) & (p.a >= canal_back) & (p.a <= canal_back + 7.0)
        c.paint(p.t, plate, CORTEX)
        c.paint(p.t, plate & (p.a >= canal_back + 1.2) & (p.a <= canal_back + 5.8) & (abs_u <= canal_half + 8.8),
                MARROW)

    # -- the dural sac, CSF, cord and cauda equina
    def _paint_sac(self, c: _Canvas) -> None:
        sac_end = float(self._profiles["sac_end_s"][0])
        p = c.view(sac_end, float(self.segment_s[0] + self.segment_height[0] / 2 + 20.0))
        p = p.where((np.abs(p.u) <= 0.5 * self.sac_width * 1.2) & (p.a >= 5.0) & (p.a <= 40.0))
        if p.u.size == 0:
            return
        half_width, half_ap, centre = self._profiles_at(p.s, "sac_half_width", "sac_half_ap", "sac_centre_a")
        front = centre - half_ap
        back = centre + half_ap
        # narrowing at the lumbar discs (s is sorted: each disc touches a contiguous run of points)
        for joint in self._joint_params:
            if joint["level"] is None:
                continue
            reach = joint["height"] / 2 + 6.0
            low, high = np.searchsorted(p.s, [joint["s"] - reach, joint["s"] + reach])
            if high <= low:
                continue
            run = slice(low, high)
            ds = p.s[run] - joint["s"]
            bump = _plateau(ds, joint["height"] / 2 + 1.0, 5.0)
            margin = _disc_margin(p.u[run], ds, joint, joint["depth"])
            front[run] = np.maximum(front[run], margin + 0.5)
            lf = joint["lamina_inner"] - _flavum_thickness(p.u[run], joint) * np.clip(
                1.0 - (np.abs(ds) / (joint["height"] / 2 + 10.0)) ** 2, 0.0, None) - 1.0
            back[run] = np.minimum(back[run], lf)
            half_width[run] = half_width[run] * (1.0 - joint["sac_side_loss"] * bump)
        ellipse = (p.u / np.maximum(half_width, 1e-3)) ** 2 + ((p.a - centre) / np.maximum(half_ap, 1e-3)) ** 2 <= 1.0
        sac = ellipse & (p.a >= front) & (p.a <= back) & (half_width > 0.5)
        if not sac.any():
            return
        p = p.where(sac)
        front, back, half_width, centre = front[sac], back[sac], half_width[sac], centre[sac]
        c.paint(p.t, np.ones(len(p.t), dtype=bool), CSF)
        # spinal cord above the conus, tapering to its tip
        taper = np.clip((p.s - self.conus_s) / 20.0, 0.0, 1.0) ** 0.5
        cord = (p.s > self.conus_s) & ((p.u / (4.5 * taper + 1e-3)) ** 2 + ((p.a - centre) / (3.6 * taper + 1e-3)) ** 2
                                       <= 1.0)
        c.paint(p.t, cord, NEURAL)
        # cauda equina: roots at fixed normalised positions, so a narrowed sac crowds them together
        span = np.maximum(back - front, 1e-3)
        below_conus = p.s <= self.conus_s + 5.0
        for fu, fa, radius, exit_s in self.roots:
            present = below_conus & (p.s >= exit_s)
            if not present.any():
                continue
            du = p.u - fu * half_width
            da = p.a - (front + fa * span)
            c.paint(p.t, present & (du * du + da * da <= radius * radius), NEURAL)


#: Relative amplitude of the random texture per tissue (TISSUES order): marrow, muscle, bowel, fat.
TEXTURE_AMPLITUDE = np.zeros(len(TISSUES), dtype=np.float32)
TEXTURE_AMPLITUDE[[MARROW, MUSCLE, VISCERA, FAT]] = (0.09, 0.07, 0.25, 0.04)
#: The texture lattice: anatomical origin, spacing and shape (covers the trunk around the lumbar spine).
_TEXTURE_ORIGIN = np.array([-240.0, -300.0, -330.0])
_TEXTURE_SPACING_MM = 5.0
_TEXTURE_SHAPE = (97, 97, 133)
#: Sampling step of the ``s`` profiles' lookup table (mm).
_PROFILE_STEP_MM = 0.25
#: Lateral offset of the pedicles and the neural foramina from the dural sac's side (mm).
_FORAMEN_OFFSET = 5.5
#: Straight-space box drawn by the spine painter: lateral u and antero-posterior a ranges (mm).
_STRAIGHT_BOX_U = (-62.0, 62.0)
_STRAIGHT_BOX_A = (-70.0, 72.0)


class _Points:
    """Straight coordinates ``u, a, s`` (float32) of some points and their ``t`` indices into the output."""

    __slots__ = ("a", "s", "t", "u")

    def __init__(self, u: np.ndarray, a: np.ndarray, s: np.ndarray, t: np.ndarray) -> None:
        self.u, self.a, self.s, self.t = u, a, s, t

    def where(self, mask: np.ndarray) -> _Points:
        """The points where ``mask`` holds (copies, still sorted by ``s``)."""
        return _Points(self.u[mask], self.a[mask], self.s[mask], self.t[mask])


class _Canvas:
    """Points of the straight box sorted by ``s``, so a structure touches only its own ``s`` range."""

    def __init__(self, q: np.ndarray, targets: np.ndarray, tissue: np.ndarray) -> None:
        order = np.argsort(q[:, 2], kind="stable")
        self.u, self.a, self.s = (np.ascontiguousarray(q[order, i], dtype=np.float32) for i in range(3))
        self.targets = targets[order]
        self.tissue = tissue

    def view(self, s_low: float, s_high: float) -> _Points:
        """The points with ``s_low <= s <= s_high`` (views, no copies)."""
        low, high = np.searchsorted(self.s, [s_low, s_high], side="left")
        return _Points(self.u[low:high], self.a[low:high], self.s[low:high], self.targets[low:high])

    def paint(self, targets: np.ndarray, mask: np.ndarray, tissue: int) -> None:
        self.tissue[targets[mask]] = tissue


def _section_measure(u: np.ndarray, a: np.ndarray, width: float | np.ndarray, depth: float | np.ndarray
                     ) -> np.ndarray:
    """Vertebral body cross-section measure (<= 1 inside): an ellipse in front, a squarer super-ellipse
    (power 4) behind."""
    x, y = u / width, a / depth
    x2, y2 = x * x, y * y
    return np.where(a > 0, x2 * x2 + y2 * y2, x2 + y2)


def _body_section(u: np.ndarray, a: np.ndarray, width: float | np.ndarray, depth: float | np.ndarray) -> np.ndarray:
    """Inside the vertebral body's cross-section (see :func:`_section_measure`)."""
    return _section_measure(u, a, width, depth) <= 1.0


def _rounded_body(u: np.ndarray, a: np.ndarray, ds: np.ndarray, width: float, depth: float, half_height: float
                  ) -> np.ndarray:
    """Inside a vertebral body whose rims are rounded (a super-ellipse of power 8 in section x height)."""
    m = _section_measure(u, a, width, depth)
    t = ds / half_height
    m2, t2 = m * m, t * t
    t4 = t2 * t2
    return m2 * m2 + t4 * t4 <= 1.0


def body_back(u: float, width: float, depth: float) -> float:
    """Posterior surface ``a`` of the body section at lateral offset ``u`` (0 beyond the body)."""
    ratio = min(abs(u) / width, 1.0)
    return depth * (1.0 - ratio ** 4.0) ** 0.25


def _plateau(x: np.ndarray, flat: float, taper: float) -> np.ndarray:
    """1 for ``|x| <= flat``, a cosine taper to 0 at ``flat + taper``."""
    over = np.clip((np.abs(x) - flat) / taper, 0.0, 1.0)
    return 0.5 * (1.0 + np.cos(np.pi * over))


def _disc_margin(u: np.ndarray, ds: np.ndarray, joint: dict, depth: float) -> np.ndarray:
    """Posterior disc margin ``a`` at lateral ``u`` and distance ``ds`` from the disc's mid-plane."""
    bulge = joint["bulge_base"] + joint["bulge_central"] * np.exp(-(u / 5.0) ** 2)
    for side_name, side in (("left", 1.0), ("right", -1.0)):
        reach = np.exp(-((u - side * joint["paracentral_u"]) / 4.0) ** 2)
        bulge = bulge + joint["bulge_paracentral"][side_name] * reach
    return depth + bulge * _plateau(ds, joint["height"] / 2, 2.5)


def _flavum_thickness(u: np.ndarray, joint: dict) -> np.ndarray:
    """Ligamentum flavum thickness at lateral ``u`` at the disc level: thinner in the midline, plus the
    central hypertrophy (canal stenosis) and a lateral one per side (subarticular stenosis)."""
    lateral = np.clip(np.abs(u) / 6.0, 0.0, 1.0)
    side_extra = np.where(u > 0, joint["flavum_side"]["left"], joint["flavum_side"]["right"])
    return joint["flavum_base"] * (0.35 + 0.65 * lateral) + joint["flavum_central"] + side_extra * lateral


# --- drawing a study's anatomy ---------------------------------------------------------------------------

def draw_anatomy(grade: dict[tuple[str, str], float], rng: np.random.Generator) -> Anatomy:
    """Draw one study's spine.

    Args:
        grade: latent grade-scale severity per ``(condition, level)`` (the 25 targets).
        rng: the study's anatomy generator (consumed in a fixed pattern).
    """
    n_seg = len(_SEGMENTS)
    size = float(np.clip(rng.normal(1.0, 0.06), 0.85, 1.15))
    names = tuple(name for name, *_ in _SEGMENTS)
    height = np.array([h for _, h, _, _ in _SEGMENTS]) * size * rng.normal(1.0, 0.03, n_seg)
    depth = np.array([d for _, _, d, _ in _SEGMENTS]) * size * rng.normal(1.0, 0.03, n_seg)
    width = np.array([w for _, _, _, w in _SEGMENTS]) * size * rng.normal(1.0, 0.03, n_seg)
    joint_height = np.array([h for h, _, _ in _JOINTS]) * size * rng.normal(1.0, 0.06, n_seg - 1)
    fused = np.array([f for _, _, f in _JOINTS])
    lordosis = float(np.clip(rng.normal(1.0, 0.2), 0.55, 1.45))
    tilt_change = np.array([dt for _, dt, _ in _JOINTS]) * np.where(np.arange(n_seg - 1) >= 4, lordosis, 1.0)
    tilt_change = tilt_change + rng.normal(0.0, 1.2, n_seg - 1)
    # a joint may not bend more than its disc can open: D * tan(angle / 2) <= 0.8 * height / 2
    joint_depth = np.minimum(depth[:-1], depth[1:])
    limit = np.rad2deg(2.0 * np.arctan(0.8 * joint_height / 2.0 / joint_depth))
    tilt_change = np.where(fused, tilt_change, np.clip(tilt_change, -limit, limit))
    sacral_slope = float(np.clip(rng.normal(28.0, 6.0), 12.0, 45.0))  # supine: flatter than standing

    reference = names.index(_REFERENCE_SEGMENT)
    s_centre = np.zeros(n_seg)
    for k in range(reference - 1, -1, -1):
        s_centre[k] = s_centre[k + 1] + height[k + 1] / 2 + joint_height[k] + height[k] / 2
    for k in range(reference + 1, n_seg):
        s_centre[k] = s_centre[k - 1] - height[k - 1] / 2 - joint_height[k - 1] - height[k] / 2
    joint_s = np.array([s_centre[k] - height[k] / 2 - joint_height[k] / 2 for k in range(n_seg - 1)])

    s1 = names.index("S1")
    tilt = np.zeros(n_seg)
    tilt[s1] = sacral_slope
    for k in range(s1 - 1, -1, -1):
        tilt[k] = tilt[k + 1] - tilt_change[k]
    for k in range(s1 + 1, n_seg):
        tilt[k] = tilt[k - 1] + tilt_change[k - 1]
    rotation = np.stack([_rotation_x(np.deg2rad(phi)) for phi in tilt])
    translation = np.zeros((n_seg, 3))
    translation[reference] = -rotation[reference] @ np.array([0.0, 0.0, s_centre[reference]])

    def mapped(k: int, q: np.ndarray) -> np.ndarray:
        return rotation[k] @ q + translation[k]

    for k in range(reference + 1, n_seg):  # walk down: agree with the segment above on the joint's axis
        axis = np.array([0.0, 0.0, joint_s[k - 1]])
        translation[k] = mapped(k - 1, axis) - rotation[k] @ axis
    for k in range(reference - 1, -1, -1):  # walk up
        axis = np.array([0.0, 0.0, joint_s[k]])
        translation[k] = mapped(k + 1, axis) - rotation[k] @ axis
    plane_point = np.stack([mapped(k, np.array([0.0, 0.0, joint_s[k]])) for k in range(n_seg - 1)])
    plane_normal = np.stack([rotation[k][:, 2] + rotation[k + 1][:, 2] for k in range(n_seg - 1)])
    plane_normal /= np.linalg.norm(plane_normal, axis=1, keepdims=True)

    # canal and sac
    sac_ap = float(np.clip(rng.normal(13.0, 1.2), 10.0, 16.5))
    sac_width = float(np.clip(sac_ap * rng.normal(1.5, 0.08), 15.0, 25.0))
    posterior_fat = float(np.clip(rng.normal(1.5, 0.3), 0.8, 2.5))
    flavum_base = float(np.clip(rng.normal(2.6, 0.3), 1.8, 3.6))
    level_jitter = rng.normal(1.0, 0.03, n_seg)
    knots_s = s_centre[::-1]
    depth_knots = depth[::-1]
    sacrum = np.array([name.startswith("S") for name in names])[::-1]
    sac_half_ap_knots = np.where(sacrum, 0.0, sac_ap / 2 * level_jitter[::-1])
    sac_half_width_knots = np.where(sacrum, 0.0, sac_width / 2 * level_jitter[::-1])
    front_fat = np.where(np.array([n in ("L5", "S1") for n in names])[::-1], 2.6, 1.5)
    sac_centre_knots = depth_knots + front_fat + sac_ap / 2 * level_jitter[::-1]
    lamina_inner_knots = depth_knots + front_fat + sac_ap * level_jitter[::-1] + posterior_fat + flavum_base
    lamina_inner_knots = np.where(sacrum, depth_knots + np.linspace(8.0, 4.0, n_seg)[::-1], lamina_inner_knots)
    canal_half_width_knots = np.where(sacrum, np.linspace(14.0, 7.0, n_seg)[::-1], sac_width / 2 + 2.5)
    psoas_knots = np.interp(np.arange(n_seg), [names.index("T12"), names.index("L1"), names.index("L5"),
                                                names.index("S1"), names.index("S2")],
                            [0.0, 7.0, 21.0, 18.0, 0.0]) * size * rng.normal(1.0, 0.1)
    psoas_knots[: names.index("T12")] = 0.0
    psoas_knots[names.index("S2"):] = 0.0
    s2 = names.index("S2")
    sac_end_s = s_centre[s2] + rng.normal(0.0, 4.0)
    # the sac tapers to its end between S1's centre and its end in S2
    profiles = {"s": knots_s, "depth": depth_knots, "width": width[::-1]}
    taper = np.clip((knots_s - sac_end_s) / max(s_centre[s1] - sac_end_s, 1.0), 0.0, 1.0)
    profiles["sac_half_ap"] = np.where(sacrum, sac_ap / 2 * 0.8 * taper, sac_half_ap_knots)
    profiles["sac_half_width"] = np.where(sacrum, sac_width / 2 * 0.75 * taper, sac_half_width_knots)
    profiles["sac_centre_a"] = np.where(sacrum, depth_knots + 1.0 + profiles["sac_half_ap"], sac_centre_knots)
    profiles["lamina_inner"] = lamina_inner_knots
    profiles["canal_half_width"] = canal_half_width_knots
    profiles["psoas"] = psoas_knots[::-1]
    profiles["sac_end_s"] = np.array([sac_end_s])
    profiles["bifurcation_s"] = np.array([s_centre[names.index("L4")] + rng.normal(0.0, 6.0)])
    centres = np.stack([mapped(k, np.array([0.0, 0.0, s_centre[k]])) for k in range(n_seg)])
    profiles["centre_z"] = centres[:, 2]
    profiles["centre_y"] = centres[:, 1]

    # per-joint parameters (lumbar levels carry the severities)
    levels: list[LevelAnatomy] = []
    joints: list[dict] = []
    for j in range(n_seg - 1):
        upper = names[j]
        level = _LUMBAR_JOINT_NAMES.get(upper)
        s0 = float(joint_s[j])
        jd = float(np.interp(s0, profiles["s"], profiles["depth"]))
        jw = float(np.interp(s0, profiles["s"], profiles["width"]))
        nucleus_fraction = float(rng.uniform(0.35, 1.0) if level in ("l4_l5", "l5_s1") else rng.uniform(0.6, 1.0))
        sac_half_width = float(np.interp(s0, profiles["s"], profiles["sac_half_width"]))
        sac_half_ap = float(np.interp(s0, profiles["s"], profiles["sac_half_ap"]))
        sac_centre = float(np.interp(s0, profiles["s"], profiles["sac_centre_a"]))
        lamina_inner = float(np.interp(s0, profiles["s"], profiles["lamina_inner"]))
        joint = {"s": s0, "height": float(joint_height[j]), "depth": jd, "width": jw, "level": level,
                 "nucleus_fraction": nucleus_fraction, "sac_half_width": sac_half_width,
                 "sac_centre_a": sac_centre, "lamina_inner": lamina_inner, "bulge_base": 0.8,
                 "bulge_central": 0.0, "bulge_paracentral": {"left": 0.0, "right": 0.0},
                 "paracentral_u": sac_half_width - 1.0, "flavum_base": flavum_base, "flavum_central": 0.0,
                 "flavum_side": {"left": 0.0, "right": 0.0}, "sac_side_loss": 0.0}
        # draws that every joint makes, lumbar or not, so the pattern of draws is fixed
        recess_normal = float(np.clip(rng.normal(5.5, 0.4), 4.5, 6.8))
        foramen_scale = float(np.clip(rng.normal(1.0, 0.05), 0.85, 1.15))
        if level is not None:
            m_canal = float(narrowing_index(grade[(vocab.SPINAL, level)]))
            m_foramen = {side: float(narrowing_index(grade[(f"{side}_{vocab.FORAMINAL}", level)]))
                         for side in vocab.SIDES}
            m_recess = {side: float(narrowing_index(grade[(f"{side}_{vocab.SUBARTICULAR}", level)]))
                        for side in vocab.SIDES}
            sac_ap_normal = 2.0 * sac_half_ap
            loss = sac_ap_normal * min(CANAL_NARROWING_PER_INDEX * m_canal, 0.88)
            # 60% of the loss from the front: the central bulge reaches the sac (0.5 mm short of its normal
            # front) at no loss and pushes it back by 0.6 * loss
            front_gap = sac_centre - sac_half_ap - jd
            joint["bulge_central"] = max(0.0, front_gap - joint["bulge_base"] - 0.5 + 0.6 * loss)
            # 40% from behind: the flavum's midline reaches the sac's normal back (1 mm short) at no loss
            normal_back = sac_centre + sac_half_ap
            midline_base = _flavum_thickness(np.zeros(1), joint)[0]
            joint["flavum_central"] = max(0.0, lamina_inner - 1.0 - normal_back - midline_base + 0.4 * loss)
            joint["sac_side_loss"] = min(0.12 * m_canal, 0.35)
            recess, foramen = {}, {}
            for side_name, side in (("left", 1.0), ("right", -1.0)):
                height_loss = recess_normal * min(RECESS_LOSS_PER_INDEX * m_recess[side_name], 0.92)
                u_root = sac_half_width + 1.0
                bulge_reach = np.exp(-((u_root - joint["paracentral_u"]) / 4.0) ** 2)
                joint["bulge_paracentral"][side_name] = 0.5 * height_loss / bulge_reach
                front = jd + joint["bulge_base"] + joint["bulge_paracentral"][side_name] * bulge_reach \
                    + joint["bulge_central"] * np.exp(-(u_root / 5.0) ** 2)
                height_now = recess_normal - height_loss
                back = front + height_now
                # place the superior articular process so that its front surface at u_root is `back`
                sap_u = sac_half_width + 5.0
                reach = 5.0 * np.sqrt(max(1.0 - ((u_root - sap_u) / 6.0) ** 2, 0.0))
                recess[side_name] = {"u_root": side * u_root, "front": front, "height": height_now,
                                     "normal_height": recess_normal, "a_mid": (front + back) / 2,
                                     "sap_u": sap_u, "sap_a": back + reach}
                joint["flavum_side"][side_name] = 0.5 * height_loss
                body_at_zone = body_back(sac_half_width + _FORAMEN_OFFSET, jw, jd)
                normal_half_ap = 4.2 * foramen_scale
                normal_half_height = 9.0 * foramen_scale
                half_ap = normal_half_ap * max(1.0 - FORAMEN_AP_LOSS_PER_INDEX * m_foramen[side_name], 0.15)
                half_height = normal_half_height * max(1.0 - FORAMEN_HEIGHT_LOSS_PER_INDEX * m_foramen[side_name],
                                                       0.45)
                f_front = body_at_zone + 1.0
                lost = normal_half_ap - half_ap
                foramen[side_name] = {
                    "u": side * (sac_half_width + _FORAMEN_OFFSET), "s": s0 + float(height[j]) / 4 - 0.5,
                    "front": f_front, "a": f_front + normal_half_ap + 0.2 * lost,
                    "half_ap": half_ap, "half_height": half_height, "normal_half_ap": normal_half_ap,
                    "normal_half_height": normal_half_height,
                    "root_half_height": 2.8 + max(0.0, 2.4 - 0.85 * half_ap) * 0.6,
                }
            joint["recess"], joint["foramen"] = recess, foramen
            levels.append(LevelAnatomy(
                level=level, canal_index=m_canal, foramen_index=m_foramen, recess_index=m_recess,
                sac_ap_mm=sac_ap_normal - loss, sac_ap_normal_mm=sac_ap_normal,
                foramen_fat_ap_mm={k: 2 * v["half_ap"] for k, v in foramen.items()},
                foramen_height_mm={k: 2 * v["half_height"] for k, v in foramen.items()},
                recess_height_mm={k: v["height"] for k, v in recess.items()},
                nucleus_fraction=nucleus_fraction))
        joints.append(joint)

    patient_rotation = _rotation(rng.normal(0.0, 1.5), rng.normal(0.0, 1.5), rng.normal(0.0, 3.0))
    patient_origin = np.array([rng.normal(0.0, 8.0), rng.normal(20.0, 15.0), rng.uniform(-150.0, 150.0)])
    back = float(np.clip(rng.normal(88.0, 10.0), 65.0, 120.0))
    body = {"back": back, "front": -float(np.clip(rng.normal(150.0, 25.0), 100.0, 220.0)),
            "half_width": float(np.clip(rng.normal(165.0, 18.0), 120.0, 220.0)),
            "fat": float(np.clip(rng.normal(20.0, 7.0), 6.0, 45.0)), "viscera_back": float(np.mean(depth)) + 4.0}
    noise = gaussian_filter(rng.standard_normal(_TEXTURE_SHAPE).astype(np.float32), sigma=1.0, mode="wrap")
    texture = (noise / noise.std()).astype(np.float32)

    roots = []
    # cauda equina: one root per side per nerve; the lumbar ones leave the sac at the disc above their vertebra
    # (the L5 root traverses the L4/L5 recess), the sacral ones stay in it down to its end
    for order, nerve in enumerate(("L2", "L3", "L4", "L5", "S1", "S2", "S3", "S4")):
        exit_at = float(joint_s[names.index(nerve) - 1] - 4.0) if nerve.startswith("L") else -np.inf
        for side in (-1.0, 1.0):
            spread = 0.82 - 0.09 * order
            fu = side * float(np.clip(spread + rng.normal(0.0, 0.04), 0.05, 0.85))
            fa = float(np.clip(0.5 + 0.05 * order + rng.normal(0.0, 0.06), 0.3, 0.9))
            roots.append((fu, fa, float(rng.uniform(0.9, 1.2)), exit_at))
    conus_s = float(joint_s[names.index("L1")] + rng.normal(0.0, 8.0))

    return Anatomy(
        patient_rotation=patient_rotation, patient_origin=patient_origin, segment_names=names,
        segment_s=s_centre, segment_height=height, segment_depth=depth, segment_width=width,
        segment_rotation=rotation, segment_translation=translation, joint_s=joint_s, joint_height=joint_height,
        joint_fused=fused, joint_plane_point=plane_point, joint_plane_normal=plane_normal, levels=tuple(levels),
        sac_ap=sac_ap, sac_width=sac_width, conus_s=conus_s, body=body, texture_grid=texture,
        roots=np.array(roots), _profiles=profiles, _joint_params=tuple(joints))
