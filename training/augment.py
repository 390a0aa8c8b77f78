"""The paper's geometric augmentation, seeded (every draw comes from the rng passed in).

Segmentation (paper Table 1): rotation in [-45, +45] degrees, horizontal flip, vertical flip.
The paper expanded 509 -> 2036 images, i.e. the original plus one copy per operation; the
on-the-fly equivalent (`mode="paper"`) picks one of {none, rotation, h-flip, v-flip} per draw.
`mode="combined"` applies a rotation and random flips together (stronger, slower to learn).
Image and mask always get the identical transform; masks use nearest neighbour.
Beyond the paper, `intensity=True` also varies the contrast (adjust_contrast): not the paper's
recipe, so off by default.

Classification (paper Table 2): rotations +5, +7, +10 degrees and a 10 % zoom; the LLA is
invariant to both, so the class label is kept. One of {none, +5, +7, +10, zoom} per draw.

Angles follow OpenCV: positive = counter-clockwise on a display with row 0 at the top.
"""

from __future__ import annotations

import cv2
import numpy as np

CLASSIFIER_ROTATIONS_DEG = (5.0, 7.0, 10.0)
CLASSIFIER_ZOOM = 0.10


def warp(image: np.ndarray, angle_deg: float = 0.0, scale: float = 1.0, nearest: bool = False,
         fill: float = 0.0) -> np.ndarray:
    """Rotate by angle_deg and scale about the image centre, same output size."""
    rows, cols = image.shape[:2]
    matrix = cv2.getRotationMatrix2D(((cols - 1) / 2.0, (rows - 1) / 2.0), angle_deg, scale)
    return cv2.warpAffine(image, matrix, (cols, rows), flags=cv2.INTER_NEAREST if nearest else cv2.INTER_LINEAR,
                          borderMode=cv2.BORDER_CONSTANT, borderValue=fill)


def augment_segmentation(image: np.ndarray, mask: np.ndarray, rng: np.random.Generator,
                         max_rotation_deg: float = 45.0, flip_horizontal: bool = True,
                         flip_vertical: bool = True, mode: str = "paper", mask_fill: int = 0,
                         intensity: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """One random draw of the paper's segmentation augmentation, identical on image and mask.
    `mask_fill` fills the corners a rotation brings in (the background value of the mask's code).
    `intensity` adds adjust_contrast on the image (its draws come after the paper's, so a run
    without it draws exactly as before)."""
    ops = ["none"] + (["rotate"] if max_rotation_deg > 0 else []) + (["hflip"] if flip_horizontal else []) \
        + (["vflip"] if flip_vertical else [])
    if mode == "paper":
        chosen = {ops[int(rng.integers(len(ops)))]}
    elif mode == "combined":
        chosen = {"rotate"} | {op for op in ("hflip", "vflip") if op in ops and rng.random() < 0.5}
    else:
        raise ValueError(f"unknown augmentation mode {mode!r}")
    if "rotate" in chosen and max_rotation_deg > 0:
        angle = float(rng.uniform(-max_rotation_deg, max_rotation_deg))
        image = warp(image, angle)
        mask = warp(mask, angle, nearest=True, fill=mask_fill)
    if "hflip" in chosen:
        image, mask = image[:, ::-1], mask[:, ::-1]
    if "vflip" in chosen:
        image, mask = image[::-1], mask[::-1]
    if intensity:
        image = adjust_contrast(image, rng)
    return np.ascontiguousarray(image), np.ascontiguousarray(mask)


def adjust_contrast(image: np.ndarray, rng: np.random.Generator, max_gamma: float = 1.6,
                    max_shading: float = 0.15) -> np.ndarray:
    """A random gamma (1/max_gamma..max_gamma, log-uniform) and a linear shading across the field
    (up to +-max_shading at the edges) on a 0..1 image, min-max normalised again as the network's
    input is. Why: how dark a degenerated disc is against marrow differs between contrasts and
    scanners, and a network that learnt one ratio draws such a disc as bone on another (seen on
    the chemical-shift MRI of MyoSegmenTUM: two bodies joined across a dark disc); coil shading
    makes the same ratio vary across one image."""
    gamma = float(np.exp(rng.uniform(-np.log(max_gamma), np.log(max_gamma))))
    tilt_rows, tilt_cols = rng.uniform(-max_shading, max_shading, 2)
    rows, cols = image.shape[:2]
    shading = (1.0 + tilt_rows * np.linspace(-1, 1, rows)[:, None] + tilt_cols * np.linspace(-1, 1, cols)[None, :])
    out = np.clip(image, 0.0, None) ** gamma * shading.astype(image.dtype)
    low, high = float(out.min()), float(out.max())
    return ((out - low) / (high - low) if high > low else np.zeros_like(out)).astype(image.dtype)


def augment_classification(image: np.ndarray, rng: np.random.Generator,
                           rotations_deg: tuple[float, ...] = CLASSIFIER_ROTATIONS_DEG,
                           zoom: float = CLASSIFIER_ZOOM) -> np.ndarray:
    """One random draw of the paper's classification augmentation (label-preserving)."""
    op = int(rng.integers(len(rotations_deg) + 2))
    if op == 0:
        return image
    if op <= len(rotations_deg):
        return warp(image, rotations_deg[op - 1])
    return warp(image, 0.0, scale=float(rng.uniform(1.0 - zoom, 1.0 + zoom)))


def paper_classification_expansion(image: np.ndarray, rotations_deg: tuple[float, ...] = CLASSIFIER_ROTATIONS_DEG,
                                   zoom: float = CLASSIFIER_ZOOM) -> list[np.ndarray]:
    """The paper's offline expansion of one image: +5, +7, +10 degrees and a 10 % zoom-in
    (514 -> 2056 images: four per original). Offered for offline use; training draws on the fly."""
    return [warp(image, a) for a in rotations_deg] + [warp(image, 0.0, scale=1.0 + zoom)]
