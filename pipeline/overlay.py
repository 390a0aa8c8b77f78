"""A picture of the measurement: the slice, coloured levels, endplate lines, angle and class.

Rendered on square pixels (the slice is resampled to its finer spacing) so that the angle a
person sees is the angle that was measured, whatever the scanner's pixel aspect ratio.
"""

from __future__ import annotations

from collections.abc import Mapping

import cv2
import numpy as np

from pipeline.analysis import Analysis, Point
from pipeline.labels import CANAL_VALUE, DISC_VALUE, LEVEL_VALUES, UNIDENTIFIED_VERTEBRA
from pipeline.preprocess import normalise

# BGR colours per label value: levels in a rainbow from T11 to S1, discs cyan, canal blue.
_LEVEL_COLOURS = {
    "T11": (120, 120, 255), "T12": (80, 80, 220), "L1": (60, 60, 255), "L2": (0, 160, 255),
    "L3": (0, 230, 230), "L4": (60, 220, 60), "L5": (220, 160, 0), "L6": (200, 80, 160), "S1": (200, 0, 200),
}
_COLOURS = {LEVEL_VALUES[k]: v for k, v in _LEVEL_COLOURS.items()}
_COLOURS |= {UNIDENTIFIED_VERTEBRA: (150, 150, 150), DISC_VALUE: (255, 255, 0), CANAL_VALUE: (255, 90, 0)}
_LINE = {"L1": (0, 0, 255), "S1": (255, 0, 255)}


_REFERENCE = (0, 255, 0)  # reference endplates (an evaluation's labels), green


def render_overlay(image: np.ndarray, analysis: Analysis, spacing: tuple[float, float],
                   min_side: int = 512, alpha: float = 0.35, notice: str | None = None,
                   reference: Mapping[str, tuple[Point, Point]] | None = None) -> np.ndarray:
    """BGR uint8 picture of one slice with the analysis drawn on it, the result written in a band
    above it; `notice` is a last line of that band (e.g. "not for primary diagnosis").
    `reference`: endplates from reference labels (level -> anterior and posterior end, pixels),
    drawn in green beside the measured ones, for evaluation pictures (bench/accuracy)."""
    fine = min(spacing)
    scale_r, scale_c = spacing[0] / fine, spacing[1] / fine
    rows, cols = image.shape
    zoom = max(1.0, min_side / max(rows * scale_r, cols * scale_c))
    sr, sc = scale_r * zoom, scale_c * zoom
    size = (int(round(cols * sc)), int(round(rows * sr)))
    grey = (normalise(image) * 255).astype(np.uint8)
    picture = cv2.cvtColor(cv2.resize(grey, size, interpolation=cv2.INTER_LINEAR), cv2.COLOR_GRAY2BGR)
    labels = cv2.resize(analysis.label_map, size, interpolation=cv2.INTER_NEAREST)
    tint = picture.copy()
    for value, colour in _COLOURS.items():
        tint[labels == value] = colour
    picture = cv2.addWeighted(tint, alpha, picture, 1 - alpha, 0)

    def xy(point) -> tuple[int, int]:
        return int(round(point[1] * sc)), int(round(point[0] * sr))

    thickness = max(1, int(round(size[0] / 400)))
    font = cv2.FONT_HERSHEY_SIMPLEX
    text_scale = 0.45 * size[0] / 512
    for level, vertebra in analysis.vertebrae.items():
        cv2.putText(picture, level, xy(vertebra.centroid_px), font, text_scale, (255, 255, 255), thickness, cv2.LINE_AA)
        if vertebra.superior_endplate_px is None:
            continue
        a, b = (np.array(xy(p), float) for p in vertebra.superior_endplate_px)
        if level in _LINE:  # the two Cobb lines, extended beyond the body so they can be read
            d = (b - a) / max(np.linalg.norm(b - a), 1e-6)
            a, b = a - d * 0.6 * np.linalg.norm(b - a), b + d * 1.2 * np.linalg.norm(b - a)
            cv2.line(picture, tuple(a.astype(int)), tuple(b.astype(int)), _LINE[level], thickness + 1, cv2.LINE_AA)
        else:
            cv2.line(picture, tuple(a.astype(int)), tuple(b.astype(int)), (255, 255, 255), thickness, cv2.LINE_AA)
    for a, b in (reference or {}).values():
        cv2.line(picture, xy(a), xy(b), _REFERENCE, thickness, cv2.LINE_AA)
    if analysis.lla_deg is not None:
        headline = f"LLA {analysis.lla_deg:.1f} deg  {analysis.lla_class}"
    else:
        headline = "LLA not measured"
    lines = [headline]
    if analysis.cnn_class:
        p = analysis.cnn_probabilities.get(analysis.cnn_class, 0.0)
        lines.append(f"CNN: {analysis.cnn_class} ({p:.0%})")
    lines += [f"! {flag}" for flag in analysis.flags[:4]]
    if notice:
        lines.append(notice)
    # The text goes in a band above the image, never over the anatomy it describes.
    step = int(22 * text_scale / 0.45)
    header = np.zeros((step * len(lines) + step // 2, picture.shape[1], 3), np.uint8)
    for k, line in enumerate(lines):
        cv2.putText(header, line, (8, step * (k + 1)), font, text_scale * 1.2, (255, 255, 255), thickness,
                    cv2.LINE_AA)
    return np.vstack([header, picture])
