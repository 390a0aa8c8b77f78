"""What the networks see: one contract for training and inference.

Slices (canonical layout: rows superior -> inferior, columns anterior -> posterior) are
resized to a square network input and their intensities normalised per slice (robust
percentiles onto 0..1), because the training sources differ wildly in scale (8-bit PNG,
12-bit DICOM, normalised NIfTI). Network outputs are resized back onto the slice's own
pixel grid, where every measurement is made in millimetres.
"""

from __future__ import annotations

import cv2
import numpy as np

SEGMENTATION_INPUT = 256  # U-Net input side (pixels); the paper used 320
CLASSIFIER_INPUT = 224  # Deteclordose input side, as in the paper


def normalise(image: np.ndarray) -> np.ndarray:
    """One slice -> float32 in 0..1, using its 0.5th and 99.5th percentiles."""
    image = np.asarray(image, dtype=np.float32)
    low, high = np.percentile(image, [0.5, 99.5])
    if high <= low:
        return np.zeros_like(image)
    return np.clip((image - low) / (high - low), 0.0, 1.0)


def to_network(slices: np.ndarray, size: int = SEGMENTATION_INPUT) -> np.ndarray:
    """(n, rows, cols) or (rows, cols) -> (n, size, size, 1) float32 network input."""
    slices = np.asarray(slices)
    if slices.ndim == 2:
        slices = slices[None]
    out = np.empty((len(slices), size, size, 1), np.float32)
    for i, image in enumerate(slices):
        out[i, ..., 0] = cv2.resize(normalise(image), (size, size), interpolation=cv2.INTER_AREA)
    return out


def classifier_input(images, size: int = CLASSIFIER_INPUT) -> np.ndarray:
    """One slice, or slices of any sizes, as Deteclordose sees them: (n, size, size, 1) on the
    0..255 scale its first layer divides by 255."""
    if isinstance(images, np.ndarray) and images.ndim == 2:
        images = [images]
    return np.concatenate([to_network(image, size) for image in images]) * np.float32(255.0)


def labels_to_network(labels: np.ndarray, size: int = SEGMENTATION_INPUT) -> np.ndarray:
    """(n, rows, cols) integer labels -> (n, size, size) uint8, nearest neighbour."""
    labels = np.asarray(labels)
    if labels.ndim == 2:
        labels = labels[None]
    return np.stack([cv2.resize(l.astype(np.uint8), (size, size), interpolation=cv2.INTER_NEAREST)
                     for l in labels])


def from_network(probabilities: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """(n, size, size, classes) probabilities -> (n, rows, cols, classes) on the slice grid."""
    rows, cols = shape
    out = np.empty((len(probabilities), rows, cols, probabilities.shape[-1]), np.float32)
    for i, p in enumerate(probabilities):
        resized = cv2.resize(p.astype(np.float32), (cols, rows), interpolation=cv2.INTER_LINEAR)
        out[i] = resized.reshape(rows, cols, -1)
    return out
