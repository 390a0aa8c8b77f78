"""A synthetic sagittal lumbar spine MR volume whose lumbar lordosis angle is exact by construction.

Pure numpy + OpenCV; no files, no DICOM. `make_phantom(PhantomParams(...))` returns the image,
a label volume and the ground truth (LLA, its class, superior endplate corners).

How it is built (and why it stays exact):
  * The spine is designed in a planar anatomical frame in millimetres: x points posterior,
    y points inferior (the image orientation before the in-plane tilt). Every vertebral body
    has a *tilt*: the angle of its superior-endplate normal from the superior direction,
    positive toward anterior. S1 gets the sacral slope, L1 gets `S1 tilt - LLA` (exactly),
    the levels in between are interpolated with seeded jitter, and the column is stacked
    from the sacrum upward: disc wedge, then a body whose inferior endplate sits on it.
  * The same 2-D design is extruded laterally. Each structure has a lateral profile; a body's
    cross-section shrinks toward its lateral edge by scaling along its own superior-endplate
    axes, so the superior endplate keeps its exact direction in every slice.
  * Tissues are rasterised with cv2.fillPoly on a fine canvas (~0.25-0.4 mm) per lateral
    sub-slice and mapped onto the pixel grid with cv2.remap (linear) through one affine transform
    that holds the in-plane rotation, the field-of-view placement and the (possibly anisotropic)
    pixel spacing. Labels go through the same affine but are filled straight onto the pixel grid
    with an exact pixel-centre-in-polygon test (fillPoly paints up to a pixel outside an edge,
    which would tilt a short digitised endplate by up to a degree). A rotation leaves angles
    alone, so the LLA is the constructed angle.
  * The sacral slope is correlated with the LLA (about 30-45 deg for a normal LLA), as in real
    spines, so the lumbar column stands roughly upright in the field of view for any LLA.
  * Partial volume (sub-slices averaged over the slice thickness), a surface-coil bias field,
    mild blur and Rician noise make it look acquired. Every random draw comes from
    np.random.default_rng(seed), so identical parameters give bit-identical volumes.

Orientation (the project's canonical layout): array (slices, rows, cols); rows run superior ->
inferior, columns anterior -> posterior, slices patient right -> left. Pixel (r, c) has its
centre at (r * row_spacing_mm, c * col_spacing_mm) in the image plane.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import cv2
import numpy as np

from pipeline.classify import classify_lla  # the one rule; re-exported for the tests

LABELS = {"T11": 11, "T12": 12, "L1": 20, "L2": 21, "L3": 22, "L4": 23, "L5": 24, "S1": 26,
          "disc": 30, "canal": 40, "posterior": 50}  # 50 = posterior elements, phantom-only label

_LEVEL_ORDER = ("T11", "T12", "L1", "L2", "L3", "L4", "L5", "S1")  # labelled levels, superior -> inferior
_LUMBAR = ("L1", "L2", "L3", "L4", "L5")


@dataclass(frozen=True)
class PhantomParams:
    lla_deg: float | None = None      # None -> drawn from the seed, uniform 20..70
    seed: int = 0
    slices: int = 15
    rows: int = 320
    cols: int = 320
    row_spacing_mm: float = 0.9       # DICOM PixelSpacing[0]: distance between adjacent rows (vertical)
    col_spacing_mm: float = 0.9       # PixelSpacing[1]: distance between adjacent columns (horizontal)
    slice_thickness_mm: float = 4.0
    slice_spacing_mm: float = 4.4
    contrast: str = "t2"              # "t2" or "t1"


@dataclass(frozen=True)
class Phantom:
    image: np.ndarray        # float32 (slices, rows, cols), non-negative, roughly 0..4095 (12-bit MR magnitude)
    labels: np.ndarray       # uint8 (slices, rows, cols), values from LABELS, 0 background
    params: PhantomParams
    lla_deg: float           # exact by construction
    lla_class: str           # "hypolordosis" (<39), "normal" (39 <= x < 53), "hyperlordosis" (>=53)
    inplane_rotation_deg: float  # positive = anatomy turned clockwise on a display with row 0 at the top
    slice_positions_mm: np.ndarray   # (slices,) lateral slice centres, mm, increasing toward patient LEFT, 0 = mid-sagittal
    mid_slice: int                    # index of the slice closest to the mid-sagittal plane
    levels: tuple[str, ...]           # labelled levels present in the volume, superior to inferior
    # level -> ((row, col) anterior end, (row, col) posterior end) of the straight superior endplate,
    # float pixel coordinates in the mid slice; only levels whose both ends fall inside the grid.
    superior_endplates_px: dict[str, tuple[tuple[float, float], tuple[float, float]]]
    # the same points in image-plane mm: (row * row_spacing, col * col_spacing)
    superior_endplates_mm: dict[str, tuple[tuple[float, float], tuple[float, float]]]


# --------------------------------------------------------------------------------------------
# Tissues: (T2 FSE, T1 SE signal on a 12-bit scale, fine speckle, coarse mottling, striation)
# --------------------------------------------------------------------------------------------
_TISSUES: dict[str, tuple[float, float, float, float, float]] = {
    "air":          (0,    0,    0.00, 0.00, 0.00),
    "skin":         (1150, 1500, 0.05, 0.05, 0.00),
    "fat":          (2350, 3300, 0.03, 0.025, 0.00),
    "muscle":       (620,  1150, 0.05, 0.06, 0.10),
    "cortex":       (150,  210,  0.10, 0.00, 0.00),
    "marrow0":      (1180, 2250, 0.09, 0.08, 0.00),   # three marrow shades so bodies differ a little
    "marrow1":      (1260, 2400, 0.09, 0.08, 0.00),
    "marrow2":      (1110, 2150, 0.09, 0.08, 0.00),
    "marrow_pe":    (1000, 1950, 0.10, 0.08, 0.00),   # posterior elements: more cortical, darker
    "marrow_sac":   (1300, 2550, 0.09, 0.10, 0.00),   # sacrum: fattier marrow
    "annulus":      (480,  880,  0.05, 0.04, 0.00),
    "nucleus":      (2550, 1150, 0.03, 0.06, 0.00),
    "nucleus_deg":  (1350, 1000, 0.05, 0.08, 0.00),   # desiccated
    "nucleus_deg2": (720,  900,  0.06, 0.08, 0.00),   # severely degenerated
    "remnant":      (900,  1100, 0.05, 0.05, 0.00),   # fused sacral disc remnants
    "csf":          (3350, 420,  0.01, 0.02, 0.00),
    "cord":         (1350, 1300, 0.03, 0.02, 0.00),
    "root":         (950,  1150, 0.02, 0.00, 0.00),   # cauda equina
    "epifat":       (2150, 3050, 0.04, 0.06, 0.00),
    "ligament":     (330,  650,  0.06, 0.04, 0.00),
    "interspinous": (560,  950,  0.08, 0.25, 0.00),
    "facet":        (2000, 600,  0.03, 0.00, 0.00),   # joint fluid / cartilage
    "nerve":        (850,  1150, 0.03, 0.00, 0.00),   # exiting root in the foramen
    "artery":       (140,  220,  0.10, 0.00, 0.00),   # aortic flow void
    "vein":         (800,  520,  0.10, 0.15, 0.00),   # IVC, slow flow
    "bowel":        (1500, 2100, 0.06, 0.18, 0.00),   # mesentery between loops
    "bowel_wall":   (850,  1150, 0.05, 0.05, 0.00),
    "bowel_fluid":  (2700, 480,  0.04, 0.10, 0.00),
    "gas":          (25,   25,   0.00, 0.00, 0.00),
    "feces":        (950,  1450, 0.15, 0.35, 0.00),
    "liver":        (700,  1500, 0.03, 0.05, 0.00),
    "urine":        (3250, 380,  0.01, 0.02, 0.00),
    "bv_vein":      (1900, 1250, 0.05, 0.00, 0.00),   # basivertebral venous plexus
}
_TN = {name: i for i, name in enumerate(_TISSUES)}
_TNAMES = list(_TISSUES)
_BONE = (_TN["marrow0"], _TN["marrow_sac"])  # bone tissues are contiguous: cortex is carved out of them


# --------------------------------------------------------------------------------------------
# Small geometry helpers (anatomical frame: x posterior, y inferior, mm)
# --------------------------------------------------------------------------------------------
def _u(t: float) -> np.ndarray:
    """Endplate direction (anterior -> posterior) for tilt t in radians."""
    return np.array([math.cos(t), -math.sin(t)])


def _n(t: float) -> np.ndarray:
    """Superior normal of an endplate with tilt t (leans anterior for t > 0)."""
    return np.array([-math.sin(t), -math.cos(t)])


def _prof(z: float, w: float, power: float = 2.0) -> float:
    """Lateral profile in [0, 1]: 1 at the centre, 0 at |z| >= w; larger power = boxier."""
    q = abs(z) / w if w > 0 else 2.0
    return (1.0 - q ** power) ** (1.0 / power) if q < 1.0 else 0.0


_CIRCLE = {n: (np.cos(np.linspace(0, 2 * np.pi, n, endpoint=False))[:, None],
               np.sin(np.linspace(0, 2 * np.pi, n, endpoint=False))[:, None]) for n in (16, 28)}


def _ellipse(c: np.ndarray, ra: float, rb: float, e1: np.ndarray, n: int = 28) -> np.ndarray:
    """Polygon of an ellipse with semi-axis ra along unit e1 and rb across it."""
    cos, sin = _CIRCLE[n]
    return c + (ra * cos) * e1 + (rb * sin) * np.array([-e1[1], e1[0]])


def _bezier(p0: np.ndarray, ctrl: np.ndarray, p1: np.ndarray, n: int = 8) -> np.ndarray:
    t = np.linspace(0.0, 1.0, n)[:, None]
    return (1 - t) ** 2 * p0 + 2 * (1 - t) * t * ctrl + t ** 2 * p1


def _chaikin(poly: np.ndarray, iterations: int = 2) -> np.ndarray:
    """Corner cutting of a closed polygon (rounds structures without hand-made arcs)."""
    for _ in range(iterations):
        nxt = np.roll(poly, -1, axis=0)
        poly = np.stack([0.75 * poly + 0.25 * nxt, 0.25 * poly + 0.75 * nxt], axis=1).reshape(-1, 2)
    return poly


def _smooth1d(v: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian smoothing with edge padding (used on sampled curves)."""
    if sigma <= 0:
        return v
    r = int(3 * sigma) + 1
    k = np.exp(-0.5 * (np.arange(-r, r + 1) / sigma) ** 2)
    k /= k.sum()
    return np.convolve(np.pad(v, r, mode="edge"), k, mode="valid")


def _rounded_quad(corners: list[np.ndarray], radius: float, waists: tuple[float, float, float, float],
                  n_arc: int = 5, n_wall: int = 10) -> tuple[np.ndarray, list[np.ndarray]]:
    """Closed outline of a quadrilateral with filleted corners and concave ("waisted") sides.

    Returns the outline and, per corner, its two tangent points (incoming, outgoing). Side k
    runs from corner k to corner k+1; waists[k] is its inward sag in mm (0 keeps it straight,
    as for the superior endplate, whose straight part is what the ground truth reports).
    """
    cs = [np.asarray(c, float) for c in corners]
    centroid = sum(cs) / 4.0
    tang: list[tuple[np.ndarray, np.ndarray]] = []
    arcs: list[np.ndarray] = []
    for k in range(4):
        c, prv, nxt = cs[k], cs[k - 1], cs[(k + 1) % 4]
        e1 = (prv - c) / np.linalg.norm(prv - c)
        e2 = (nxt - c) / np.linalg.norm(nxt - c)
        alpha = math.acos(float(np.clip(e1 @ e2, -1.0, 1.0)))
        d = radius / math.tan(alpha / 2)
        t_in, t_out = c + d * e1, c + d * e2
        bis = (e1 + e2) / np.linalg.norm(e1 + e2)
        o = c + bis * radius / math.sin(alpha / 2)
        a0 = math.atan2(*(t_in - o)[::-1])
        a1 = math.atan2(*(t_out - o)[::-1])
        da = (a1 - a0 + math.pi) % (2 * math.pi) - math.pi  # short way round
        ang = a0 + da * np.linspace(0, 1, n_arc)
        arcs.append(o + radius * np.stack([np.cos(ang), np.sin(ang)], axis=1))
        tang.append((t_in, t_out))
    pts = []
    for k in range(4):
        pts.append(arcs[k])
        a, b = tang[k][1], tang[(k + 1) % 4][0]
        if waists[k] > 0:
            t = np.linspace(0, 1, n_wall + 2)[1:-1, None]
            side = a + t * (b - a)
            nrm = np.array([-(b - a)[1], (b - a)[0]]) / np.linalg.norm(b - a)
            if nrm @ (centroid - (a + b) / 2) < 0:
                nrm = -nrm
            pts.append(side + waists[k] * np.sin(np.pi * t) * nrm)
    return np.concatenate(pts), [np.array(t) for t in tang]


# --------------------------------------------------------------------------------------------
# The designed anatomy
# --------------------------------------------------------------------------------------------
@dataclass
class _Body:
    """A vertebral body (or sacral segment) in the mid-sagittal plane."""
    name: str
    label: int | None        # None: drawn but not labelled (T10)
    tissue: int
    tilt_sup: float          # radians
    tilt_inf: float
    m_sup: np.ndarray        # midpoint of the superior endplate
    m_inf: np.ndarray
    depth: float             # AP length of the endplates
    height: float
    half_width: float        # lateral half-width, mm
    radius: float
    waist_ant: float
    waist_post: float
    min_h_scale: float = 0.82
    _shape: tuple | None = field(default=None, repr=False)

    def corners(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        us, ui = _u(self.tilt_sup), _u(self.tilt_inf)
        a_s, p_s = self.m_sup - 0.5 * self.depth * us, self.m_sup + 0.5 * self.depth * us
        a_i, p_i = self.m_inf - 0.51 * self.depth * ui, self.m_inf + 0.51 * self.depth * ui
        return a_s, p_s, p_i, a_i

    def lateral(self, z: float):
        """Affine map (as a function) for the cross-section at lateral position z, or None.

        Scaling is along the superior-endplate axes about a posteriorly biased centre, so the
        superior endplate keeps its direction (and the LLA) in every slice through the body.
        """
        q = abs(z) / self.half_width
        if q >= 0.96:
            return None
        s_ap = math.sqrt(1.0 - q * q)
        s_h = self.min_h_scale + (1.0 - self.min_h_scale) * s_ap
        a_s, p_s, p_i, a_i = self.corners()
        us, ns = _u(self.tilt_sup), _n(self.tilt_sup)
        c = (a_s + p_s + p_i + a_i) / 4.0 + 0.15 * self.depth * us
        m = s_ap * np.outer(us, us) + s_h * np.outer(ns, ns)
        return lambda p: c + (np.asarray(p) - c) @ m.T

    def outline(self, z: float):
        """(outline polygon, nominal corners, superior endplate ends) at z, or None outside the body."""
        f = self.lateral(z)
        if f is None:
            return None
        if self._shape is None:  # the mid-sagittal outline is the same for every slice: build it once
            corners = self.corners()
            poly, tang = _rounded_quad(list(corners), self.radius,
                                       (0.0, self.waist_post, 0.6, self.waist_ant))
            # straight part of the superior endplate: anterior end, posterior end
            self._shape = (poly, np.array(corners), np.array([tang[0][1], tang[1][0]]))
        poly, corners, ends = self._shape
        c = f(corners)
        e = f(ends)
        return f(poly), (c[0], c[1], c[2], c[3]), (e[0], e[1])


@dataclass
class _Disc:
    upper: _Body
    lower: _Body
    grade: int               # 0 healthy, 1 desiccated, 2 degenerated and thin
    bulge_ant: float
    bulge_post: float


class _Curve:
    """The posterior vertebral line, resampled and smoothed: the spine of every tube-like structure."""

    def __init__(self, pts: np.ndarray, step: float = 0.5, smooth_mm: float = 5.0):
        seg = np.linalg.norm(np.diff(pts, axis=0), axis=1)
        s = np.concatenate([[0.0], np.cumsum(seg)])
        ss = np.arange(0.0, s[-1], step)
        p = np.stack([np.interp(ss, s, pts[:, 0]), np.interp(ss, s, pts[:, 1])], axis=1)
        p = np.stack([_smooth1d(p[:, 0], smooth_mm / step), _smooth1d(p[:, 1], smooth_mm / step)], axis=1)
        seg = np.linalg.norm(np.diff(p, axis=0), axis=1)
        self.s = np.concatenate([[0.0], np.cumsum(seg)])
        self.p = p
        t = np.gradient(p, axis=0)
        t /= np.linalg.norm(t, axis=1, keepdims=True)
        self.u = np.stack([t[:, 1], -t[:, 0]], axis=1)  # posterior-pointing normal (tangent runs down)
        self.n = len(ss)

    def locate(self, pt: np.ndarray) -> float:
        return float(self.s[np.argmin(np.sum((self.p - pt) ** 2, axis=1))])

    def at(self, s: float) -> tuple[np.ndarray, np.ndarray]:
        i = int(np.clip(np.searchsorted(self.s, s), 0, self.n - 1))
        return self.p[i], self.u[i]

    def _idx(self, s0: float, s1: float) -> np.ndarray:
        i0, i1 = np.searchsorted(self.s, [s0, s1])
        return np.arange(max(i0, 0), min(i1, self.n))

    def band(self, s0: float, s1: float, a, b, prof: float = 1.0,
             s0b: float | None = None, s1b: float | None = None) -> np.ndarray | None:
        """Polygon between offsets a and b (mm along the posterior normal; scalars or full-length
        arrays) over arclength [s0, s1]; the back edge may use its own range (skewed ends).
        `prof` shrinks the band about its centre line (lateral profile)."""
        if prof <= 0.0:
            return None
        ia = self._idx(s0, s1)
        ib = self._idx(s0 if s0b is None else s0b, s1 if s1b is None else s1b)
        if len(ia) < 2 or len(ib) < 2:
            return None
        a = np.broadcast_to(np.asarray(a, float), (self.n,))
        b = np.broadcast_to(np.asarray(b, float), (self.n,))
        c, h = 0.5 * (a + b), 0.5 * (b - a) * prof
        front = self.p[ia] + ((c - h)[ia])[:, None] * self.u[ia]
        back = self.p[ib] + ((c + h)[ib])[:, None] * self.u[ib]
        return np.concatenate([front, back[::-1]])


@dataclass
class _Anatomy:
    lla_deg: float
    bodies: list[_Body]              # T10 .. L5 then S1 .. S5, superior -> inferior
    discs: list[_Disc]               # between consecutive lumbar/thoracic bodies, and L5-S1
    remnants: list[tuple[_Body, _Body]]  # fused sacral "discs"
    curve: _Curve
    level_s: dict[str, tuple[float, float]]  # posterior wall arclength (top, bottom) per body
    canal: np.ndarray                # canal AP depth along the curve
    canal_hw: float                  # bony canal half-width
    sac_hw: float                    # dural sac half-width
    lamina_t: float
    spinous: dict[str, dict]         # per level: polygon parts for spinous processes
    tp_len: dict[str, float]
    conus_s: float
    roots: list[tuple[float, float, float]]  # cauda strands: (lateral z, offset back from sac wall, end s)
    y_grid: np.ndarray               # soft tissue envelopes as functions of y (mm)
    x_tips: np.ndarray
    x_ant: np.ndarray
    fat_post: np.ndarray
    muscle_ridge: float
    abd_depth: np.ndarray
    fat_ant: float
    rectus: float
    psoas_r: np.ndarray
    psoas_x: np.ndarray
    y_psoas0: float
    aorta: tuple[float, float, float]   # lateral centre z, radius, end y
    ivc: tuple[float, float, float]
    loops: list[tuple]               # bowel ellipsoids
    pelvis: list[tuple]
    y_liver: float


_NOMINAL = {  # height, depth, half-width, disc height below, canal depth, spinous (length, droop deg), TP length
    "T10": (21.5, 30.0, 15.0, 5.5, 14.5, 27.0, 40.0, 10.0),
    "T11": (22.5, 32.0, 16.5, 6.5, 15.0, 28.0, 30.0, 8.0),
    "T12": (24.0, 34.0, 18.0, 7.5, 15.5, 29.0, 18.0, 6.0),
    "L1": (25.5, 36.5, 20.0, 8.5, 17.0, 30.0, 10.0, 14.0),
    "L2": (26.5, 38.0, 21.0, 9.5, 16.5, 31.0, 8.0, 20.0),
    "L3": (27.0, 40.0, 22.0, 10.5, 16.0, 30.0, 6.0, 26.0),
    "L4": (27.0, 41.5, 23.0, 11.0, 15.5, 27.0, 6.0, 22.0),
    "L5": (26.5, 42.0, 24.0, 10.5, 15.5, 22.0, 8.0, 18.0),
}


def _build_anatomy(rng: np.random.Generator, lla_deg: float) -> _Anatomy:
    d2r = math.pi / 180.0
    size = rng.uniform(0.93, 1.08)
    # sacral slope: ~30-45 deg for a normal LLA, but correlated with it (as in real spines) so the
    # lumbar column stands roughly upright whatever the LLA
    theta_s = float(np.clip(0.5 * lla_deg + rng.uniform(10.0, 20.0), 15.0, 62.0))

    # --- tilts: L1 and S1 exact, lordosis shared between lumbar discs and bodies with jitter ---
    disc_w = np.array([0.10, 0.13, 0.17, 0.24, 0.36]) * rng.uniform(0.8, 1.2, 5)
    body_w = np.array([0.10, 0.12, 0.16, 0.24, 0.38]) * rng.uniform(0.8, 1.2, 5)
    body_frac = rng.uniform(0.12, 0.25)
    wedge_disc = (1 - body_frac) * lla_deg * disc_w / disc_w.sum()    # L1-2 .. L5-S1
    wedge_body = body_frac * lla_deg * body_w / body_w.sum()          # L1 .. L5
    tilt_sup: dict[str, float] = {"L1": theta_s - lla_deg}            # exact by definition
    tilt_inf: dict[str, float] = {}
    t = tilt_sup["L1"]
    for k, name in enumerate(_LUMBAR):
        tilt_inf[name] = t + wedge_body[k]
        t = tilt_inf[name] + wedge_disc[k]
        if k + 1 < 5:
            tilt_sup[_LUMBAR[k + 1]] = t
    tilt_sup["S1"] = theta_s                                          # exact; absorbs rounding
    # thoracolumbar junction: near-neutral discs, kyphotic (anteriorly short) thoracic bodies
    disc_wedge_above = {"T12": rng.uniform(-2, 2), "T11": rng.uniform(-4, 0), "T10": rng.uniform(-5, -1)}
    body_wedge = {"T12": -rng.uniform(1, 4), "T11": -rng.uniform(2, 5), "T10": -rng.uniform(2, 5)}
    below = "L1"
    for name in ("T12", "T11", "T10"):
        tilt_inf[name] = tilt_sup[below] - disc_wedge_above[name]
        tilt_sup[name] = tilt_inf[name] - body_wedge[name]
        below = name

    levels = ("T10", "T11", "T12") + _LUMBAR
    grade_p = [0.05, 0.05, 0.1, 0.1, 0.15, 0.25, 0.4, 0.45]
    grades = {}
    for name, p in zip(levels, grade_p):
        r = rng.uniform()
        grades[name] = 2 if r < 0.4 * p else (1 if r < p else 0)
    listhesis = {name: rng.uniform(-1.2, 1.2) for name in levels}
    if rng.uniform() < 0.12:
        listhesis[("L4", "L5")[int(rng.integers(2))]] = -rng.uniform(3.0, 6.0)  # anterolisthesis
    jit = {name: rng.uniform(0.93, 1.07, 3) for name in levels}

    # --- sacrum, built downward from the S1 superior endplate at the origin ---
    d_l5 = _NOMINAL["L5"][1] * size * jit["L5"][1]
    sac_depth = np.array([1.02, 0.8, 0.64, 0.5, 0.38]) * d_l5 * rng.uniform(0.97, 1.05)
    sac_height = np.array([25.0, 21.0, 17.0, 14.0, 11.0]) * size * rng.uniform(0.92, 1.08)
    sac_hw = np.array([48.0, 42.0, 34.0, 24.0, 16.0]) * size
    # sacral kyphosis: the tilt *decreases* caudally, so the lower sacrum turns down and forward
    kyph_total = min(rng.uniform(35.0, 50.0), theta_s + 15.0)
    kappa = -np.array([0.15, 0.2, 0.22, 0.23, 0.2]) * kyph_total
    sacrum: list[_Body] = []
    m_sup, ts = np.zeros(2), theta_s
    marrow_cycle = (_TN["marrow0"], _TN["marrow1"], _TN["marrow2"])
    for k in range(5):
        ti = ts + 0.5 * kappa[k]
        m_inf = m_sup - sac_height[k] * _n(0.5 * (ts + ti) * d2r)
        b = _Body(f"S{k + 1}", LABELS["S1"], _TN["marrow_sac"], ts * d2r, ti * d2r, m_sup.copy(), m_inf,
                  sac_depth[k], sac_height[k], sac_hw[k], 2.0 if k == 0 else 2.5,
                  waist_ant=1.2, waist_post=0.3, min_h_scale=0.7)
        sacrum.append(b)
        ts_next = ti + 0.5 * kappa[k]
        gap = 1.6
        nxt = k + 1 < 5
        if nxt:
            m_sup = (m_inf - gap * _n(0.5 * (ti + ts_next) * d2r)
                     + 0.5 * (sac_depth[k] - sac_depth[k + 1]) * _u(ts_next * d2r))
        ts = ts_next

    # --- lumbar and lower thoracic bodies, stacked upward: disc wedge, then body ---
    bodies_up: list[_Body] = []
    lower = sacrum[0]
    disc_h: dict[str, float] = {}
    for i, name in enumerate(reversed(levels)):
        h, d, w, dh = _NOMINAL[name][:4]
        h, d, w = h * size * jit[name][0], d * size * jit[name][1], w * size * jit[name][2]
        dh = dh * size * rng.uniform(0.9, 1.1) * (0.62 if grades[name] == 2 else 1.0)
        ti, tsup = tilt_inf[name] * d2r, tilt_sup[name] * d2r
        wedge = lower.tilt_sup - ti
        # keep at least 3 mm at the short side of a steep wedge
        dh = max(dh, 3.0 + 0.5 * lower.depth * math.tan(abs(wedge)))
        disc_h[name] = dh
        tm = 0.5 * (lower.tilt_sup + ti)
        m_inf = (lower.m_sup + dh * _n(tm)
                 + (0.5 * (lower.depth - d) + listhesis[name]) * _u(tm))
        m_s = m_inf + h * _n(0.5 * (ti + tsup))
        label = LABELS.get(name)
        body = _Body(name, label, marrow_cycle[i % 3], tsup, ti, m_s, m_inf, d, h, w,
                     radius=rng.uniform(1.5, 2.2), waist_ant=rng.uniform(0.8, 2.0),
                     waist_post=rng.uniform(0.4, 1.2))
        bodies_up.append(body)
        lower = body
    bodies = list(reversed(bodies_up)) + sacrum
    by = {b.name: b for b in bodies}

    discs = []
    for up, lo in zip(bodies[:len(levels)], bodies[1:len(levels) + 1]):
        g = grades[up.name]
        discs.append(_Disc(up, lo, g, rng.uniform(1.0, 2.5), rng.uniform(0.6, 1.6) + 1.2 * g))
    remnants = list(zip(sacrum[:-1], sacrum[1:]))

    # --- posterior vertebral line -> curve for the canal, arches and muscles ---
    pts = []
    top = bodies[0]
    a_s, p_s, _, _ = top.corners()
    pts.append(p_s + 160.0 * _n(top.tilt_sup))
    for k, b in enumerate(bodies):
        _, p_s, p_i, _ = b.corners()
        pts += [p_s, p_i]
        if k + 1 < len(bodies):
            nb = bodies[k + 1]
            bulge = next((dd.bulge_post for dd in discs if dd.upper is b), 0.0)
            pts.append(0.5 * (p_i + nb.corners()[1]) + 0.5 * bulge * _u(0.5 * (b.tilt_inf + nb.tilt_sup)))
    last = bodies[-1]
    tail1, tail2 = -_n(last.tilt_inf - 10 * d2r), -_n(last.tilt_inf - 25 * d2r)  # coccyx curls forward
    pts.append(last.corners()[2] + 25.0 * tail1)
    pts.append(last.corners()[2] + 25.0 * tail1 + 140.0 * tail2)
    curve = _Curve(np.array(pts))
    level_s = {b.name: (curve.locate(b.corners()[1]), curve.locate(b.corners()[2])) for b in bodies}

    # canal depth along the curve
    knots_s, knots_v = [0.0], [_NOMINAL["T10"][4] * size]
    for b in bodies:
        s0, s1 = level_s[b.name]
        if b.name in _NOMINAL:
            v = _NOMINAL[b.name][4] * size * rng.uniform(0.92, 1.08)
        else:
            v = {"S1": 13.0, "S2": 9.0, "S3": 6.5, "S4": 4.5, "S5": 2.5}[b.name] * size
        knots_s.append(0.5 * (s0 + s1))
        knots_v.append(v)
    knots_s.append(curve.s[-1])
    knots_v.append(2.0)
    canal = _smooth1d(np.interp(curve.s, knots_s, knots_v), 6.0 / 0.5)

    lamina_t = rng.uniform(5.5, 7.5) * size
    spinous: dict[str, dict] = {}
    tips = []
    for name in levels:
        b = by[name]
        s_top, s_bot = level_s[name]
        length, droop = _NOMINAL[name][5] * size * rng.uniform(0.9, 1.1), _NOMINAL[name][6] + rng.uniform(-4, 4)
        sb0, sb1 = s_top + 0.38 * b.height, s_bot + 1.5
        p0, u0 = curve.at(sb0)
        p1, u1 = curve.at(sb1)
        i0, i1 = np.searchsorted(curve.s, [sb0, sb1])
        base_top = p0 + (canal[min(i0, curve.n - 1)] + lamina_t - 1.5) * u0
        base_bot = p1 + (canal[min(i1, curve.n - 1)] + lamina_t + 1.0) * u1
        um = (u0 + u1) / np.linalg.norm(u0 + u1)
        c, s_ = math.cos(droop * d2r), math.sin(droop * d2r)
        dvec = np.array([c * um[0] - s_ * um[1], s_ * um[0] + c * um[1]])
        e = np.array([dvec[1], -dvec[0]])  # points superior-ish
        tip_h = (0.42 if name.startswith("L") else 0.32) * b.height
        base_mid = 0.5 * (base_top + base_bot)
        tip = base_mid + length * dvec
        spinous[name] = {"base_top": base_top, "base_bot": base_bot, "tip": tip, "d": dvec, "e": e,
                         "tip_h": tip_h}
        tips.append(tip + 2.5 * dvec)
    for s in np.arange(level_s["S1"][0] + 5.0, level_s["S4"][1], 4.0):  # median sacral crest
        p, u = curve.at(s)
        i = np.searchsorted(curve.s, s)
        tips.append(p + (canal[min(i, curve.n - 1)] + 9.0 + 4.0) * u)
    for s in np.linspace(level_s["S5"][1], curve.s[-1], 8):
        p, u = curve.at(s)
        tips.append(p + 14.0 * u)
    p, u = curve.at(0.0)
    tips.insert(0, p + (canal[0] + 40.0) * u)
    tips = np.array(tips)

    ant = [top.corners()[0] + 160.0 * _n(top.tilt_sup)]
    for b in bodies:
        a_s, _, _, a_i = b.corners()
        ant += [a_s, a_i]
    ant.append(last.corners()[3] + 25.0 * tail1)
    ant.append(last.corners()[3] + 25.0 * tail1 + 140.0 * tail2)
    ant = np.array(ant)

    y_grid = np.arange(min(tips[:, 1].min(), ant[:, 1].min()) - 300.0,
                       max(tips[:, 1].max(), ant[:, 1].max()) + 300.0, 1.0)

    def fx(points: np.ndarray, sigma: float) -> np.ndarray:
        o = np.argsort(points[:, 1])
        return _smooth1d(np.interp(y_grid, points[o, 1], points[o, 0]), sigma)

    x_tips = fx(tips, 12.0)
    x_ant = fx(ant, 6.0)
    y_s1 = float(sacrum[0].m_sup[1])
    i_s1 = int(np.searchsorted(y_grid, y_s1))
    floor = x_tips[i_s1] - 0.35 * np.clip(y_grid - y_s1, 0, None)
    x_tips = np.where(y_grid > y_s1, np.maximum(x_tips, floor), x_tips)
    y_l3 = float(by["L3"].m_sup[1])
    # subcutaneous fat: thicker over the buttocks below the sacrum
    fat0 = rng.uniform(10.0, 38.0)
    fat_post = fat0 + 0.6 * fat0 * np.clip((y_grid - y_s1 - 40.0) / 80.0, 0, 1)
    abd_depth = (rng.uniform(95.0, 150.0) + rng.uniform(0.0, 40.0) * np.exp(-((y_grid - y_l3 - 40.0) / 110.0) ** 2))
    # psoas: appears at T12-L1, thickens caudally, drifts anterior over the pelvic brim
    y_ps0 = float(by["T12"].m_inf[1])
    grow = np.clip((y_grid - y_ps0) / max(y_s1 - y_ps0, 1.0), 0, 1)
    psoas_r = (6.0 + 18.0 * grow) * size
    psoas_x = x_ant + 10.0 - 0.7 * np.clip(y_grid - y_s1, 0, None)

    y_bif = float(by["L4"].m_sup[1] + 0.5 * by["L4"].height)
    aorta = (rng.uniform(10.0, 18.0), rng.uniform(8.5, 11.0), y_bif)
    ivc = (-rng.uniform(14.0, 22.0), rng.uniform(9.0, 12.0), float(by["L5"].m_sup[1] + 0.4 * by["L5"].height))

    # bowel loops: 3-D ellipsoids in the abdomen (x rel. to the anterior spine line, y, z, radii, angle, kind)
    loops = []
    y_l1 = float(by["L1"].m_sup[1])
    for _ in range(int(rng.integers(70, 90))):
        yc = rng.uniform(y_l1 - 20.0, y_s1 + 60.0)
        rx, ry, rz = rng.uniform(7, 18), rng.uniform(7, 20), rng.uniform(12, 35)
        depth = float(np.interp(yc, y_grid, abd_depth))
        xoff = rng.uniform(18.0 + max(rx, ry), max(depth - 25.0, 19.0 + max(rx, ry)))
        kind = rng.choice(["fluid", "gas", "feces", "collapsed", "fluid"])
        phi = np.arange(28)[:, None] * (2 * np.pi / 28) * np.array([2.0, 3.0]) + rng.uniform(0, 2 * np.pi, 2)
        wobble = (rng.uniform(0.0, 0.14, 2) * np.cos(phi)).T  # (2, 28): 2nd and 3rd harmonics
        loops.append((xoff, yc, rng.uniform(-50, 50), rx, ry, rz, rng.uniform(0, np.pi), str(kind),
                      rng.uniform(1.5, 3.0), 1.0 + wobble.sum(axis=0)[:, None]))
    pelvis = [  # bladder and rectum: (x offset from anterior sacral line, y, z, rx, ry, rz, kind)
        (rng.uniform(55, 80), float(by["S4"].m_sup[1]) + rng.uniform(0, 25), 0.0,
         rng.uniform(22, 35), rng.uniform(18, 30), 40.0, "urine"),
        (rng.uniform(14, 22), float(by["S3"].m_sup[1]) + 10.0, rng.uniform(-6, 6),
         rng.uniform(10, 16), rng.uniform(22, 32), 18.0, str(rng.choice(["feces", "gas"]))),
    ]

    conus_s = level_s["L1"][0] + rng.uniform(0.3, 1.1) * by["L1"].height
    roots = []
    zs = np.array([-4.6, -2.8, -1.0, 0.9, 2.7, 4.5]) + rng.uniform(-0.3, 0.3, 6)
    ends = [level_s[n][1] for n in ("L2", "L3", "L4", "L5", "S1", "S2")]
    for j, z in enumerate(zs):
        roots.append((float(z), 1.2 + 1.4 * (j % 3), float(ends[int(rng.integers(len(ends)))])))

    tp_len = {name: _NOMINAL[name][7] * size * rng.uniform(0.85, 1.15) for name in levels}
    return _Anatomy(
        lla_deg=lla_deg, bodies=bodies, discs=discs, remnants=remnants, curve=curve, level_s=level_s,
        canal=canal, canal_hw=rng.uniform(9.0, 11.0) * size, sac_hw=rng.uniform(6.5, 7.8) * size,
        lamina_t=lamina_t, spinous=spinous, tp_len=tp_len, conus_s=conus_s, roots=roots, y_grid=y_grid,
        x_tips=x_tips, x_ant=x_ant, fat_post=fat_post, muscle_ridge=rng.uniform(8.0, 20.0),
        abd_depth=abd_depth, fat_ant=rng.uniform(8.0, 35.0), rectus=rng.uniform(7.0, 12.0),
        psoas_r=psoas_r, psoas_x=psoas_x, y_psoas0=y_ps0, aorta=aorta, ivc=ivc, loops=loops,
        pelvis=pelvis, y_liver=float(by["T12"].m_inf[1] + rng.uniform(-5, 25)),
    )


# --------------------------------------------------------------------------------------------
# Rasterisation of one lateral sub-slice
# --------------------------------------------------------------------------------------------
def _fill_exact(img: np.ndarray, pts: np.ndarray, value: int) -> None:
    """Set the pixels whose centres lie inside the polygon (even-odd rule), pts as (col, row) floats.

    cv2.fillPoly also paints pixels its edges merely touch (up to ~1 px outside), which is fine for
    the appearance but would tilt a digitised endplate by up to a degree; labels must be exact.
    """
    h, w = img.shape
    r0, r1 = max(math.ceil(pts[:, 1].min()), 0), min(math.floor(pts[:, 1].max()), h - 1)
    c0, c1 = max(math.ceil(pts[:, 0].min()), 0), min(math.floor(pts[:, 0].max()), w - 1)
    if r1 < r0 or c1 < c0:
        return
    a, b = pts, np.roll(pts, -1, axis=0)
    ys = np.arange(r0, r1 + 1, dtype=np.float64)[:, None]
    lo, hi = np.minimum(a[:, 1], b[:, 1]), np.maximum(a[:, 1], b[:, 1])
    crosses = (ys >= lo) & (ys < hi)  # half-open, so shared vertices count once
    dy = np.where(b[:, 1] == a[:, 1], 1.0, b[:, 1] - a[:, 1])
    xs = np.where(crosses, a[:, 0] + (ys - a[:, 1]) / dy * (b[:, 0] - a[:, 0]), np.inf)
    xs.sort(axis=1)
    cols = np.arange(c0, c1 + 1, dtype=np.float64)[None, :]
    inside = np.zeros((r1 - r0 + 1, c1 - c0 + 1), bool)
    for j in range(0, int(crosses.sum(axis=1).max(initial=0)), 2):
        inside |= (cols >= xs[:, j:j + 1]) & (cols < xs[:, j + 1:j + 2])
    img[r0:r1 + 1, c0:c1 + 1][inside] = value


class _Canvas:
    """Draws each structure twice: tissue classes on a fine raster in anatomical mm (for the
    image), and, when asked, labels straight onto the output pixel grid (exact pixel-centre test)."""

    _SHIFT = 4  # fillPoly fixed-point bits: 1/16 canvas pixel

    def __init__(self, origin: np.ndarray, res: float, shape: tuple[int, int],
                 label_affine: np.ndarray, label_shape: tuple[int, int]):
        self.origin, self.res, self.shape = origin, res, shape
        self.tissue = np.zeros(shape, np.uint8)
        self.label_affine, self.label_shape = label_affine, label_shape  # anat mm -> (col, row) px
        self.labels: np.ndarray | None = None

    def reset(self, with_labels: bool) -> None:
        self.tissue.fill(_TN["air"])
        self.labels = np.zeros(self.label_shape, np.uint8) if with_labels else None

    def poly(self, pts: np.ndarray | None, tissue: str | None, label: int | None = None) -> None:
        if pts is None or len(pts) < 3:
            return
        pts = np.asarray(pts, np.float64)
        if tissue is not None:
            q = np.round((pts - self.origin) / self.res * (1 << self._SHIFT)).astype(np.int32)
            cv2.fillPoly(self.tissue, [q], _TN[tissue], lineType=cv2.LINE_8, shift=self._SHIFT)
        if label is not None and self.labels is not None:
            _fill_exact(self.labels, pts @ self.label_affine[:, :2].T + self.label_affine[:, 2], label)


def _graph_poly(y: np.ndarray, x_left: np.ndarray, x_right: np.ndarray) -> np.ndarray:
    """Polygon between two curves x_left(y) < x_right(y)."""
    return np.concatenate([np.stack([x_left, y], 1), np.stack([x_right, y], 1)[::-1]])


def _draw_subslice(cv: _Canvas, an: _Anatomy, z: float, y_lo: float, y_hi: float) -> None:
    """Paint every structure crossing the sagittal plane at lateral position z (painter's order)."""
    az = abs(z)
    cur = an.curve
    sel = (an.y_grid >= y_lo) & (an.y_grid <= y_hi)
    y = an.y_grid[sel]
    x_ant, x_tips = an.x_ant[sel], an.x_tips[sel]
    far = 2000.0

    # ---- body envelope: skin, subcutaneous fat, back muscles ----
    ridge = an.muscle_ridge * float(np.clip((az - 3.0) / 22.0, 0, 1)) ** 0.7
    fascia = x_tips + 2.0 + ridge
    skin_post = fascia + an.fat_post[sel]
    skin_ant = x_ant - an.abd_depth[sel]
    cv.poly(_graph_poly(y, skin_ant, skin_post), "skin")
    cv.poly(_graph_poly(y, skin_ant + 2.0, skin_post - 2.0), "fat")
    # abdominal contents (filler), liver at the top, then loops and pelvic organs
    wall_in = skin_ant + 2.0 + an.fat_ant + an.rectus
    pre = x_ant - 6.0
    cv.poly(_graph_poly(y, wall_in, pre), "bowel")
    fl = _prof(z + 25.0, 110.0)
    if fl > 0:
        xl = float(np.interp(an.y_liver, an.y_grid, an.x_ant)) - 75.0
        cv.poly(_ellipse(np.array([xl, an.y_liver - 45.0]), 62.0 * fl, 70.0 * fl, np.array([0.9, 0.44])), "liver")
    for xoff, yc, zc, rx, ry, rz, ang, kind, wall, wobble in an.loops:
        f = _prof(z - zc, rz)
        if f <= 0.05 or not (y_lo - 60 < yc < y_hi + 60):
            continue
        c = np.array([float(np.interp(yc, an.y_grid, an.x_ant)) - xoff, yc])
        e1 = np.array([math.cos(ang), math.sin(ang)])
        cv.poly(c + (_ellipse(np.zeros(2), rx * f, ry * f, e1) * wobble), "bowel_wall")  # lumpy loop
        if rx * f > wall + 1 and ry * f > wall + 1:
            inner = {"fluid": "bowel_fluid", "gas": "gas", "feces": "feces", "collapsed": "bowel_wall"}[kind]
            cv.poly(c + _ellipse(np.zeros(2), rx * f - wall, ry * f - wall, e1) * wobble, inner)
    for xoff, yc, zc, rx, ry, rz, kind in an.pelvis:
        f = _prof(z - zc, rz)
        if f <= 0.05:
            continue
        xc = float(np.interp(yc, an.y_grid, an.x_ant)) - xoff - rx
        c = np.array([xc, yc])
        cv.poly(_ellipse(c, rx * f + 2.5, ry * f + 2.5, np.array([1.0, 0.0])), "bowel_wall")
        cv.poly(_ellipse(c, rx * f, ry * f, np.array([1.0, 0.0])), kind)
    # anterior abdominal wall over everything in front: rectus, fat, skin, air outside
    cv.poly(_graph_poly(y, skin_ant - far, wall_in), "muscle")
    cv.poly(_graph_poly(y, skin_ant - far, wall_in - an.rectus), "fat")
    cv.poly(_graph_poly(y, skin_ant - far, skin_ant + 2.0), "skin")
    cv.poly(_graph_poly(y, skin_ant - far, skin_ant), "air")
    # prevertebral / retroperitoneal fat
    cv.poly(_graph_poly(y, pre - 4.0, x_ant + 8.0), "fat")

    # psoas (lateral), great vessels (aorta left, IVC right)
    zc_ps = 22.0 + 0.5 * an.psoas_r[sel]
    half = an.psoas_r[sel] * np.sqrt(np.clip(1.0 - ((az - zc_ps) / (1.1 * an.psoas_r[sel] + 6.0)) ** 2, 0, 1))
    ok = (half > 0.3) & (y > an.y_psoas0)
    if ok.sum() > 2:
        cx = an.psoas_x[sel][ok]
        cv.poly(_graph_poly(y[ok], cx - half[ok], cx + half[ok]), "muscle")
    for (zc, r, y_end), tissue, gap in ((an.aorta, "artery", 2.0), (an.ivc, "vein", 1.5)):
        f = _prof(z - zc, r)
        if f > 0.05:
            m = y < y_end
            if m.sum() > 2:
                taper = np.sqrt(np.clip((y_end - y[m]) / 12.0, 0, 1))
                cx = x_ant[m] - gap - r * 1.05
                cv.poly(_graph_poly(y[m], cx - r * f * taper, cx + r * f * taper), tissue)

    # back muscles: from the arch (or, lateral to the facets, the transverse processes) to the fascia
    canal = an.canal
    if az >= 2.5:
        front = canal + an.lamina_t - 2.0 if az < an.canal_hw + 14.0 else 0.25 * canal
        band = cur.band(0.0, cur.s[-1], front, front + 1.0)
        fr = band[: len(band) // 2]
        fy = np.clip(fr[:, 1], y[0], y[-1])
        back = np.interp(fy, y, fascia)
        poly = np.concatenate([fr, np.stack([back, fy], 1)[::-1]])
        cv.poly(poly, "muscle")

    by = {b.name: b for b in an.bodies}
    names = [b.name for b in an.bodies if b.name in _NOMINAL]
    # midline ligaments between and behind spinous processes
    if az < 3.0:  # interspinous ligaments fill the gaps between processes; supraspinous runs over the tips
        tips = np.array([an.spinous[n]["tip"] + 2.0 * an.spinous[n]["d"] for n in names])
        band = cur.band(an.level_s[names[0]][0], an.level_s["S1"][0] + 6.0, canal + an.lamina_t - 1.0,
                        canal + an.lamina_t)
        cv.poly(np.concatenate([band[: len(band) // 2], tips[::-1]]), "interspinous")
        nrm = np.array([1.0, 0.0])
        cv.poly(np.concatenate([tips - 1.0 * nrm, (tips + 1.8 * nrm)[::-1]]), "ligament")

    # ---- spinal canal ----
    hw = an.canal_hw
    cv.poly(cur.band(0.0, an.level_s["S4"][1], -2.5, canal + 1.0, _prof(z, hw, 4.0)), "epifat")
    if hw - 2.0 < az < hw + 12.0:  # lateral recesses and foramina: fat, then the exiting roots
        cv.poly(cur.band(0.0, an.level_s["S1"][0], -2.5, canal + 1.0), "epifat")
    s_end = an.level_s["S2"][0] + 0.4 * by["S2"].height
    sac_a, sac_b = 1.2 + np.zeros(cur.n), canal - 2.6
    taper = np.sqrt(np.clip((s_end - cur.s) / 25.0, 0, 1))
    mid, halfd = 0.5 * (sac_a + sac_b), 0.5 * (sac_b - sac_a) * taper
    fs = _prof(z, an.sac_hw)
    cv.poly(cur.band(0.0, s_end, mid - halfd, mid + halfd, fs), "csf", LABELS["canal"])
    fc = _prof(z, 4.6)
    if fc > 0:
        cmid = mid + 0.8
        ctaper = np.clip((an.conus_s - cur.s) / 22.0, 0, 1) ** 0.6
        cv.poly(cur.band(0.0, an.conus_s, cmid - 4.0 * ctaper, cmid + 4.0 * ctaper, fc), "cord")
    for zr, back, s_stop in an.roots:
        fr = _prof(z - zr, 0.75)
        if fr > 0:
            off = sac_b - back
            cv.poly(cur.band(an.conus_s - 8.0, s_stop, off - 0.55, off + 0.55, fr), "root")
    if hw - 1.0 < az < hw + 12.0:
        for n in names:
            b = by[n]
            s_top, s_bot = an.level_s[n]
            s_root = s_bot - 0.25 * b.height + 0.6 * (az - hw)
            p, u = cur.at(s_root)
            f = _prof(az - hw - 4.0, 8.0)
            i = min(int(np.searchsorted(cur.s, s_root)), cur.n - 1)
            cv.poly(_ellipse(p + 0.4 * canal[i] * u, 2.6 * f + 0.4, 3.2 * f + 0.4, u), "nerve")

    # ---- posterior elements (label 50): flavum first, then bone ----
    post = LABELS["posterior"]
    if az < hw + 3.0:
        for n0, n1 in zip(names[:-1], names[1:]):
            s0 = an.level_s[n0][1] + 2.0
            s1 = an.level_s[n1][0] + 0.15 * by[n1].height + 2.0
            cv.poly(cur.band(s0, s1, canal - 0.5, canal + 4.0), "ligament")
    fa = _prof(az - hw - 8.5, 7.0, 3.0)
    if fa > 0:  # facet joints: fluid in the gap between consecutive articular pillars
        for n in names[1:] + ["S1"]:
            s_next = an.level_s[n][0]
            cv.poly(cur.band(s_next - 6.6, s_next - 3.0, canal - 2.5, canal + 9.5, fa,
                             s0b=s_next - 3.6, s1b=s_next), "facet")
    for k, n in enumerate(names):
        b = by[n]
        s_top, s_bot = an.level_s[n]
        nxt = names[k + 1] if k + 1 < len(names) else "S1"
        # pedicle: an oval rod from the upper posterior body to the arch
        fp = _prof(az - hw - 5.0, 6.5)
        if fp > 0:
            sc, sh = s_top + 0.27 * b.height, 0.22 * b.height * fp + 0.5
            cv.poly(_chaikin(cur.band(sc - sh, sc + sh, -5.0, canal + 1.0)), "marrow_pe", post)
        # lamina: slopes posteriorly as it descends to overlap the disc below
        if az < hw + 6.0:
            s0, s1 = s_top + 0.15 * b.height, s_bot + 2.0 + 0.4 * b.height * 0.3
            ramp = np.clip((cur.s - s0) / max(s1 - s0, 1.0), 0, 1) * 2.0
            cv.poly(_chaikin(cur.band(s0, s1, canal + ramp, canal + ramp + an.lamina_t), 1), "marrow_pe", post)
        # articular pillar: superior process up to the joint with the level above, skewed joint line
        if fa > 0:
            s_next = an.level_s[nxt][0]
            cv.poly(_chaikin(cur.band(s_top - 4.0, s_next - 5.6, canal - 3.0, canal + 10.0, fa,
                                      s0b=s_top - 1.0, s1b=s_next - 2.6), 1), "marrow_pe", post)
        # transverse process
        z0 = hw + 9.0
        if z0 < az < z0 + an.tp_len[n]:
            ft = 1.0 - 0.45 * (az - z0) / an.tp_len[n]
            p, u = cur.at(s_top + 0.3 * b.height)
            i = min(int(np.searchsorted(cur.s, s_top + 0.3 * b.height)), cur.n - 1)
            cv.poly(_ellipse(p + 0.3 * canal[i] * u, 4.5 * ft, 5.5 * ft, u), "marrow_pe", post)
        # spinous process
        fsp = _prof(z, 4.6, 4.0)
        if fsp > 0:
            sp = an.spinous[n]
            d, e, tip, th = sp["d"], sp["e"], sp["tip"], sp["tip_h"]
            poly = np.array([sp["base_top"], tip + 0.5 * th * e, tip + 2.5 * d + 0.1 * th * e,
                             tip + 2.5 * d - 0.2 * th * e, tip - 0.5 * th * e, sp["base_bot"]])
            axis0 = 0.5 * (sp["base_top"] + sp["base_bot"])
            rel = poly - axis0
            along = rel @ d
            across = rel @ e
            poly = axis0 + np.outer(along, d) + np.outer(across * (0.35 + 0.65 * fsp), e)
            cv.poly(_chaikin(poly, 2), "marrow_pe", post)
    # sacral roof (laminae + median crest) and, lateral to the canal, the solid lateral mass
    s_s1 = an.level_s["S1"][0]
    s_s4 = an.level_s["S4"][1]
    roof_t = 9.0
    if az < hw + 30.0:
        cv.poly(cur.band(s_s1 + 3.0, s_s4, canal - 0.5, canal + roof_t, _prof(z, hw + 30.0, 4.0) ** 0.3),
                "marrow_pe", post)
        if az < 4.0:
            for sname in ("S1", "S2", "S3"):
                s_mid = 0.5 * sum(an.level_s[sname])
                p, u = cur.at(s_mid)
                i = min(int(np.searchsorted(cur.s, s_mid)), cur.n - 1)
                cv.poly(_ellipse(p + (canal[i] + roof_t + 1.0) * u, 5.0, 6.0 * _prof(z, 4.0, 4.0) + 1, u),
                        "marrow_pe", post)
    if az > hw - 1.0:
        lat_len = (s_s4 - s_s1) * _prof(z, 52.0) - 5.0
        top_drop = 4.0 + 10.0 * max(0.0, (az - 20.0) / 30.0)
        if lat_len > 10:
            cv.poly(_chaikin(cur.band(s_s1 + top_drop, s_s1 + lat_len, -3.0, canal + roof_t - 1.0), 2),
                    "marrow_sac", LABELS["S1"])

    # ---- discs (label 30), then vertebral bodies (level labels) ----
    outlines = {b.name: b.outline(z) for b in an.bodies}
    for dsc in an.discs:
        ou, ol = outlines[dsc.upper.name], outlines[dsc.lower.name]
        if ou is None or ol is None:
            continue
        _, _, p_up, a_up = ou[1]
        a_lo, p_lo, _, _ = ol[1]
        nu, nl = _n(dsc.upper.tilt_inf), _n(dsc.lower.tilt_sup)
        um = _u(0.5 * (dsc.upper.tilt_inf + dsc.lower.tilt_sup))
        fl = min(_prof(z, dsc.upper.half_width), _prof(z, dsc.lower.half_width)) ** 0.5
        post_curve = _bezier(p_lo, 0.5 * (p_lo + p_up) + 2.0 * dsc.bulge_post * fl * um, p_up)
        ant_curve = _bezier(a_up, 0.5 * (a_up + a_lo) - 2.0 * dsc.bulge_ant * fl * um, a_lo)
        # outline: 1.5 mm into both bodies (they are painted over it), bulging sides between
        poly = np.concatenate([[a_up + 1.5 * nu, p_up + 1.5 * nu], [p_up], post_curve[::-1][1:-1], [p_lo],
                               [p_lo - 1.5 * nl, a_lo - 1.5 * nl], [a_lo], ant_curve[::-1][1:-1], [a_up]])
        cv.poly(poly, "annulus", LABELS["disc"])
        wn = 0.62 * min(dsc.upper.half_width, dsc.lower.half_width)
        fn = _prof(z, wn)
        if fn > 0.1:
            def q(a: float, b: float) -> np.ndarray:  # bilinear point: a anterior->posterior, b lower->upper
                return (1 - b) * ((1 - a) * a_lo + a * p_lo) + b * ((1 - a) * a_up + a * p_up)
            size = {0: (0.36, 0.37), 1: (0.3, 0.3), 2: (0.2, 0.18)}[dsc.grade]
            ang = np.linspace(0, 2 * np.pi, 24, endpoint=False)
            aa = 0.53 + size[0] * fn * np.cos(ang)
            bb = 0.5 + size[1] * fn * np.sin(ang)
            nuc = np.array([q(a, b) for a, b in zip(aa, bb)])
            cv.poly(nuc, ("nucleus", "nucleus_deg", "nucleus_deg2")[dsc.grade])
            if dsc.grade == 0:
                cl = np.array([q(a, 0.5) for a in np.linspace(0.3, 0.72, 6)])
                tn = np.array([-um[1], um[0]])
                cv.poly(np.concatenate([cl + 0.25 * tn, (cl - 0.25 * tn)[::-1]]), "nucleus_deg")
    for b in an.bodies:
        o = outlines[b.name]
        if o is not None:
            cv.poly(o[0], _TNAMES[b.tissue], b.label)
    # ---- cortex: a shell carved out of all bone ----

    # the sacral segments are fused: bridge the gaps with bone first, so one outer cortex wraps them
    remnant_lines = []
    for up, lo in an.remnants:
        ou, ol = outlines[up.name], outlines[lo.name]
        if ou is None or ol is None:
            continue
        _, _, p_up, a_up = ou[1]
        a_lo, p_lo, _, _ = ol[1]
        cv.poly(np.array([a_up, p_up, p_lo, a_lo]), "marrow_sac", LABELS["S1"])
        remnant_lines.append((0.5 * (a_up + a_lo), 0.5 * (p_up + p_lo)))
    t = cv.tissue
    bone = ((t >= _BONE[0]) & (t <= _BONE[1])).astype(np.uint8)
    r = max(1, int(round(1.1 / cv.res)))
    inner = cv2.erode(bone, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * r + 1, 2 * r + 1)))
    t[(bone > 0) & (inner == 0)] = _TN["cortex"]
    fv = _prof(z, 3.0)
    if fv > 0:  # basivertebral vein: a notch in the middle of the posterior body wall
        for b in an.bodies[:-4]:
            o = outlines[b.name]
            if o is not None:
                _, p_s, p_i, _ = o[1]
                ub = _u(0.5 * (b.tilt_sup + b.tilt_inf))
                cv.poly(_ellipse(0.5 * (p_s + p_i) - 2.0 * ub, 3.5 * fv, 2.0 * fv, ub, 16), "bv_vein")
    for a, p in remnant_lines:  # a faint transverse line where each disc was, short of the cortex
        d = (p - a) / np.linalg.norm(p - a)
        nrm = np.array([-d[1], d[0]])
        a, p = a + 2.0 * d, p - 2.0 * d
        cv.poly(np.array([a + 0.6 * nrm, p + 0.6 * nrm, p - 0.6 * nrm, a - 0.6 * nrm]), "remnant")


# --------------------------------------------------------------------------------------------
# Volume synthesis
# --------------------------------------------------------------------------------------------
def _validate(p: PhantomParams) -> None:
    if p.contrast not in ("t1", "t2"):
        raise ValueError(f"contrast must be 't1' or 't2', got {p.contrast!r}")
    if min(p.slices, p.rows, p.cols) < 1:
        raise ValueError("slices, rows and cols must be positive")
    if min(p.row_spacing_mm, p.col_spacing_mm, p.slice_thickness_mm, p.slice_spacing_mm) <= 0:
        raise ValueError("spacings and slice thickness must be positive")
    if p.lla_deg is not None and not (-30.0 <= p.lla_deg <= 110.0):
        raise ValueError(f"lla_deg must lie in [-30, 110], got {p.lla_deg}")


def make_phantom(params: PhantomParams) -> Phantom:
    """Build the phantom described by `params` (deterministic in params, including the seed)."""
    _validate(params)
    rng = np.random.default_rng(params.seed)
    drawn = float(rng.uniform(20.0, 70.0))  # always drawn, so the anatomy does not depend on whether LLA is given
    lla = drawn if params.lla_deg is None else float(params.lla_deg)
    an = _build_anatomy(rng, lla)
    rot_deg = float(rng.uniform(-8.0, 8.0))
    rs, cs = float(params.row_spacing_mm), float(params.col_spacing_mm)
    fov_h, fov_w = params.rows * rs, params.cols * cs

    # --- placement: rotate the design, then fit L1..S1 superior endplates into the grid ---
    ca, sa = math.cos(math.radians(rot_deg)), math.sin(math.radians(rot_deg))
    rmat = np.array([[ca, -sa], [sa, ca]])  # acts on (x, y) = (col mm, row mm); y down -> clockwise on screen
    by = {b.name: b for b in an.bodies}
    key_pts = []
    for name in _LUMBAR + ("S1",):
        a_s, p_s, _, _ = by[name].corners()
        key_pts += [a_s, p_s]
    key = np.array(key_pts) @ rmat.T
    margin = 12.0
    need_h = float(np.ptp(key[:, 1]) + 2 * margin)
    need_w = float(np.ptp(key[:, 0]) + 2 * margin)
    if fov_h < need_h or fov_w < need_w:
        raise ValueError(
            f"grid too small: {params.rows} x {params.cols} pixels at {rs} x {cs} mm is a "
            f"{fov_h:.1f} x {fov_w:.1f} mm field of view, but the L1..S1 superior endplates of this "
            f"phantom (seed {params.seed}) need at least {need_h:.1f} x {need_w:.1f} mm "
            f"(rows >= {math.ceil(need_h / rs)}, cols >= {math.ceil(need_w / cs)} at this spacing)")
    slack_h = fov_h - need_h
    top = rng.uniform(0.3, 0.75) * slack_h + margin - key[:, 1].min()
    centre_x = np.clip(rng.uniform(0.44, 0.6) * fov_w, need_w / 2, fov_w - need_w / 2)
    left = centre_x - 0.5 * (key[:, 0].min() + key[:, 0].max())
    shift = np.array([left, top])  # image mm = rmat @ anat + shift

    # --- slices ---
    n = params.slices
    lateral_offset = rng.uniform(-0.3, 0.3) * params.slice_spacing_mm
    z_slices = (np.arange(n) - (n - 1) / 2.0) * params.slice_spacing_mm + lateral_offset
    mid = int(np.argmin(np.abs(z_slices)))
    n_sub = max(3, int(math.ceil(params.slice_thickness_mm / 0.9)) | 1)
    sub_off = (np.arange(n_sub) - (n_sub - 1) / 2.0) * params.slice_thickness_mm / n_sub
    sub_w = np.exp(-0.5 * (sub_off / (0.45 * params.slice_thickness_mm)) ** 2)  # soft slice profile
    sub_w = (sub_w / sub_w.sum()).astype(np.float32)

    # --- canvas in anatomical mm covering the field of view ---
    res = float(np.clip(min(rs, cs) / 2.5, 0.2, 0.4))
    corners_img = np.array([[-cs, -rs], [fov_w, -rs], [-cs, fov_h], [fov_w, fov_h]])
    corners_anat = (corners_img - shift) @ rmat  # inverse rotation (rmat orthonormal)
    lo = corners_anat.min(axis=0) - 4.0
    hi = corners_anat.max(axis=0) + 4.0
    shape = (int(math.ceil((hi[1] - lo[1]) / res)) + 1, int(math.ceil((hi[0] - lo[0]) / res)) + 1)
    # anat mm -> output pixel (col, row): rotate, place, divide by the spacing
    label_affine = np.hstack([rmat, shift[:, None]]) / np.array([[cs], [rs]])
    canvas = _Canvas(lo, res, shape, label_affine, (params.rows, params.cols))
    rr, cc = np.meshgrid(np.arange(params.rows, dtype=np.float64), np.arange(params.cols, dtype=np.float64),
                         indexing="ij")
    q = np.stack([cc * cs - shift[0], rr * rs - shift[1]], axis=-1)
    anat_xy = q @ rmat  # anat = rmat^T (img - shift)
    map_x = ((anat_xy[..., 0] - lo[0]) / res).astype(np.float32)
    map_y = ((anat_xy[..., 1] - lo[1]) / res).astype(np.float32)

    # --- intensity tables ---
    col = 0 if params.contrast == "t2" else 1
    tab = np.array(list(_TISSUES.values()), dtype=np.float64)
    base = tab[:, col] * rng.uniform(0.94, 1.06, len(tab))
    base[_TN["air"]] = 0.0
    lut = np.zeros((256, 4), np.float32)
    lut[: len(tab), 0] = base
    lut[: len(tab), 1] = base * tab[:, 2]
    lut[: len(tab), 2] = base * tab[:, 3]
    lut[: len(tab), 3] = base * tab[:, 4]
    lut4 = lut.reshape(256, 1, 4)

    image = np.empty((n, params.rows, params.cols), np.float32)
    labels = np.empty((n, params.rows, params.cols), np.uint8)
    blur_sigma = 0.65 * min(rs, cs) / res  # anti-aliasing plus the mild blur of a real acquisition
    y_lo, y_hi = lo[1] - 5.0, hi[1] + 5.0
    for k in range(n):
        acc = np.zeros(shape + (4,), np.float32)
        for j, dz in enumerate(sub_off):
            centre = j == (n_sub - 1) // 2
            canvas.reset(with_labels=centre)
            _draw_subslice(canvas, an, float(z_slices[k] + dz), y_lo, y_hi)
            t4 = cv2.merge([canvas.tissue] * 4)
            cv2.scaleAdd(cv2.LUT(t4, lut4), float(sub_w[j]), acc, dst=acc)
            if centre:
                labels[k] = canvas.labels
        fine, coarse, stri = _textures(rng, shape, res)
        img = acc[..., 0] + acc[..., 1] * fine + acc[..., 2] * coarse + acc[..., 3] * stri
        img = cv2.GaussianBlur(img, (0, 0), blur_sigma)
        image[k] = cv2.remap(img, map_x, map_y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)

    # --- acquisition: surface-coil bias (posterior bright), gain, Rician noise ---
    x_skin = np.interp(anat_xy[..., 1], an.y_grid, an.x_tips + 2.0 + an.fat_post)
    depth = np.clip(x_skin - anat_xy[..., 0], 0, None)
    falloff = rng.uniform(70.0, 110.0)
    phase, amp_si = rng.uniform(0, 2 * np.pi), rng.uniform(0.03, 0.08)
    bias2d = (0.62 + 0.66 * np.exp(-depth / falloff)) * (1.0 + amp_si * np.sin(anat_xy[..., 1] / 90.0 + phase))
    bias_z = 1.0 - 0.05 * (z_slices / 30.0) ** 2
    bias = np.clip(bias2d[None] * bias_z[:, None, None], 0.6, 1.3).astype(np.float32)
    gain = rng.uniform(0.85, 1.0) * (0.82 if params.contrast == "t1" else 1.0)  # keep fat below 12-bit clipping
    sigma = rng.uniform(0.011, 0.022) * 3300.0
    signal = image * bias * np.float32(gain)
    n1 = rng.standard_normal(signal.shape, dtype=np.float32) * np.float32(sigma)
    n2 = rng.standard_normal(signal.shape, dtype=np.float32) * np.float32(sigma)
    image = np.sqrt((signal + n1) ** 2 + n2 ** 2)
    image = np.clip(image, 0.0, 4095.0).astype(np.float32)

    # --- ground truth in the mid slice ---
    endplates_px: dict[str, tuple[tuple[float, float], tuple[float, float]]] = {}
    endplates_mm: dict[str, tuple[tuple[float, float], tuple[float, float]]] = {}
    z_mid = float(z_slices[mid])
    levels = tuple(nm for nm in _LEVEL_ORDER if np.any(labels == LABELS[nm]))
    for nm in levels:
        o = by[nm].outline(z_mid)
        if o is None:
            continue
        pts = np.array(o[2]) @ rmat.T + shift  # (col mm, row mm)
        px = [(float(p[1] / rs), float(p[0] / cs)) for p in pts]
        if all(0.0 <= r <= params.rows - 1 and 0.0 <= c <= params.cols - 1 for r, c in px):
            endplates_px[nm] = (px[0], px[1])
            endplates_mm[nm] = ((px[0][0] * rs, px[0][1] * cs), (px[1][0] * rs, px[1][1] * cs))

    return Phantom(image=image, labels=labels, params=params, lla_deg=lla, lla_class=classify_lla(lla),
                   inplane_rotation_deg=rot_deg, slice_positions_mm=z_slices.astype(np.float64), mid_slice=mid,
                   levels=levels, superior_endplates_px=endplates_px, superior_endplates_mm=endplates_mm)


def _textures(rng: np.random.Generator, shape: tuple[int, int], res: float):
    """Zero-mean unit-ish texture fields on the canvas: fine speckle, coarse mottling, vertical striation."""
    h, w = shape

    def field_at(step: int, sx_mm: float, sy_mm: float) -> np.ndarray:
        # drawn on a grid `step` times coarser than the canvas (cheaper), blurred, then upsampled
        small = (max(h // step, 4), max(w // step, 4))
        f = cv2.GaussianBlur(rng.standard_normal(small, dtype=np.float32), (0, 0),
                             sigmaX=sx_mm / (step * res), sigmaY=sy_mm / (step * res))
        f = cv2.resize(f, (w, h), interpolation=cv2.INTER_LINEAR)
        return f * np.float32(1.0 / max(float(f.std()), 1e-6))

    return field_at(2, 0.45, 0.45), field_at(8, 3.0, 3.0), field_at(2, 0.5, 5.0)
