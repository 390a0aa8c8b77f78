"""Per-level labels on every slice of a series, carried out from the measured slice.

Levels are identified on one slice (the measured one, where the disc count from the sacrum
is most reliable). A vertebral body spans several sagittal slices, so a bone pixel of the
next slice takes the level found at the same pixel of the slice before it, outward in both
directions; bone within a few pixels of such a pixel takes the nearest one's level (a body
narrows or shifts slightly from slice to slice). Bone that touches no labelled body, such as
posterior elements, stays "vertebra, level not identified" (19): a level comes from an
identified body or not at all.

Arrays in, arrays out: the network's class maps (slices, rows, cols) and the label map of
the measured slice (values of pipeline.labels) -> a label volume with the same values.
"""

from __future__ import annotations

import cv2
import numpy as np

from pipeline.labels import CANAL, CANAL_VALUE, DISC, DISC_VALUE, LEVEL_VALUES, UNIDENTIFIED_VERTEBRA, VERTEBRA

_LEVEL_VALUE_SET = np.array(sorted(LEVEL_VALUES.values()), np.uint8)
MAX_GROWTH_PX = 3  # how far a level may reach into bone the slice before did not label


def label_slice(class_map: np.ndarray, reference: np.ndarray, max_growth_px: int = MAX_GROWTH_PX) -> np.ndarray:
    """Label one slice's class map with the levels of the adjacent, already-labelled slice."""
    out = np.zeros(class_map.shape, np.uint8)
    out[class_map == CANAL] = CANAL_VALUE
    out[class_map == DISC] = DISC_VALUE
    bone = class_map == VERTEBRA
    out[bone] = UNIDENTIFIED_VERTEBRA
    inherited = bone & np.isin(reference, _LEVEL_VALUE_SET)
    if not inherited.any():
        return out
    out[inherited] = reference[inherited]
    # The rest of the bone takes the level of the nearest inherited pixel, if it is near.
    distance, nearest = cv2.distanceTransformWithLabels(
        (~inherited).astype(np.uint8), cv2.DIST_L2, 5, labelType=cv2.DIST_LABEL_PIXEL)
    level_of_seed = np.zeros(int(nearest.max()) + 1, np.uint8)
    level_of_seed[nearest[inherited]] = reference[inherited]
    grow = bone & ~inherited & (distance <= max_growth_px)
    out[grow] = level_of_seed[nearest[grow]]
    return out


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
