"""`lumbarnode analyze`: one series, file or PNG in; the measurement, a mask and a picture out.

Composition only: dicom_io reads the input, pipeline segments and measures, and the
result is mapped back onto the pixels of the input slice for the JSON and the mask.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from dicom_io.errors import SeriesRefused
from dicom_io.geometry import InPlaneFlip
from dicom_io.series import Series, load_series
from pipeline.analysis import Analysis, AnalysisConfig, analyze, with_member_angles, with_second_opinion
from pipeline.classify import Thresholds
from pipeline.inference import Ensemble, LordosisClassifier, Mirrored
from pipeline.overlay import render_overlay
from worker.settings import Settings

EXIT_MEASURED, EXIT_REFUSED, EXIT_NOT_MEASURED = 0, 2, 3


class InputRefused(Exception):
    """The input cannot be analysed; the message is the one-line reason."""


@dataclass(frozen=True)
class Models:
    segmenter: Ensemble
    classifier: LordosisClassifier | None

    @classmethod
    def load(cls, settings: Settings) -> Models:
        classifier_path = settings.weights(settings.classifier_model)
        return cls(
            segmenter=Ensemble.load(settings.segmentation_weights()),
            classifier=LordosisClassifier(classifier_path) if classifier_path.is_file() else None,
        )


@dataclass(frozen=True)
class Slices:
    """The input as canonical slices, and how to map results back onto its own pixels."""

    pixels: np.ndarray  # (n, rows, cols) canonical
    spacing: tuple[float, float]
    in_plane: InPlaneFlip
    sop_instance_uids: tuple[str, ...] = ()
    flags: tuple[str, ...] = ()


@dataclass(frozen=True)
class Measured:
    """What one run of the method produced: the JSON report and what it was made from."""

    result: dict  # the analyze contract
    analysis: Analysis | None
    slices: Slices | None
    class_maps: np.ndarray | None = None  # (slices, rows, cols) network classes, canonical
    timings: dict[str, float] = field(default_factory=dict)  # inference_s, measurement_s


def slices_of(series: Series, pixel_spacing: tuple[float, float] | None = None) -> Slices:
    return Slices(series.pixels, pixel_spacing or series.pixel_spacing_mm, series.in_plane,
                  tuple(s.sop_instance_uid for s in series.slices), series.warnings)


def read_input(path: Path, pixel_spacing: tuple[float, float] | None, settings: Settings) -> Slices:
    if path.suffix.lower() == ".png":
        image = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
        if image is None:
            raise InputRefused(f"{path.name}: not a readable PNG image")
        if image.ndim == 3:
            image = cv2.cvtColor(image[..., :3], cv2.COLOR_BGR2GRAY)
        flags = () if pixel_spacing else ("pixel_spacing_assumed_1mm",)
        return Slices(image[None].astype(np.float32), pixel_spacing or (1.0, 1.0), InPlaneFlip(), flags=flags)
    try:
        series = load_series(path, require_volume=False, max_obliquity_deg=settings.max_obliquity_deg)
    except SeriesRefused as exc:
        raise InputRefused(f"{exc.reason}: {exc}") from exc
    return slices_of(series, pixel_spacing)


def run(path: Path, models: Models, settings: Settings,
        pixel_spacing: tuple[float, float] | None = None) -> Measured:
    """Read the input and measure it."""
    try:
        slices = read_input(path, pixel_spacing, settings)
    except InputRefused as exc:
        return Measured(refusal(str(exc), models), None, None)
    return measure(slices, models, settings)


NO_COLUMN = frozenset({"no_vertebrae_found", "no_discs_found", "canal_not_found"})


def measure(slices: Slices, models: Models, settings: Settings) -> Measured:
    """Segment every slice, measure on the best one, add the CNN's opinion."""
    started = time.perf_counter()
    members = models.segmenter.member_probabilities(slices.pixels)
    probabilities = members[0] if len(members) == 1 else np.mean(members, axis=0)
    segmented = time.perf_counter()
    class_maps = probabilities.argmax(axis=-1).astype(np.uint8)
    config = AnalysisConfig(thresholds=Thresholds(settings.lla_low_deg, settings.lla_high_deg))
    analysis = with_member_angles(analyze(class_maps, slices.spacing, probabilities, config), members,
                                  slices.spacing, config)
    measured = time.perf_counter()
    timings = {"inference_s": segmented - started, "measurement_s": measured - segmented}
    if not analysis.vertebrae and not NO_COLUMN.isdisjoint(analysis.flags):
        # nothing like a spine: no result objects at all. A column seen whose levels were withheld
        # (no sacrum in view) goes on: its SEG shows the bodies unlabelled and its SR says why.
        result = refusal("no spine found: no vertebral body was identified", models, analysis.flags)
        return Measured(result, analysis, slices, class_maps, timings)
    if models.classifier is not None:
        analysis = with_second_opinion(analysis, models.classifier.probabilities(slices.pixels[analysis.slice_index]))
        timings["inference_s"] += time.perf_counter() - measured
    return Measured(report(analysis, slices, model_block(models)), analysis, slices, class_maps, timings)


def report(analysis: Analysis, slices: Slices, model: dict) -> dict:
    shape = slices.pixels.shape[1:]

    def point(p) -> list[float]:
        return [round(v, 2) for v in slices.in_plane.point_to_source(p[0], p[1], shape)]

    vertebrae = {
        level: {"centroid": point(v.centroid_px),
                "superior_endplate": None if v.superior_endplate_px is None
                else [point(q) for q in v.superior_endplate_px]}
        for level, v in analysis.vertebrae.items()
    }
    out = {
        "lla_deg": None if analysis.lla_deg is None else round(analysis.lla_deg, 2),
        "class": analysis.lla_class,
        "cnn_class": analysis.cnn_class,
        "cnn_probabilities": {k: round(v, 4) for k, v in analysis.cnn_probabilities.items()} or None,
        "flags": [*slices.flags, *analysis.flags],
        "slice_index": analysis.slice_index,
        "vertebrae": vertebrae,
        "model": model,
    }
    if slices.sop_instance_uids:
        out["sop_instance_uid"] = slices.sop_instance_uids[analysis.slice_index]
    if analysis.confidence is not None:
        out["segmentation_confidence"] = round(analysis.confidence, 4)
    if analysis.member_lla_deg:
        # the uncertainty of the angle: what each ensemble member alone measured, and their range
        out["lla_members_deg"] = [None if a is None else round(a, 2) for a in analysis.member_lla_deg]
        out["lla_spread_deg"] = None if analysis.lla_spread_deg is None else round(analysis.lla_spread_deg, 2)
    return out


def refusal(reason: str, models: Models | None, flags=()) -> dict:
    return {"lla_deg": None, "class": None, "cnn_class": None, "cnn_probabilities": None,
            "flags": list(flags), "slice_index": None, "vertebrae": {}, "refused": reason,
            "model": model_block(models) if models else None}


def model_block(models: Models) -> dict:
    block = models.segmenter.info.as_dict()
    if len(models.segmenter.members) > 1:
        block["members"] = [{**member.info.as_dict(), **({"mirrored": True} if isinstance(member, Mirrored) else {})}
                            for member in models.segmenter.members]
    if models.classifier is not None:
        block["classifier"] = models.classifier.info.as_dict()
    return block


def mask_on_source(analysis: Analysis, slices: Slices) -> np.ndarray:
    return slices.in_plane.to_source(analysis.label_map)


def overlay(analysis: Analysis, slices: Slices, notice: str | None = None) -> np.ndarray:
    return render_overlay(slices.pixels[analysis.slice_index], analysis, slices.spacing, notice=notice)


def exit_code(result: dict) -> int:
    if "refused" in result:
        return EXIT_REFUSED
    return EXIT_MEASURED if result["lla_deg"] is not None else EXIT_NOT_MEASURED
