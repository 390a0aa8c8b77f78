"""The method as one service: slices (or a loaded series) and the networks in, one typed
`SeriesResult` out.

Every way in runs through here: `lumbarnode analyze` (a PNG, a DICOM file or a series),
`lumbarnode process` and the worker's jobs. The worker stores the result's fields; the two
commands only render it (worker/rendering.py: the JSON, the files, the exit code).

Outcomes:
- MEASURED: the angle, its class and the result objects (SEG, SR, key image for a series);
- NOT_MEASURED: a spine, but no angle (no L1 or S1 in view): the result objects say why in
  their flags, and never carry a number that was not measured;
- REFUSED: not a usable input, or nothing like a spine: no result objects, a reason.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from enum import StrEnum

import cv2
import numpy as np
from pydicom.dataset import Dataset

from dicom_io.geometry import InPlaneFlip
from dicom_io.key_image import build_key_image
from dicom_io.reasons import Reason
from dicom_io.results import Algorithm, LordosisFinding, Producer
from dicom_io.seg import build_segmentation
from dicom_io.series import Series
from dicom_io.sr import build_report
from dicom_io.uids import ResultUIDs, check_root
from pipeline.analysis import Analysis, AnalysisConfig, analyze, with_member_angles, with_second_opinion
from pipeline.classify import Thresholds
from pipeline.inference import Ensemble, LordosisClassifier, Mirrored, ModelInfo
from pipeline.overlay import render_overlay
from pipeline.series_labels import series_label_volume
from worker.settings import Settings

KEY_IMAGE_NOTICE = "Derived image - not for primary diagnosis"
# Flags that mean no spinal column was seen at all: such an input is refused. A column whose
# levels were withheld (no sacrum in view) goes on, unlabelled, and its SR says why.
NO_COLUMN = frozenset({"no_vertebrae_found", "no_discs_found", "canal_not_found"})


class Outcome(StrEnum):
    MEASURED = "measured"
    NOT_MEASURED = "not_measured"
    REFUSED = "refused"


@dataclass(frozen=True)
class Refusal:
    reason: str  # a code of dicom_io/reasons.py: "no_spine_found", or the loader's
    message: str  # one line for a person


@dataclass(frozen=True)
class ModelsUsed:
    """Which networks made a result (their provenance, without the networks themselves)."""

    segmentation: ModelInfo  # the ensemble as one model when it has several members
    members: tuple[ModelInfo, ...] = ()
    mirrored: tuple[bool, ...] = ()  # per member: runs on the mirrored slices (flip TTA)
    classifier: ModelInfo | None = None

    def as_dict(self) -> dict:
        block = self.segmentation.as_dict()
        if len(self.members) > 1:
            block["members"] = [{**info.as_dict(), **({"mirrored": True} if flipped else {})}
                                for info, flipped in zip(self.members, self.mirrored)]
        if self.classifier is not None:
            block["classifier"] = self.classifier.as_dict()
        return block


@dataclass(frozen=True)
class Models:
    """The loaded networks (TensorFlow): loaded once per process, used for every series."""

    segmenter: Ensemble
    classifier: LordosisClassifier | None

    @classmethod
    def load(cls, settings: Settings) -> Models:
        classifier_path = settings.weights(settings.classifier_model)
        models = cls(
            segmenter=Ensemble.load(settings.segmentation_weights()),
            classifier=LordosisClassifier(classifier_path) if classifier_path.is_file() else None,
        )
        # traced now, not in the first job (about a second per graph on a CPU)
        blank = np.zeros((1, 64, 64), np.float32)
        models.segmenter.member_probabilities(blank)
        if models.classifier is not None:
            models.classifier.probabilities(blank[0])
        return models

    def used(self) -> ModelsUsed:
        members = self.segmenter.members
        return ModelsUsed(self.segmenter.info, tuple(m.info for m in members),
                          tuple(isinstance(m, Mirrored) for m in members),
                          None if self.classifier is None else self.classifier.info)

    def key(self) -> str:
        """What the result UIDs derive from: other weights give other result objects."""
        parts = [self.segmenter.info.sha256]
        if self.classifier is not None:
            parts.append(self.classifier.info.sha256)
        return "+".join(parts)


@dataclass(frozen=True)
class Slices:
    """The input as canonical slices, and how to map results back onto its own pixels."""

    pixels: np.ndarray  # (n, rows, cols) canonical
    spacing: tuple[float, float]
    in_plane: InPlaneFlip
    sop_instance_uids: tuple[str, ...] = ()
    flags: tuple[str, ...] = ()  # what was noticed before the method ran (intake, loader)

    @classmethod
    def of(cls, series: Series, pixel_spacing: tuple[float, float] | None = None,
           intake_flags: tuple[str, ...] = ()) -> Slices:
        return cls(series.pixels, pixel_spacing or series.pixel_spacing_mm, series.in_plane,
                   tuple(s.sop_instance_uid for s in series.slices), (*intake_flags, *series.warnings))


@dataclass(frozen=True)
class SeriesResult:
    outcome: Outcome
    models: ModelsUsed | None  # None: refused before the networks were loaded
    refusal: Refusal | None = None
    analysis: Analysis | None = None
    slices: Slices | None = None
    class_maps: np.ndarray | None = None  # (slices, rows, cols) network classes, canonical
    finding: LordosisFinding | None = None  # what the SR and the key image report (series only)
    datasets: dict[str, Dataset] = field(default_factory=dict)  # "seg" | "sr" | "key"
    overlay_rgb: np.ndarray | None = None  # the key image's picture, also for the admin page
    timings: dict[str, float] = field(default_factory=dict)  # inference_s, measurement_s, build_s

    @property
    def flags(self) -> tuple[str, ...]:
        if self.analysis is None:
            return ()
        if self.outcome is Outcome.REFUSED:
            return self.analysis.flags
        return (*self.slices.flags, *self.analysis.flags)


def refused(reason: str, message: str, models: ModelsUsed | None = None) -> SeriesResult:
    return SeriesResult(Outcome.REFUSED, models, Refusal(reason, message))


def measure(slices: Slices, models: Models, settings: Settings) -> SeriesResult:
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
        no_spine = Refusal(Reason.NO_SPINE_FOUND, Reason.NO_SPINE_FOUND.sentence)
        return SeriesResult(Outcome.REFUSED, models.used(), no_spine, analysis, slices,
                            class_maps, timings=timings)
    if models.classifier is not None:
        analysis = with_second_opinion(analysis, models.classifier.probabilities(slices.pixels[analysis.slice_index]))
        timings["inference_s"] += time.perf_counter() - measured
    outcome = Outcome.MEASURED if analysis.lla_deg is not None else Outcome.NOT_MEASURED
    return SeriesResult(outcome, models.used(), None, analysis, slices, class_maps, timings=timings)


def run_series(series: Series, models: Models, settings: Settings, intake_flags: tuple[str, ...] = ()) -> SeriesResult:
    """The method on a loaded series, with its result objects (SEG, SR, key image).

    `intake_flags`: what the node saw before the method ran (an incomplete series), carried
    into the JSON, the SR and the key image like the method's own flags."""
    result = measure(Slices.of(series, intake_flags=intake_flags), models, settings)
    if result.outcome is Outcome.REFUSED:
        return result
    started = time.perf_counter()
    analysis = result.analysis
    finding = lordosis_finding(series, result, settings)
    uids = ResultUIDs.derive(series.series_instance_uid, [s.sop_instance_uid for s in series.slices],
                             models.key(), root=check_root(settings.uid_root) if settings.uid_root else None)
    producer = Producer(institution_name=settings.institution_name or None)
    base = series_number_base(series)
    labels = series_label_volume(result.class_maps, analysis.slice_index, analysis.label_map)
    seg = build_segmentation(series, labels, finding.segmentation, uids, producer, series_number=base + 1,
                             flags=finding.flags)
    datasets = {"seg": seg, "sr": build_report(series, finding, uids, seg, producer, series_number=base + 2)}
    picture = cv2.cvtColor(overlay_bgr(result, notice=KEY_IMAGE_NOTICE), cv2.COLOR_BGR2RGB)
    if settings.key_image:
        datasets["key"] = build_key_image(series, finding, picture, uids, producer, series_number=base + 3)
    timings = {**result.timings, "build_s": time.perf_counter() - started}
    return dataclasses.replace(result, finding=finding, datasets=datasets, overlay_rgb=picture, timings=timings)


def overlay_bgr(result: SeriesResult, notice: str | None = None) -> np.ndarray:
    """The measured slice with the segmentation, the endplates and the angle drawn on it."""
    analysis, slices = result.analysis, result.slices
    return render_overlay(slices.pixels[analysis.slice_index], analysis, slices.spacing, notice=notice)


def mask_on_source(result: SeriesResult) -> np.ndarray:
    """The measured slice's per-level labels on the input's own pixel grid."""
    return result.slices.in_plane.to_source(result.analysis.label_map)


def lordosis_finding(series: Series, result: SeriesResult, settings: Settings) -> LordosisFinding:
    """The analysis, in the source image's own pixels, as dicom_io's builders take it."""
    analysis: Analysis = result.analysis
    shape = series.shape[1:]

    def on_source(point) -> tuple[float, float]:
        return series.in_plane.point_to_source(point[0], point[1], shape)

    endplates = {level: (on_source(v.superior_endplate_px[0]), on_source(v.superior_endplate_px[1]))
                 for level, v in analysis.vertebrae.items() if v.superior_endplate_px is not None}
    models = result.models
    return LordosisFinding(
        measured_slice=series.slices[analysis.slice_index],
        lla_deg=analysis.lla_deg,
        lla_class=analysis.lla_class,
        thresholds_deg=(settings.lla_low_deg, settings.lla_high_deg),
        endplates=endplates,
        flags=result.flags,
        segmentation=_algorithm(models.segmentation),
        classifier=None if models.classifier is None else _algorithm(models.classifier),
        cnn_class=analysis.cnn_class,
        cnn_probabilities=dict(analysis.cnn_probabilities),
        levels=tuple(analysis.vertebrae),
        lla_spread_deg=analysis.lla_spread_deg,
        members=max(1, len(models.members)),
    )


def _algorithm(info: ModelInfo) -> Algorithm:
    return Algorithm(**info.as_dict())


def series_number_base(series: Series) -> int:
    """Results are numbered after their source: series 5 -> 501 (SEG), 502 (SR), 503 (key image)."""
    number = series.headers[0].get("SeriesNumber") if series.headers else None
    try:
        number = int(number)
    except (TypeError, ValueError):
        return 9900
    return number * 100 if 0 < number < 20_000_000 else 9900
