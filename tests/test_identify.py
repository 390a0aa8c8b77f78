"""Vertebra identification on hand-built label maps: normal, missing and extra levels."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.identify import identify
from pipeline.labels import CANAL, DISC, LEVEL_VALUES, UNIDENTIFIED_VERTEBRA, VERTEBRA

SPACING = (1.0, 1.0)


def spine(bodies: int, *, sacrum: bool = True, sacrum_height: int = 90, skip_disc: int | None = None,
          canal: bool = True, posterior: bool = True, rows: int = 520) -> np.ndarray:
    """Bodies 26 px high with 8 px discs, stacked upward from a sacrum at the bottom;
    canal behind them, posterior elements behind the canal. Disc k sits above body k
    (counted upward; disc 0 = the lowest, above the sacrum or at the bottom of the view)."""
    m = np.zeros((rows, 220), np.uint8)
    bottom = rows - 1
    if sacrum:
        top = bottom - sacrum_height
        m[top:bottom + 1 if sacrum_height > 80 else bottom - 20, 40:110] = VERTEBRA
        bottom = top - 1
    for k in range(bodies + (1 if sacrum else 0)):
        disc_top = bottom - 7
        if k != skip_disc:
            m[disc_top:bottom + 1, 45:105] = DISC
        bottom = disc_top - 1
        if k == bodies:
            break
        body_top = bottom - 25
        m[body_top:bottom + 1, 40:110] = VERTEBRA
        if posterior:
            m[body_top + 5:bottom - 5, 140:180] = VERTEBRA
        bottom = body_top - 1
    if canal:
        m[max(bottom, 0):, 115:135] = CANAL
    return m


def test_a_full_lumbar_spine_is_labelled_upward_from_s1():
    found = identify(spine(7), SPACING)
    assert list(found.bodies) == ["T11", "T12", "L1", "L2", "L3", "L4", "L5", "S1"]
    assert found.flags == []
    rows = [found.bodies[level].row for level in found.bodies]
    assert rows == sorted(rows)  # superior to inferior


def test_posterior_elements_are_not_counted_as_bodies():
    found = identify(spine(5), SPACING)
    assert list(found.bodies) == ["L1", "L2", "L3", "L4", "L5", "S1"]
    assert all(body.centroid_px[1] < 115 for body in found.bodies.values())


def test_l1_out_of_the_field_of_view_is_flagged_not_invented():
    found = identify(spine(4), SPACING)
    assert list(found.bodies) == ["L2", "L3", "L4", "L5", "S1"]
    assert "l1_not_found" in found.flags


def test_no_sacrum_below_the_lowest_disc_means_nothing_is_labelled():
    found = identify(spine(5, sacrum=False), SPACING)
    assert found.bodies == {}
    assert {"s1_not_found", "l1_not_found"} <= set(found.flags)
    assert len(found.unidentified) == 5


def test_a_missing_disc_is_flagged_where_it_is_missing():
    found = identify(spine(6, skip_disc=3), SPACING)
    assert "disc_not_found:L2-L3" in found.flags


def test_a_short_s1_suggests_a_transitional_vertebra():
    found = identify(spine(6, sacrum_height=30), SPACING)
    assert "S1" in found.bodies  # still labelled by counting, never relabelled
    assert "possible_transitional_vertebra:s1_shaped_like_a_lumbar_body" in found.flags


def test_extra_vertebrae_above_t11_stay_unidentified():
    found = identify(spine(8, rows=560), SPACING)
    assert list(found.bodies)[0] == "T11"
    assert len(found.unidentified) == 1 and "more_vertebrae_than_labelled" in found.flags


def test_without_a_canal_bodies_are_still_found_and_it_is_flagged():
    found = identify(spine(5, canal=False, posterior=False), SPACING)
    assert list(found.bodies) == ["L1", "L2", "L3", "L4", "L5", "S1"]
    assert "canal_not_found" in found.flags


def test_label_map_uses_the_contract_values():
    classes = spine(5)
    found = identify(classes, SPACING)
    labels = found.label_map(classes.shape, classes)
    values = set(np.unique(labels))
    assert {20, 21, 22, 23, 24, 26, 30, 40, UNIDENTIFIED_VERTEBRA} == values - {0}
    l3 = found.bodies["L3"]
    assert (labels[l3.mask] == LEVEL_VALUES["L3"]).all()


@pytest.mark.parametrize("empty", [np.zeros((100, 100), np.uint8)])
def test_an_empty_segmentation_is_flagged(empty):
    found = identify(empty, SPACING)
    assert found.bodies == {} and "no_vertebrae_found" in found.flags
