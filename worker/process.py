"""`lumbarnode process`: one series in; the DICOM SEG, SR and key image, and the JSON, out.

The same method service as the worker's jobs (worker/method.py: `run_series`); this module
only loads the series the command was given. Exit codes: 0 measured, 3 a spine but not
measured (SEG and SR say why), 2 refused (no DICOM at all, the reason in the JSON).
"""

from __future__ import annotations

from pathlib import Path

from dicom_io.errors import SeriesRefused
from dicom_io.series import load_series
from worker import method
from worker.method import Models, SeriesResult
from worker.settings import Settings


def process_series(path: Path | list[Path], models: Models, settings: Settings) -> SeriesResult:
    try:
        series = load_series(path, require_volume=True, max_obliquity_deg=settings.max_obliquity_deg)
    except SeriesRefused as exc:
        return method.refused(exc.reason, f"{exc.reason}: {exc}", models.used())
    return method.run_series(series, models, settings)
