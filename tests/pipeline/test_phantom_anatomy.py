"""The synthetic lumbar phantom: determinism, exact LLA (measured independently from the labels),
label topology, contrast and acquisition sanity, size checks."""

from __future__ import annotations

from functools import lru_cache

import cv2
import numpy as np
import pytest

from pipeline.synthetic.phantom import LABELS, Phantom, PhantomParams, classify_lla, make_phantom

ANISO = dict(rows=448, cols=320, row_spacing_mm=0.6, col_spacing_mm=0.9)
LUMBAR = ("L1", "L2", "L3", "L4", "L5")
K3 = np.ones((3, 3), np.uint8)


@lru_cache(maxsize=None)
def phantom(**kw) -> Phantom:
    return make_phantom(PhantomParams(**kw))


# ---------------------------------------------------------------------------------------------
# An independent LLA measurement: labels and pixel spacing only, nothing from the phantom's internals
# ---------------------------------------------------------------------------------------------
def superior_endplate_normal_deg(body: np.ndarray, disc: np.ndarray, row_mm: float, col_mm: float) -> float:
    """Direction of a body's superior endplate, as the angle (deg) of its upward normal from
    straight up, positive toward the image's right (posterior). Computed in mm.

    1. Coarse: among the body's boundary pixels that face a disc, scan normal directions in 0.1 deg
       steps; for each take the supporting line at the extreme projection onto the upward normal
       and count boundary points within one pixel of it. The best-supported line is the endplate.
    2. Fine: keep the directions for which some line puts every body pixel centre near the edge
       below it and every non-body pixel centre lying on top of the body above it, i.e. the
       directions consistent with the digitised edge, and return the centre of that set.
    """
    m = body.astype(np.uint8)
    edge = (m - cv2.erode(m, K3)).astype(bool) & cv2.dilate(disc.astype(np.uint8), K3, iterations=2).astype(bool)
    r, c = np.nonzero(edge)
    pts = np.stack([c * col_mm, r * row_mm], axis=1)  # (x posterior, y inferior) in mm
    tol = max(row_mm, col_mm)
    ang = np.deg2rad(np.arange(-80.0, 80.05, 0.1))
    proj = np.stack([np.sin(ang), -np.cos(ang)], axis=1) @ pts.T
    support = (proj >= proj.max(axis=1, keepdims=True) - tol).sum(axis=1)
    a0 = ang[np.flatnonzero(support == support.max())].mean()
    n0 = np.array([np.sin(a0), -np.cos(a0)])
    d0 = np.array([-n0[1], n0[0]])
    top = (pts @ n0).max()
    along = pts[pts @ n0 >= top - tol] @ d0
    rr, cc = np.mgrid[0:m.shape[0], 0:m.shape[1]]
    grid = np.stack([cc.ravel() * col_mm, rr.ravel() * row_mm], axis=1)
    t, s = grid @ d0, grid @ n0 - top
    band = np.abs(s) <= 2.5 * tol
    # body pixels lie below the endplate line all along (rounded corners fall away from it), but
    # outside pixels are above it only where they sit on top of the body, not beside its corners
    inside = grid[band & (m.ravel() > 0) & (t >= along.min() - tol) & (t <= along.max() + tol)]
    cand = grid[band & (m.ravel() == 0) & (t >= along.min() + 1.0) & (t <= along.max() - 1.0)]
    on_top = np.zeros(len(cand), bool)
    for k in (1.05, 2.1):  # a body pixel one or two steps straight down (along -normal)
        q = cand - k * tol * n0
        qr = np.clip(np.round(q[:, 1] / row_mm).astype(int), 0, m.shape[0] - 1)
        qc = np.clip(np.round(q[:, 0] / col_mm).astype(int), 0, m.shape[1] - 1)
        on_top |= m[qr, qc] > 0
    outside = cand[on_top]
    fine = a0 + np.deg2rad(np.arange(-4.0, 4.0001, 0.01))
    nf = np.stack([np.sin(fine), -np.cos(fine)], axis=1)
    gap = (nf @ outside.T).min(axis=1) - (nf @ inside.T).max(axis=1)
    best = fine[gap >= 0].mean() if (gap >= 0).any() else fine[np.argmax(gap)]
    return float(np.rad2deg(best))


def measured_lla(labels2d: np.ndarray, row_mm: float, col_mm: float) -> float:
    disc = labels2d == LABELS["disc"]
    a1 = superior_endplate_normal_deg(labels2d == LABELS["L1"], disc, row_mm, col_mm)
    a2 = superior_endplate_normal_deg(labels2d == LABELS["S1"], disc, row_mm, col_mm)
    d = abs(a1 - a2) % 180.0
    return min(d, 180.0 - d)


# ---------------------------------------------------------------------------------------------
def test_same_params_give_identical_volumes_and_seeds_differ():
    a = make_phantom(PhantomParams(seed=11, lla_deg=40.0, slices=5))
    b = make_phantom(PhantomParams(seed=11, lla_deg=40.0, slices=5))
    c = make_phantom(PhantomParams(seed=12, lla_deg=40.0, slices=5))
    assert np.array_equal(a.image, b.image) and np.array_equal(a.labels, b.labels)
    assert a.superior_endplates_px == b.superior_endplates_px
    assert not np.array_equal(a.image, c.image)
    assert not np.array_equal(a.labels, c.labels)


def test_lla_drawn_from_seed_when_not_given():
    ph = phantom(seed=3)
    assert 20.0 <= ph.lla_deg <= 70.0
    assert ph.lla_class == classify_lla(ph.lla_deg)


@pytest.mark.parametrize("lla, seed, contrast, grid", [
    (10.0, 1, "t2", "iso"),
    (25.0, 2, "t1", "iso"),
    (45.0, 3, "t2", "iso"),
    (60.0, 4, "t1", "iso"),
    (80.0, 5, "t2", "iso"),
    (45.0, 6, "t1", "aniso"),
    (30.0, 7, "t2", "aniso"),
])
def test_lla_measured_from_labels_matches_truth(lla, seed, contrast, grid):
    kw = ANISO if grid == "aniso" else {}
    ph = phantom(lla_deg=lla, seed=seed, contrast=contrast, **kw)
    assert ph.lla_deg == lla
    rs, cs = ph.params.row_spacing_mm, ph.params.col_spacing_mm
    measured = measured_lla(ph.labels[ph.mid_slice], rs, cs)
    assert abs(measured - lla) <= 1.5, f"measured {measured:.2f} for truth {lla}"
    # the reported endplate corners give the exact angle (they are the construction, in mm)
    lines = []
    for level in ("L1", "S1"):
        (r0, c0), (r1, c1) = ph.superior_endplates_mm[level]
        lines.append(np.degrees(np.arctan2(r1 - r0, c1 - c0)))
    assert abs(abs(lines[1] - lines[0]) - lla) < 1e-6


def test_anisotropic_spacing_matters():
    ph = phantom(lla_deg=45.0, seed=6, contrast="t1", **ANISO)
    lab = ph.labels[ph.mid_slice]
    physical = measured_lla(lab, 0.6, 0.9)
    naive = measured_lla(lab, 1.0, 1.0)  # pretending the pixels are square
    assert abs(physical - 45.0) <= 1.5
    assert abs(naive - 45.0) > 5.0, f"pixel-unit angle {naive:.2f} should differ clearly"


def test_classification_boundaries():
    assert classify_lla(38.99) == "hypolordosis"
    assert classify_lla(39.0) == "normal"
    assert classify_lla(52.99) == "normal"
    assert classify_lla(53.0) == "hyperlordosis"
    assert phantom(lla_deg=25.0, seed=2, contrast="t1").lla_class == "hypolordosis"
    assert phantom(lla_deg=45.0, seed=3, contrast="t2").lla_class == "normal"
    assert phantom(lla_deg=60.0, seed=4, contrast="t1").lla_class == "hyperlordosis"


@pytest.mark.parametrize("seed, lla", [(3, 45.0), (5, 80.0)])
def test_label_topology_in_mid_slice(seed, lla):
    ph = phantom(lla_deg=lla, seed=seed, contrast="t2")
    lab = ph.labels[ph.mid_slice]
    for name in LUMBAR + ("S1", "disc", "canal"):
        assert (lab == LABELS[name]).any(), f"{name} missing from the mid slice"
    assert {"T12", "L1", "L2", "L3", "L4", "L5", "S1"} <= set(ph.levels)
    centroids = []
    for name in LUMBAR:
        n, _, _, cent = cv2.connectedComponentsWithStats((lab == LABELS[name]).astype(np.uint8), connectivity=8)
        assert n - 1 == 1, f"{name} is {n - 1} components"
        centroids.append(cent[1])
    # each pair of consecutive bodies has exactly one disc between them
    n, _, stats, dcent = cv2.connectedComponentsWithStats((lab == LABELS["disc"]).astype(np.uint8), connectivity=8)
    dcent = dcent[1:][stats[1:, cv2.CC_STAT_AREA] > 20]
    for upper, lower in zip(centroids[:-1], centroids[1:]):
        seg = lower - upper
        t = (dcent - upper) @ seg / (seg @ seg)
        off = np.abs((dcent - upper) @ np.array([-seg[1], seg[0]])) / np.linalg.norm(seg)
        between = (t > 0.2) & (t < 0.8) & (off < 0.5 * np.linalg.norm(seg))
        assert between.sum() == 1
    # and a disc touches both L5 and S1
    grow = lambda name: cv2.dilate((lab == LABELS[name]).astype(np.uint8), K3, iterations=2).astype(bool)
    n, comp = cv2.connectedComponents((lab == LABELS["disc"]).astype(np.uint8), connectivity=8)
    assert any((comp[grow("L5")] == k).any() and (comp[grow("S1")] == k).any() for k in range(1, n))


def test_lateral_slices_show_less_vertebra():
    ph = phantom(lla_deg=45.0, seed=3, contrast="t2")
    ids = [LABELS[n] for n in LUMBAR]
    count = [int(np.isin(ph.labels[k], ids).sum()) for k in range(ph.labels.shape[0])]
    mid = ph.mid_slice
    assert abs(ph.slice_positions_mm[mid]) <= 0.5 * ph.params.slice_spacing_mm
    assert np.all(np.diff(ph.slice_positions_mm) > 0)
    assert count[0] < 0.5 * count[mid] and count[-1] < 0.5 * count[mid]
    assert count[mid] > 0


@pytest.mark.parametrize("key", [dict(lla_deg=45.0, seed=3, contrast="t2"), dict(lla_deg=45.0, seed=6, contrast="t1", **ANISO)])
def test_endplate_points_lie_on_their_label_boundary(key):
    ph = phantom(**key)
    lab = ph.labels[ph.mid_slice]
    assert {"L1", "L2", "L3", "L4", "L5", "S1"} <= set(ph.superior_endplates_px)
    rs, cs = ph.params.row_spacing_mm, ph.params.col_spacing_mm
    for level, ends in ph.superior_endplates_px.items():
        m = (lab == LABELS[level]).astype(np.uint8)
        r, c = np.nonzero(m - cv2.erode(m, K3))
        for (pr, pc), mm in zip(ends, ph.superior_endplates_mm[level]):
            assert np.hypot(r - pr, c - pc).min() <= 1.5, f"{level} point {(pr, pc)} is off its boundary"
            assert mm == pytest.approx((pr * rs, pc * cs))
        # anterior end is the one nearer the front (smaller column)
        assert ends[0][1] < ends[1][1]
    # S1 slopes down anteriorly (sacral slope)
    (ra, _), (rp, _) = ph.superior_endplates_px["S1"]
    assert ra > rp


@pytest.mark.parametrize("contrast", ["t2", "t1"])
def test_image_sanity_and_contrast(contrast):
    ph = phantom(lla_deg=45.0, seed=3, contrast=contrast)
    p = ph.params
    assert ph.image.shape == ph.labels.shape == (p.slices, p.rows, p.cols)
    assert ph.image.dtype == np.float32 and ph.labels.dtype == np.uint8
    assert np.isfinite(ph.image).all() and ph.image.min() >= 0 and ph.image.max() <= 4095
    assert set(np.unique(ph.labels)) <= set(LABELS.values()) | {0}
    im, lab = ph.image[ph.mid_slice], ph.labels[ph.mid_slice]
    bodies = im[np.isin(lab, [LABELS[n] for n in LUMBAR])].mean()
    canal = im[lab == LABELS["canal"]].mean()
    disc = im[lab == LABELS["disc"]].mean()
    if contrast == "t2":
        assert canal > 1.5 * bodies  # CSF bright, marrow intermediate
    else:
        assert bodies > 1.5 * canal  # fatty marrow bright, CSF dark
        assert bodies > disc
    # the darkest pixels (air, gas, cortex) carry Rician noise: non-zero spread, low level
    dark = np.sort(ph.image.ravel())[: ph.image.size // 100]
    assert dark.std() > 0 and dark.mean() < 0.1 * bodies


def test_grid_too_small_raises():
    with pytest.raises(ValueError, match="grid too small"):
        make_phantom(PhantomParams(rows=120, cols=320))
    with pytest.raises(ValueError, match="grid too small"):
        make_phantom(PhantomParams(rows=320, cols=40))
    with pytest.raises(ValueError):
        make_phantom(PhantomParams(contrast="pd"))
