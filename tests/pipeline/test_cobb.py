"""The Cobb computation against hand-built geometry."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.classify import Thresholds, classify_lla
from pipeline.cobb import Endplate, cobb_angle_deg, fit_superior_endplate, signed_angle_deg, to_mm, to_px


def body(tilt_deg: float, spacing, shape=(400, 300), centre_mm=(120.0, -120.0), depth=40.0, height=26.0):
    """A rectangular vertebral body in mm whose superior endplate points at tilt_deg
    (direction anterior -> posterior, counter-clockwise from the posterior axis), rasterised."""
    a = np.radians(tilt_deg)
    d, n = np.array([np.cos(a), np.sin(a)]), np.array([-np.sin(a), np.cos(a)])
    c = np.array(centre_mm)
    corners = [c + sx * depth / 2 * d + sy * height / 2 * n for sx, sy in [(-1, 1), (1, 1), (1, -1), (-1, -1)]]
    rows, cols = np.mgrid[: shape[0], : shape[1]]
    offset = to_mm(rows, cols, spacing) - c  # exact: a pixel is inside when its centre is
    mask = (np.abs(offset @ d) <= depth / 2) & (np.abs(offset @ n) <= height / 2)
    return mask.astype(np.uint8), to_px(np.array(corners), spacing)


def line(direction_deg: float) -> Endplate:
    a = np.radians(direction_deg)
    return Endplate((0, 0), (0, 0), (float(np.cos(a)), float(np.sin(a))), 10, 0.0)


@pytest.mark.parametrize("upper, lower, expected", [
    (-10, 35, 45), (0, 90, 90), (-45, 50, 95), (30, 30, 0), (20, -5, -25), (-89.9, 0.1, 90),
])
def test_cobb_angle_from_direction_vectors(upper, lower, expected):
    # Includes a vertical endplate, exactly 90 degrees, beyond 90, zero, and kyphosis (negative).
    assert cobb_angle_deg(line(upper), line(lower)) == pytest.approx(expected, abs=1e-9)


def test_signed_angle_is_antisymmetric_and_wraps():
    a, b = np.array([1.0, 0.0]), np.array([-1.0, 1e-12])
    assert signed_angle_deg(a, b) == pytest.approx(180.0)
    assert signed_angle_deg(b, a) == pytest.approx(-180.0)


@pytest.mark.parametrize("spacing", [(0.9, 0.9), (0.6, 0.9), (1.0, 0.5)])
@pytest.mark.parametrize("upper, lower", [(-10, 35), (-30, 50), (15, 25), (-20, 60)])
def test_fitted_endplates_give_the_built_angle_on_any_pixel_grid(spacing, upper, lower):
    (m1, _), (m2, _) = body(upper, spacing), body(lower, spacing)
    angle = cobb_angle_deg(fit_superior_endplate(m1, spacing), fit_superior_endplate(m2, spacing))
    assert angle == pytest.approx(lower - upper, abs=1.0)


def test_non_square_pixels_matter():
    # The same mask read with the wrong spacing gives another angle: spacing is used, not ignored.
    spacing = (0.6, 0.9)
    (m1, _), (m2, _) = body(-10, spacing), body(35, spacing)
    right = cobb_angle_deg(fit_superior_endplate(m1, spacing), fit_superior_endplate(m2, spacing))
    wrong = cobb_angle_deg(fit_superior_endplate(m1, (1, 1)), fit_superior_endplate(m2, (1, 1)))
    assert abs(right - 45) < 1.0 and abs(wrong - 45) > 5


def test_endplate_end_points_are_the_superior_corners_anterior_first():
    spacing = (0.6, 0.9)
    mask, corners_px = body(25, spacing)
    endplate = fit_superior_endplate(mask, spacing)
    anterior, posterior = np.array(endplate.anterior_px), np.array(endplate.posterior_px)
    # corners_px[0] is the anterior-superior corner, corners_px[1] the posterior-superior one.
    assert np.linalg.norm((anterior - corners_px[0]) * spacing) < 2.5
    assert np.linalg.norm((posterior - corners_px[1]) * spacing) < 2.5
    assert anterior[1] < posterior[1]


def test_facing_direction_is_handled_by_mirroring_not_by_the_formula():
    # Mirrored left-right, a lordotic pair stays lordotic once mirrored back: the angle's
    # magnitude is the same either way and the sign flips only when read unmirrored.
    spacing = (0.8, 0.8)
    (m1, _), (m2, _) = body(-10, spacing), body(35, spacing)
    forward = cobb_angle_deg(fit_superior_endplate(m1, spacing), fit_superior_endplate(m2, spacing))
    backward = cobb_angle_deg(fit_superior_endplate(m1[:, ::-1], spacing), fit_superior_endplate(m2[:, ::-1], spacing))
    assert forward == pytest.approx(-backward, abs=0.5)


def test_tiny_masks_give_no_endplate():
    mask = np.zeros((20, 20), np.uint8)
    mask[5, 5] = 1
    assert fit_superior_endplate(mask, (1, 1)) is None


def test_mm_and_pixel_conversions_are_inverse():
    rows, cols = np.array([0.0, 10.5, 300.0]), np.array([7.0, 0.0, 123.25])
    back = to_px(to_mm(rows, cols, (0.6, 0.9)), (0.6, 0.9))
    np.testing.assert_allclose(back, np.stack([rows, cols], axis=-1))


@pytest.mark.parametrize("angle, expected", [
    (38.99, "hypolordosis"), (39.0, "normal"), (52.99, "normal"), (53.0, "hyperlordosis"), (-5, "hypolordosis"),
])
def test_rule_class_at_the_thresholds(angle, expected):
    assert classify_lla(angle) == expected


def test_thresholds_are_configurable_and_checked():
    assert classify_lla(45, Thresholds(30, 45)) == "hyperlordosis"
    with pytest.raises(ValueError):
        Thresholds(53, 39)


@pytest.mark.parametrize("spacing", [(0.9, 0.9), (0.6, 0.9)])
@pytest.mark.parametrize("tilt", [-20.0, 0.0, 35.0])
def test_disc_axis_tilt(spacing, tilt):
    from pipeline.cobb import axis_tilt_deg

    disc, _ = body(tilt, spacing, depth=40.0, height=8.0)  # a flat slab: a disc
    assert axis_tilt_deg(disc, spacing) == pytest.approx(tilt, abs=0.5)
    assert axis_tilt_deg(np.zeros((20, 20), bool), spacing) is None


@pytest.mark.parametrize("spacing", [(0.9, 0.9), (0.6, 0.9)])
def test_sacrum_endplate_follows_the_disc_not_the_long_anterior_surface(spacing):
    """A steep sacrum: a short superior endplate (35 mm at 40 deg) on a long body (90 mm): its
    anterior surface is the longest straight edge that faces partly superior. Told how the disc
    above runs, the fit takes the endplate."""
    sacrum, _ = body(40.0, spacing, depth=35.0, height=90.0, centre_mm=(120.0, -160.0))
    free = fit_superior_endplate(sacrum, spacing)
    guided = fit_superior_endplate(sacrum, spacing, expected_tilt_deg=48.0)  # a disc wedge off by 8 deg
    direction = lambda e: np.degrees(np.arctan2(e.direction_mm[1], e.direction_mm[0]))  # noqa: E731
    assert abs(direction(free) - 40.0) > 20.0  # the unguided fit is fooled
    assert direction(guided) == pytest.approx(40.0, abs=0.5)


@pytest.mark.parametrize("spacing", [(0.9, 0.9), (0.6, 0.9)])
@pytest.mark.parametrize("tilt", [-30.0, 0.0, 20.0])
def test_column_tilt_is_square_to_the_line_between_centroids(spacing, tilt):
    from pipeline.cobb import column_tilt_deg

    # Two centroids 30 mm apart along the column's superior direction, which is turned by tilt
    # toward anterior (-x): the endplate square to that column has exactly that tilt.
    a = np.radians(tilt)
    lower_mm = np.array([100.0, -200.0])
    upper_mm = lower_mm + 30.0 * np.array([-np.sin(a), np.cos(a)])
    upper_px, lower_px = to_px(upper_mm, spacing), to_px(lower_mm, spacing)
    got = column_tilt_deg(tuple(upper_px), tuple(lower_px), spacing)
    assert got == pytest.approx(tilt, abs=1e-9)
    # Swapping the bodies turns the column upside down: far from the truth, so the order matters.
    assert abs(column_tilt_deg(tuple(lower_px), tuple(upper_px), spacing) - tilt) > 90
