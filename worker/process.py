"""`lumbarnode process`: one series in; the DICOM SEG, SR and key image, and the JSON, out.

Composition only: dicom_io loads the series, the analyze step runs the method, pipeline
labels every slice, dicom_io builds the objects. The same function will serve the worker's
Celery task, which sends the objects instead of writing them.

Outcomes:
- measured: SEG, SR (with the angle), key image; exit 0;
- spine found but not measured (no L1 or S1): SEG, SR without an angle whose flags say why,
  key image; exit 3 (never a number that was not measured);
- refused (not a usable series, or no spine found): no DICOM at all; exit 2 with the reason.
"""

from __future__ import annotations

import dataclasses
import json
import os
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
from pydicom.dataset import Dataset

from dicom_io.errors import SeriesRefused
from dicom_io.key_image import build_key_image
from dicom_io.results import Algorithm, LordosisFinding, Producer
from dicom_io.seg import build_segmentation
from dicom_io.series import Series, load_series
from dicom_io.sr import build_report
from dicom_io.uids import ResultUIDs, check_root
from pipeline.analysis import Analysis
from pipeline.series_labels import series_label_volume
from worker import analyze
from worker.analyze import EXIT_REFUSED, Measured, Models, exit_code
from worker.settings import Settings

KEY_IMAGE_NOTICE = "Derived image - not for primary diagnosis"


@dataclass
class Outputs:
    """The result of processing one series: the JSON, the exit code and the DICOM objects."""

    result: dict
    code: int
    datasets: dict[str, Dataset] = field(default_factory=dict)  # "seg" | "sr" | "key" -> dataset
    timings: dict[str, float] = field(default_factory=dict)  # inference_s, measurement_s, build_s
    overlay_rgb: np.ndarray | None = None  # the key image's picture, also for the admin page

    @property
    def refused(self) -> bool:
        return self.code == EXIT_REFUSED


def process_series(path: Path | list[Path], models: Models, settings: Settings) -> Outputs:
    try:
        series = load_series(path, require_volume=True, max_obliquity_deg=settings.max_obliquity_deg)
    except SeriesRefused as exc:
        return Outputs(analyze.refusal(f"{exc.reason}: {exc}", models), EXIT_REFUSED)
    return process_loaded(series, models, settings)


def process_loaded(series: Series, models: Models, settings: Settings, intake_flags: tuple[str, ...] = ()) -> Outputs:
    """`intake_flags`: what the node saw before the method ran (an incomplete series), carried
    into the JSON, the SR and the key image like the method's own flags."""
    slices = analyze.slices_of(series)
    if intake_flags:
        slices = dataclasses.replace(slices, flags=(*intake_flags, *slices.flags))
    measured = analyze.measure(slices, models, settings)
    code = exit_code(measured.result)
    if code == EXIT_REFUSED:
        return Outputs(measured.result, code, timings=dict(measured.timings))
    started = time.perf_counter()
    analysis = measured.analysis
    finding = lordosis_finding(series, measured, models, settings)
    uids = ResultUIDs.derive(series.series_instance_uid, [s.sop_instance_uid for s in series.slices],
                             _model_key(models), root=check_root(settings.uid_root) if settings.uid_root else None)
    producer = Producer(institution_name=settings.institution_name or None)
    base = _series_number_base(series)
    labels = series_label_volume(measured.class_maps, analysis.slice_index, analysis.label_map)
    seg = build_segmentation(series, labels, finding.segmentation, uids, producer, series_number=base + 1,
                             flags=finding.flags)
    datasets = {"seg": seg, "sr": build_report(series, finding, uids, seg, producer, series_number=base + 2)}
    picture = cv2.cvtColor(analyze.overlay(analysis, measured.slices, notice=KEY_IMAGE_NOTICE), cv2.COLOR_BGR2RGB)
    if settings.key_image:
        datasets["key"] = build_key_image(series, finding, picture, uids, producer, series_number=base + 3)
    result = dict(measured.result)
    result["outputs"] = {kind: {"series_instance_uid": ds.SeriesInstanceUID, "sop_instance_uid": ds.SOPInstanceUID,
                                "series_description": ds.SeriesDescription}
                         for kind, ds in datasets.items()}
    timings = {**measured.timings, "build_s": time.perf_counter() - started}
    return Outputs(result, code, datasets, timings, picture)


def lordosis_finding(series: Series, measured: Measured, models: Models, settings: Settings) -> LordosisFinding:
    """The analysis, in the source image's own pixels, as dicom_io's builders take it."""
    analysis: Analysis = measured.analysis
    shape = series.shape[1:]

    def on_source(point) -> tuple[float, float]:
        return series.in_plane.point_to_source(point[0], point[1], shape)

    endplates = {level: (on_source(v.superior_endplate_px[0]), on_source(v.superior_endplate_px[1]))
                 for level, v in analysis.vertebrae.items() if v.superior_endplate_px is not None}
    classifier = models.classifier
    return LordosisFinding(
        measured_slice=series.slices[analysis.slice_index],
        lla_deg=analysis.lla_deg,
        lla_class=analysis.lla_class,
        thresholds_deg=(settings.lla_low_deg, settings.lla_high_deg),
        endplates=endplates,
        flags=tuple(measured.result["flags"]),
        segmentation=Algorithm(**models.segmenter.info.as_dict()),
        classifier=None if classifier is None else Algorithm(**classifier.info.as_dict()),
        cnn_class=analysis.cnn_class,
        cnn_probabilities=dict(analysis.cnn_probabilities),
        levels=tuple(analysis.vertebrae),
        lla_spread_deg=analysis.lla_spread_deg,
        members=len(models.segmenter.members),
    )


def _model_key(models: Models) -> str:
    parts = [models.segmenter.info.sha256]
    if models.classifier is not None:
        parts.append(models.classifier.info.sha256)
    return "+".join(parts)


def _series_number_base(series: Series) -> int:
    """Results are numbered after their source: series 5 -> 501 (SEG), 502 (SR), 503 (key image)."""
    number = series.headers[0].get("SeriesNumber") if series.headers else None
    try:
        number = int(number)
    except (TypeError, ValueError):
        return 9900
    return number * 100 if 0 < number < 20_000_000 else 9900


def write_outputs(outputs: Outputs, out_dir: Path) -> list[Path]:
    """DIR/seg.dcm, sr.dcm, key.dcm (those made) and result.json, each written atomically."""
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for kind, ds in outputs.datasets.items():
        written.append(_atomic(out_dir / f"{kind}.dcm", lambda p, ds=ds: ds.save_as(p, enforce_file_format=True)))
    if outputs.overlay_rgb is not None:
        png = cv2.imencode(".png", cv2.cvtColor(outputs.overlay_rgb, cv2.COLOR_RGB2BGR))[1].tobytes()
        written.append(_atomic(out_dir / "overlay.png", lambda p: Path(p).write_bytes(png)))
    text = json.dumps(outputs.result, indent=2) + "\n"
    written.append(_atomic(out_dir / "result.json", lambda p: Path(p).write_text(text)))
    return written


def _atomic(path: Path, write) -> Path:
    fd, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    os.close(fd)
    try:
        write(temporary)
        os.chmod(temporary, 0o666 & ~_umask())  # mkstemp makes 0600; results are ordinary files
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    return path


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
