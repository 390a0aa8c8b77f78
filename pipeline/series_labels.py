"""Per-level labels on every slice of a series, carried out from the measured slice.

Levels are identified on one slice (the measured one, where the disc count from the sacrum
is most reliable). A vertebral body spans several sagittal slices, so each neighbouring
slice inherits the level of the body it overlaps in the slice next to it, outward in both
directions. A piece of bone that overlaps no labelled body, or two of them alike (two
bodies merged where a disc is not visible), stays "vertebra, level not identified" (19):
a level is never guessed.

Arrays in, arrays out: the network's class maps (slices, rows, cols) and the label map of
the measured slice (values of pipeline.labels) -> a label volume with the same values.
"""

from __future__ import annotations

import cv2
import numpy as np

from pipeline.labels import CANAL, CANAL_VALUE, DISC, DISC_VALUE, LEVEL_VALUES, UNIDENTIFIED_VERTEBRA, VERTEBRA

_LEVEL_VALUE_SET = np.array(sorted(LEVEL_VALUES.values()), np.uint8)
MIN_OVERLAP = 0.3  # share of a piece that must lie on one labelled body in the slice before
MAX_RIVAL = 0.25  # a second body may cover at most this share of what the first covers


def label_slice(class_map: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """Label one slice's class map with the levels of the adjacent, already-labelled slice."""
    out = np.zeros(class_map.shape, np.uint8)
    out[class_map == CANAL] = CANAL_VALUE
    out[class_map == DISC] = DISC_VALUE
    bone = (class_map == VERTEBRA).astype(np.uint8)
    count, pieces = cv2.connectedComponents(bone, connectivity=8)
    out[bone > 0] = UNIDENTIFIED_VERTEBRA
    for piece in range(1, count):
        where = pieces == piece
        level = _inherited_level(reference[where], int(where.sum()))
        if level is not None:
            out[where] = level
    return out


def _inherited_level(reference_values: np.ndarray, area: int) -> int | None:
    levels = reference_values[np.isin(reference_values, _LEVEL_VALUE_SET)]
    if levels.size == 0:
        return None
    values, counts = np.unique(levels, return_counts=True)
    order = np.argsort(counts)[::-1]
    best = counts[order[0]]
    rival = counts[order[1]] if len(order) > 1 else 0
    if best < MIN_OVERLAP * area or rival > MAX_RIVAL * best:
        return None
    return int(values[order[0]])


def series_label_volume(class_maps: np.ndarray, measured_index: int, measured_labels: np.ndarray) -> np.ndarray:
    """(slices, rows, cols) uint8 label values for the whole series.

    measured_labels is the label map of slice `measured_index` (Analysis.label_map); it is
    kept as it is, and the other slices inherit levels from it slice by slice.
    """
    class_maps = np.asarray(class_maps)
    if class_maps.ndim != 3:
        raise ValueError(f"class maps must be (slices, rows, cols), got shape {class_maps.shape}")
    if measured_labels.shape != class_maps.shape[1:]:
        raise ValueError(f"label map {measured_labels.shape} does not match slices {class_maps.shape[1:]}")
    volume = np.zeros(class_maps.shape, np.uint8)
    volume[measured_index] = measured_labels
    for step in (-1, 1):
        reference = measured_labels
        index = measured_index + step
        while 0 <= index < len(class_maps):
            reference = volume[index] = label_slice(class_maps[index], reference)
            index += step
    return volume
