"""Superior endplates and the Cobb angle, measured in millimetres.

Coordinates: a slice in the canonical layout (rows superior -> inferior, columns anterior ->
posterior) with pixel spacing (row_mm, col_mm). Geometry is done in the image plane in mm
with x = col * col_mm (toward posterior) and y = -row * row_mm (toward superior), so that
non-square pixels change nothing, and angles come from direction vectors with atan2 (no
slopes: vertical lines and angles near or beyond 90 degrees are fine).
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

Point = tuple[float, float]


@dataclass(frozen=True)
class Endplate:
    """A fitted endplate line: end points in pixels (row, col), anterior end first."""

    anterior_px: Point
    posterior_px: Point
    direction_mm: tuple[float, float]  # unit (x posterior, y superior), anterior -> posterior
    support: int  # boundary points on the fitted line (how much edge carried the fit)
    rms_mm: float  # scatter of those points about the line


def to_mm(rows: np.ndarray, cols: np.ndarray, spacing: tuple[float, float]) -> np.ndarray:
    """Pixel positions -> image-plane mm (x posterior, y superior)."""
    return np.stack([np.asarray(cols, float) * spacing[1], -np.asarray(rows, float) * spacing[0]], axis=-1)


def to_px(points_mm: np.ndarray, spacing: tuple[float, float]) -> np.ndarray:
    """Image-plane mm (x, y) -> pixel (row, col)."""
    points_mm = np.asarray(points_mm, float)
    return np.stack([-points_mm[..., 1] / spacing[0], points_mm[..., 0] / spacing[1]], axis=-1)


def signed_angle_deg(d_from: np.ndarray, d_to: np.ndarray) -> float:
    """Angle turning direction d_from onto d_to, degrees in (-180, 180], counter-clockwise positive."""
    cross = d_from[0] * d_to[1] - d_from[1] * d_to[0]
    return float(np.degrees(np.arctan2(cross, float(np.dot(d_from, d_to)))))


def cobb_angle_deg(upper: Endplate, lower: Endplate) -> float:
    """Lordosis between the superior endplates of an upper and a lower vertebra.

    Both directions run anterior -> posterior. Positive = lordosis (the endplates open
    toward posterior, as in a normal lumbar spine), negative = kyphosis.
    """
    return signed_angle_deg(np.asarray(upper.direction_mm), np.asarray(lower.direction_mm))


def boundary_points(mask: np.ndarray, upsample: int = 4) -> np.ndarray:
    """(row, col) points along the outline of a mask, at sub-pixel spacing: a boolean mask, or a
    soft one (values 0..1, e.g. the network's probability around a body) whose 0.5 level is the
    outline.

    The pixel staircase of an oblique edge biases a line fit by up to a degree; the mask is
    smoothed slightly and resampled `upsample` times finer first, so the outline follows
    the edge instead of the pixel corners.
    """
    rows, cols = np.nonzero(mask)
    if len(rows) == 0:
        return np.empty((0, 2))
    r0, c0 = max(rows.min() - 2, 0), max(cols.min() - 2, 0)
    crop = mask[r0:rows.max() + 3, c0:cols.max() + 3].astype(np.float32)
    smooth = cv2.GaussianBlur(crop, (0, 0), 0.7)
    fine = cv2.resize(smooth, (crop.shape[1] * upsample, crop.shape[0] * upsample),
                      interpolation=cv2.INTER_LINEAR) >= 0.5
    fine = fine.astype(np.uint8)
    inner = cv2.erode(fine, np.ones((3, 3), np.uint8), borderType=cv2.BORDER_CONSTANT, borderValue=0)
    fr, fc = np.nonzero(fine & (1 - inner))
    return np.stack([(fr + 0.5) / upsample - 0.5 + r0, (fc + 0.5) / upsample - 0.5 + c0], axis=-1)


def axis_tilt_deg(mask: np.ndarray, spacing: tuple[float, float]) -> float | None:
    """Tilt of a flat structure's long axis (an intervertebral disc), in the tilt convention of
    fit_superior_endplate: the angle of its superior-facing normal from superior, positive toward
    anterior. Principal axis of the pixel positions in mm; None for fewer than 10 pixels."""
    rows, cols = np.nonzero(mask)
    if len(rows) < 10:
        return None
    points = to_mm(rows, cols, spacing)
    _, _, vt = np.linalg.svd(points - points.mean(axis=0), full_matrices=False)
    dx, dy = vt[0] if vt[0][0] >= 0 else -vt[0]  # long axis, anterior -> posterior
    return float(np.degrees(np.arctan2(dy, dx)))


def column_tilt_deg(upper_px: Point, lower_px: Point, spacing: tuple[float, float]) -> float:
    """Tilt, in the convention of fit_superior_endplate, of a line square to the spinal column
    between two vertebral body centroids (pixels, (row, col)): the angle of the direction from
    the lower centroid to the upper one from superior, positive toward anterior.

    An endplate lies within a disc or body wedge (well under 25 deg) of square to the column, so
    this guides the fit where no disc is labelled (the per-level reference masks label bodies
    only): unguided, a body whose posterior wall is straighter than its endplate yields the wall.
    """
    up, low = to_mm(np.array([upper_px[0], lower_px[0]]), np.array([upper_px[1], lower_px[1]]), spacing)
    dx, dy = up - low
    return float(np.degrees(np.arctan2(-dx, dy)))


def square_to_column_deg(above_px: Point | None, centre_px: Point, below_px: Point | None,
                         spacing: tuple[float, float]) -> float | None:
    """column_tilt_deg at a body: toward the body above it, else from the body below, else None."""
    if above_px is not None:
        return column_tilt_deg(above_px, centre_px, spacing)
    return None if below_px is None else column_tilt_deg(centre_px, below_px, spacing)


def fit_superior_endplate(
    mask: np.ndarray,
    spacing: tuple[float, float],
    *,
    max_tilt_deg: float = 75.0,
    expected_tilt_deg: float | None = None,
    tolerance_deg: float = 25.0,
    band_mm: float | None = None,
) -> Endplate | None:
    """The superior endplate of one vertebra, fitted from its mask (boolean or soft, as in
    boundary_points).

    The endplate is the longest straight stretch of the outline that faces superiorly:
    for each candidate tilt of the outward normal (within +/- max_tilt_deg of superior) the
    supporting line of the outline is found, and the tilt whose line carries the most outline
    within a thin band wins; a total-least-squares line through those points is the result.
    Rounded corners, a concave endplate and a tilted body do not disturb it, and nothing
    depends on the pixel grid. Returns None for masks too small to carry a line.

    expected_tilt_deg (e.g. axis_tilt_deg of the disc resting on the endplate) limits the
    candidates to +/- tolerance_deg around it: the sacrum's long anterior surface is straighter
    and longer than the S1 endplate, and, steeply tilted, would otherwise win.
    """
    points_px = boundary_points(mask)
    if len(points_px) < 32:
        return None
    points = to_mm(points_px[:, 0], points_px[:, 1], spacing)
    band = band_mm if band_mm is not None else 1.2 * max(spacing)

    def support(tilts_deg: np.ndarray) -> np.ndarray:
        t = np.radians(tilts_deg)
        normals = np.stack([-np.sin(t), np.cos(t)], axis=-1)  # tilt > 0 turns the normal toward anterior
        heights = points @ normals.T  # (points, tilts)
        return (heights >= heights.max(axis=0) - band).sum(axis=0)

    low, high = -max_tilt_deg, max_tilt_deg
    if expected_tilt_deg is not None:
        low, high = expected_tilt_deg - tolerance_deg, expected_tilt_deg + tolerance_deg
    coarse = np.arange(low, high + 1e-9, 1.0)
    best = coarse[int(np.argmax(support(coarse)))]
    fine = np.arange(best - 1.0, best + 1.0 + 1e-9, 0.05)
    counts = support(fine)
    # The middle of the best plateau, not its first element: ties are common on pixel grids.
    winners = fine[counts == counts.max()]
    tilt = float(np.radians(winners[len(winners) // 2]))
    normal = np.array([-np.sin(tilt), np.cos(tilt)])
    heights = points @ normal
    inliers = points[heights >= heights.max() - band]
    for _ in range(3):  # re-centre the band on the fitted line rather than on the outermost points
        if len(inliers) < 3:
            return None
        centre = inliers.mean(axis=0)
        _, _, vt = np.linalg.svd(inliers - centre)
        direction = vt[0] if vt[0][0] >= 0 else -vt[0]  # anterior -> posterior (x increasing)
        offset = (points - centre) @ np.array([-direction[1], direction[0]])
        inliers = points[np.abs(offset) <= band / 2]
    along = (inliers - centre) @ direction
    ends_mm = centre + np.outer([along.min(), along.max()], direction)
    ends_px = to_px(ends_mm, spacing)
    residual = (inliers - centre) @ np.array([-direction[1], direction[0]])
    return Endplate(
        anterior_px=(float(ends_px[0, 0]), float(ends_px[0, 1])),
        posterior_px=(float(ends_px[1, 0]), float(ends_px[1, 1])),
        direction_mm=(float(direction[0]), float(direction[1])),
        support=int(len(inliers)),
        rms_mm=float(np.sqrt(np.mean(residual**2))),
    )
