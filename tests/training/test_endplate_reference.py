"""The reference side of the real-data L1-L5 check: per-level masks without discs, where the
endplate fit is guided by the column between neighbouring bodies."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.cobb import fit_superior_endplate
from pipeline.labels import LEVEL_VALUES
from training.measurement import reference_endplate


def _direction_deg(endplate) -> float:
    return float(np.degrees(np.arctan2(endplate.direction_mm[1], endplate.direction_mm[0])))


def _slab(shape, spacing, centre_mm, tilt_deg, depth, height):
    """Pixels (centre inside) of a rectangle in mm whose superior edge runs at tilt_deg."""
    a = np.radians(tilt_deg)
    d, n = np.array([np.cos(a), np.sin(a)]), np.array([-np.sin(a), np.cos(a)])
    rows, cols = np.mgrid[: shape[0], : shape[1]]
    offset = np.stack([cols * spacing[1], -rows * spacing[0]], axis=-1) - np.asarray(centre_mm)
    return (np.abs(offset @ d) <= depth / 2) & (np.abs(offset @ n) <= height / 2)


@pytest.mark.parametrize("spacing", [(1.0, 1.0), (0.8, 1.0)])
def test_a_tall_body_with_a_long_posterior_wall_gets_its_endplate_not_its_wall(spacing):
    """A narrow, tall L5 (a partial lateral cut: 22 mm deep, 40 mm high) tilted 15 deg: its
    posterior wall is the longest straight edge facing partly superior, so the unguided fit takes
    the wall; guided by the column through L4 it takes the endplate."""
    shape = (260, 200)
    labels = np.zeros(shape, np.uint8)
    tilt = 15.0
    a = np.radians(tilt)
    up = np.array([-np.sin(a), np.cos(a)])  # the column's superior direction, square to the endplates
    l5 = np.array([100.0, -180.0])
    l4 = l5 + 50.0 * up
    labels[_slab(shape, spacing, l4, tilt, 36.0, 30.0)] = LEVEL_VALUES["L4"]
    labels[_slab(shape, spacing, l5, tilt, 22.0, 40.0)] = LEVEL_VALUES["L5"]

    free = fit_superior_endplate(labels == LEVEL_VALUES["L5"], spacing)
    assert abs(_direction_deg(free) - tilt) > 30.0  # the failure seen on MyoSegmenTUM 23
    guided = reference_endplate(labels, "L5", spacing)
    assert _direction_deg(guided) == pytest.approx(tilt, abs=1.0)


def test_l1_without_a_body_above_is_guided_by_the_body_below():
    spacing = (1.0, 1.0)
    shape = (200, 200)
    labels = np.zeros(shape, np.uint8)
    tilt = -12.0
    a = np.radians(tilt)
    up = np.array([-np.sin(a), np.cos(a)])
    l2 = np.array([100.0, -120.0])
    labels[_slab(shape, spacing, l2 + 45.0 * up, tilt, 22.0, 38.0)] = LEVEL_VALUES["L1"]
    labels[_slab(shape, spacing, l2, tilt, 36.0, 30.0)] = LEVEL_VALUES["L2"]
    assert _direction_deg(reference_endplate(labels, "L1", spacing)) == pytest.approx(tilt, abs=1.0)
    assert reference_endplate(labels, "L3", spacing) is None  # level absent
