"""Label maps for the measurement tests: phantom labels as the network classes, and a disc
painted as bone (the failure the flags name)."""

from __future__ import annotations

import cv2
import numpy as np

from pipeline.labels import CANAL, DISC, VERTEBRA
from pipeline.synthetic.phantom import LABELS


def classes_of(labels: np.ndarray) -> np.ndarray:
    """Phantom per-level labels -> the network's four classes."""
    out = np.zeros(labels.shape, np.uint8)
    vertebra = [v for k, v in LABELS.items() if k not in ("disc", "canal")]
    out[np.isin(labels, vertebra)] = VERTEBRA
    out[labels == LABELS["disc"]] = DISC
    out[labels == LABELS["canal"]] = CANAL
    return out


def disc_drawn_as_bone(labels: np.ndarray, classes: np.ndarray, upper: str, lower: str) -> np.ndarray:
    """A copy of one slice's classes with the disc between two levels (phantom labels) drawn as vertebra."""
    out = classes.copy()
    upper_row, lower_row = (np.nonzero(labels == LABELS[level])[0] for level in (upper, lower))
    if not len(upper_row) or not len(lower_row):
        return out
    count, discs = cv2.connectedComponents((labels == LABELS["disc"]).astype(np.uint8))
    for k in range(1, count):
        if upper_row.mean() < np.nonzero(discs == k)[0].mean() < lower_row.mean():
            out[discs == k] = VERTEBRA
    return out
