"""`lumbarnode analyze`: one series, file or PNG in; the measurement, a mask and a picture out.

This module only reads the input into slices; the method (worker/method.py) measures them
and worker/rendering.py writes the JSON.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from dicom_io.errors import SeriesRefused
from dicom_io.geometry import InPlaneFlip
from dicom_io.reasons import Reason
from dicom_io.series import load_series
from worker import method
from worker.method import Models, SeriesResult, Slices
from worker.settings import Settings


class InputRefused(Exception):
    """The input cannot be analysed."""

    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason


def read_input(path: Path, pixel_spacing: tuple[float, float] | None, settings: Settings) -> Slices:
    if path.suffix.lower() == ".png":
        image = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
        if image is None:
            raise InputRefused(Reason.UNREADABLE_IMAGE, f"{path.name}: not a readable PNG image")
        if image.ndim == 3:
            image = cv2.cvtColor(image[..., :3], cv2.COLOR_BGR2GRAY)
        flags = () if pixel_spacing else ("pixel_spacing_assumed_1mm",)
        return Slices(image[None].astype(np.float32), pixel_spacing or (1.0, 1.0), InPlaneFlip(), flags=flags)
    try:
        series = load_series(path, require_volume=False, max_obliquity_deg=settings.max_obliquity_deg)
    except SeriesRefused as exc:
        raise InputRefused(exc.reason, f"{exc.reason}: {exc}") from exc
    return Slices.of(series, pixel_spacing)


def run(path: Path, models: Models, settings: Settings,
        pixel_spacing: tuple[float, float] | None = None) -> SeriesResult:
    """Read the input and measure it."""
    try:
        slices = read_input(path, pixel_spacing, settings)
    except InputRefused as exc:
        return method.refused(exc.reason, str(exc), models.used())
    return method.measure(slices, models, settings)
