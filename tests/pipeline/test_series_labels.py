"""Levels carried from the measured slice to every slice of the series (for the SEG)."""

from __future__ import annotations

import numpy as np

from pipeline.labels import CANAL, DISC, LEVEL_VALUES, UNIDENTIFIED_VERTEBRA, VERTEBRA
from pipeline.series_labels import label_slice, series_label_volume
from pipeline.synthetic.phantom import LABELS, PhantomParams, make_phantom

LEVEL_SET = list(LEVEL_VALUES.values())


def classes_from_truth(labels: np.ndarray) -> np.ndarray:
    classes = np.zeros(labels.shape, np.uint8)
    classes[np.isin(labels, [*LEVEL_SET, LABELS["posterior"]])] = VERTEBRA
    classes[labels == LABELS["disc"]] = DISC
    classes[labels == LABELS["canal"]] = CANAL
    return classes


def test_levels_reach_every_slice_of_a_phantom_without_a_wrong_level():
    phantom = make_phantom(PhantomParams(seed=11, slices=11, rows=256, cols=256))
    truth = phantom.labels
    classes = classes_from_truth(truth)
    mid = phantom.mid_slice
    measured = np.where(truth[mid] == LABELS["posterior"], UNIDENTIFIED_VERTEBRA, truth[mid]).astype(np.uint8)
    volume = series_label_volume(classes, mid, measured)
    np.testing.assert_array_equal(volume[mid], measured)
    bodies = np.isin(truth, LEVEL_SET)
    bodies[mid] = False
    assert bodies.sum() > 10_000
    right = (volume == truth) & bodies
    wrong = np.isin(volume, LEVEL_SET) & (volume != truth) & bodies
    assert right.sum() / bodies.sum() > 0.9
    assert wrong.sum() / bodies.sum() < 0.01
    # discs and canal come straight from the class maps
    np.testing.assert_array_equal(volume == 30, classes == DISC)
    np.testing.assert_array_equal(volume == 40, classes == CANAL)


def test_bone_takes_the_level_it_overlaps_and_bone_far_from_any_level_stays_unidentified():
    reference = np.zeros((40, 30), np.uint8)
    reference[2:10, 5:15] = LEVEL_VALUES["L1"]
    reference[14:22, 5:15] = LEVEL_VALUES["L2"]
    reference[2:22, 20:28] = UNIDENTIFIED_VERTEBRA  # posterior elements
    classes = np.zeros((40, 30), np.uint8)
    classes[2:24, 5:15] = VERTEBRA  # no disc visible between the bodies on this slice
    classes[2:22, 20:28] = VERTEBRA
    classes[30:38, 5:15] = VERTEBRA  # a body the measured slice never saw
    labelled = label_slice(classes, reference)
    assert labelled[5, 10] == LEVEL_VALUES["L1"] and labelled[18, 10] == LEVEL_VALUES["L2"]
    assert labelled[23, 10] == LEVEL_VALUES["L2"]  # two pixels beyond L2 on the slice before
    assert set(np.unique(labelled[30:38, 5:15])) == {UNIDENTIFIED_VERTEBRA}
    assert set(np.unique(labelled[2:22, 20:28])) == {UNIDENTIFIED_VERTEBRA}
