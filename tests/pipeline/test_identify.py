"""Vertebra identification on hand-built label maps: normal, missing and extra levels."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.analysis import superior_endplates
from pipeline.identify import identify
from pipeline.labels import CANAL, DISC, LEVEL_VALUES, UNIDENTIFIED_VERTEBRA, VERTEBRA

SPACING = (1.0, 1.0)


def spine(bodies: int, *, sacrum: bool = True, sacrum_height: int = 90, skip_disc: int | None = None,
          partial_disc: int | None = None, bone_disc: int | None = None, canal: bool = True, posterior: bool = True,
          rows: int = 520) -> np.ndarray:
    """Bodies 26 px high with 8 px discs, stacked upward from a sacrum at the bottom;
    canal behind them, posterior elements behind the canal. Disc k sits above body k - 1
    (counted upward; disc 0 = the lowest, above the sacrum or at the bottom of the view).
    A partial disc is drawn in its middle only, bone joining the bodies around its ends;
    a bone disc is drawn all bone (a degenerated disc the network took for bone)."""
    m = np.zeros((rows, 220), np.uint8)
    bottom = rows - 1
    if sacrum:
        top = bottom - sacrum_height
        m[top:bottom + 1 if sacrum_height > 80 else bottom - 20, 40:110] = VERTEBRA
        bottom = top - 1
    for k in range(bodies + (1 if sacrum else 0)):
        disc_top = bottom - 7
        if k == bone_disc:
            m[disc_top:bottom + 1, 40:110] = VERTEBRA
        elif k == partial_disc:
            m[disc_top:bottom + 1, 40:111] = VERTEBRA
            m[disc_top:bottom + 1, 55:96] = DISC
        elif k != skip_disc:
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


def test_bodies_joined_around_a_partly_drawn_disc_are_cut_apart_and_flagged():
    joined = spine(7, partial_disc=5)  # T12 and L1 joined
    found = identify(joined, SPACING)
    assert list(found.bodies) == ["T11", "T12", "L1", "L2", "L3", "L4", "L5", "S1"]
    assert "bodies_separated_at_disc:T12-L1" in found.flags
    separate = identify(spine(7), SPACING)
    # each part ends at the disc's surface: the same rows as the bodies drawn apart
    for level in ("T12", "L1"):
        assert abs(found.bodies[level].row - separate.bodies[level].row) < 3
        assert abs(found.bodies[level].height_mm - separate.bodies[level].height_mm) <= 2


@pytest.mark.parametrize("disc, pair", [(0, "L5-S1"), (1, "L4-L5"), (3, "L2-L3")])
def test_the_flag_names_the_levels_cut_apart(disc, pair):
    found = identify(spine(5, partial_disc=disc), SPACING)
    assert list(found.bodies) == ["L1", "L2", "L3", "L4", "L5", "S1"]
    assert found.flags == [f"bodies_separated_at_disc:{pair}"]


def test_a_column_drawn_as_one_piece_is_cut_at_every_disc():
    classes = spine(7)
    for k in range(8):  # every disc, the one above the sacrum included, drawn only in its middle
        classes = np.maximum(classes, spine(7, partial_disc=k) * (spine(7, partial_disc=k) == VERTEBRA))
        classes[spine(7, partial_disc=k) == DISC] = DISC
    found = identify(classes, SPACING)
    assert list(found.bodies) == ["T11", "T12", "L1", "L2", "L3", "L4", "L5", "S1"]
    pairs = ["T11-T12", "T12-L1", "L1-L2", "L2-L3", "L3-L4", "L4-L5", "L5-S1"]
    assert [f for f in found.flags if f.startswith("bodies_separated")] == [f"bodies_separated_at_disc:{p}" for p in pairs]


def test_a_blob_below_every_body_is_not_the_disc_above_s1():
    classes = spine(5)
    classes[-6:-2, 70:80] = DISC  # a fragment low in the pelvis, in front of the canal's line
    found = identify(classes, SPACING)
    assert list(found.bodies) == ["L1", "L2", "L3", "L4", "L5", "S1"]


def test_bone_drawn_inside_a_degenerated_disc_takes_no_level():
    classes = spine(6)
    bottom = int(identify(classes, SPACING).bodies["L4"].mask.nonzero()[0].max())
    classes[bottom + 2:bottom + 8, 50:100] = VERTEBRA  # a sliver inside the L4-L5 disc space
    found = identify(classes, SPACING)
    assert list(found.bodies) == ["T12", "L1", "L2", "L3", "L4", "L5", "S1"]
    assert any(abs(piece.row - (bottom + 4.5)) < 2 for piece in found.unidentified)


@pytest.mark.parametrize("disc, level", [(1, "L5"), (3, "L3")])
def test_two_bodies_joined_by_a_disc_drawn_as_bone_are_flagged_not_silently_counted_as_one(disc, level):
    found = identify(spine(6, bone_disc=disc), SPACING)
    # one level short, and nothing else says so: the flag is the only warning that every level
    # from the joined body upward may be one off
    assert list(found.bodies) == ["L1", "L2", "L3", "L4", "L5", "S1"]
    assert found.flags == [f"possible_fused_bodies:{level}"]
    assert identify(spine(6), SPACING).flags == []


def test_thoracic_bodies_joined_above_l1_shift_no_lumbar_level_and_are_not_flagged():
    found = identify(spine(7, bone_disc=6), SPACING)  # T11 joined to T12
    assert list(found.bodies) == ["T12", "L1", "L2", "L3", "L4", "L5", "S1"]
    assert found.flags == []


def test_a_body_cut_by_the_image_top_is_not_taken_for_two():
    classes = spine(6, bone_disc=5)[235:]  # L1 joined to what the view shows of T12 above it
    found = identify(classes, SPACING)
    top = found.bodies["L1"]
    assert top.cut_by_top and top.height_mm > 1.8 * found.bodies["L3"].height_mm  # tall, but partly out of view
    assert not any(flag.startswith("possible_fused_bodies") for flag in found.flags)


def test_l1_joined_to_a_t12_cut_by_the_image_top_gets_its_own_endplate():
    classes = spine(6, partial_disc=5)[235:]  # the top 10 rows of T12 outside the view
    found = identify(classes, SPACING)
    assert list(found.bodies) == ["T12", "L1", "L2", "L3", "L4", "L5", "S1"]
    endplate = superior_endplates(found, SPACING)["L1"]
    assert endplate is not None
    assert abs(endplate.direction_mm[1]) < 0.02  # level, as the drawn disc
    assert endplate.anterior_px[0] == pytest.approx(found.bodies["L1"].mask.nonzero()[0].min(), abs=1.5)


def test_a_spot_inside_a_body_of_normal_height_does_not_split_it():
    classes = spine(7)
    l3 = identify(classes, SPACING).bodies["L3"]
    r, c = (int(v) for v in l3.centroid_px)
    classes[r - 2:r + 2, c - 15:c + 15] = DISC  # a bright basivertebral vein read as disc
    found = identify(classes, SPACING)
    assert list(found.bodies) == ["T11", "T12", "L1", "L2", "L3", "L4", "L5", "S1"]
    assert not any(flag.startswith("bodies_separated_at_disc") for flag in found.flags)


def test_bone_away_from_the_column_takes_no_level():
    classes = np.pad(spine(5), ((0, 0), (160, 0)))
    l3 = identify(classes, SPACING).bodies["L3"]
    r = int(l3.centroid_px[0])
    classes[r - 13:r + 13, 5:40] = VERTEBRA  # a bowel wall in front of the spine, at L3's height
    found = identify(classes, SPACING)
    assert list(found.bodies) == ["L1", "L2", "L3", "L4", "L5", "S1"]
    assert all(body.centroid_px[1] > 160 for body in found.bodies.values())
    assert any(piece.centroid_px[1] < 40 for piece in found.unidentified)


def test_posterior_elements_beside_bodies_take_no_level_when_the_canal_is_missed():
    found = identify(spine(5, canal=False), SPACING)
    assert list(found.bodies) == ["L1", "L2", "L3", "L4", "L5", "S1"]
    assert all(body.centroid_px[1] < 115 for body in found.bodies.values())
    assert "canal_not_found" in found.flags


def test_fluid_in_a_facet_joint_behind_the_canal_is_no_disc():
    classes = spine(5)
    l3 = identify(classes, SPACING).bodies["L3"]
    top = int(l3.mask.nonzero()[0].min())
    for k in range(30):  # a steep streak of "disc" between the posterior elements, just above L3
        classes[top - 4 - k // 2:top - 1 - k // 2, 140 + k] = DISC
    found = identify(classes, SPACING)
    assert all(disc.centroid_px[1] < 115 for disc in found.discs)
    assert abs(superior_endplates(found, SPACING)["L3"].direction_mm[1]) < 0.02  # guided by L3's own disc


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


def test_a_disc_drawn_as_something_else_does_not_turn_the_endplate_below_it():
    classes = spine(5)
    l3_top = int(identify(classes, SPACING).bodies["L3"].mask.nonzero()[0].min())
    # between L2 and L3 only a strip along the front of the bodies was read as disc (a ligament):
    # its long axis is vertical, and L3's endplate searched around it would be L3's front wall
    classes[l3_top - 8:l3_top][classes[l3_top - 8:l3_top] == DISC] = 0
    classes[l3_top - 30:l3_top + 10, 30:38] = DISC
    found = identify(classes, SPACING)
    assert list(found.bodies) == ["L1", "L2", "L3", "L4", "L5", "S1"]
    endplate = superior_endplates(found, SPACING)["L3"]
    assert abs(endplate.direction_mm[1]) < 0.02  # level, square to the column



def _cut_through(classes: np.ndarray, level: str, share: float) -> np.ndarray:
    """The map with every row below `share` of `level`'s height removed (a smaller field of view)."""
    rows = identify(classes, SPACING).bodies[level].mask.nonzero()[0]
    return classes[:int(rows.min() + share * (rows.max() - rows.min())) + 1]


@pytest.mark.parametrize("level, share", [("L4", 0.5), ("L3", 1.0), ("L5", 0.7)])
def test_a_lumbar_body_cut_by_the_bottom_of_the_image_is_not_taken_for_s1(level, share):
    # issue 25: a view ending in L4 was labelled upward from L4 as S1 (L2..S1 on T11..L3)
    found = identify(_cut_through(spine(7), level, share), SPACING)
    assert found.bodies == {}
    assert {"s1_not_found", "l1_not_found"} <= set(found.flags)
    assert len(found.unidentified) >= 5


def _sacral_top_in_view(tilt_deg: float, sacrum_rows: int = 30) -> np.ndarray:
    """spine(5) whose view ends `sacrum_rows` below the top of S1, the lowest disc and the top
    of the sacrum tilted by tilt_deg, anterior end lower (the sacral base facing forward)."""
    classes = spine(5)
    l5_bottom = int(identify(classes, SPACING).bodies["L5"].mask.nonzero()[0].max())
    top = l5_bottom + 10  # the sacral surface at its posterior end
    classes = classes[:top + sacrum_rows].copy()
    front = classes[l5_bottom + 1:, :115]
    front[front != CANAL] = 0
    drop = np.tan(np.radians(tilt_deg))
    for col in range(40, 111):
        surface = top + int(round((110 - col) * drop)) - (l5_bottom + 1)
        if 45 <= col <= 105:
            front[max(surface - 8, 0):surface, col] = DISC
        front[surface:, col] = VERTEBRA
    return classes


def test_a_sacrum_seen_only_at_its_top_keeps_its_levels_flagged_unconfirmed():
    # MyoSegmenTUM's view ends 20-40 mm into S1: only the tilt of its top tells it from L5
    found = identify(_sacral_top_in_view(28.0), SPACING)
    assert list(found.bodies) == ["L1", "L2", "L3", "L4", "L5", "S1"]
    assert found.bodies["S1"].mask[-1].any()  # cut by the bottom of the image
    assert "levels_unconfirmed" in found.flags


def test_a_body_cut_by_the_bottom_with_a_flat_top_is_no_sacrum_whatever_its_disc():
    found = identify(_sacral_top_in_view(0.0), SPACING)
    assert found.bodies == {} and "s1_not_found" in found.flags


def test_a_sacrum_seen_whole_or_tall_is_s1_without_a_doubt():
    for classes in (spine(5), spine(6, sacrum_height=30), _cut_through(spine(5), "S1", 0.6)):
        found = identify(classes, SPACING)
        assert "S1" in found.bodies and "L5" in found.bodies
        assert "levels_unconfirmed" not in found.flags and "s1_not_found" not in found.flags
