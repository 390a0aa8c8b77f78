"""The Structured Report: a TID 1500 Measurement Report of the lumbar lordosis angle.

Comprehensive 3D SR, encoded so that the viewer radiologists use opens it (issue 19). OHIF 3.x
takes every measurement group for an annotation on an image: it fails to open a report with a
group that has no image coordinates, or with no group at all. It turns a group into its own
editable tool when the group is encoded as that tool writes one (@cornerstonejs/adapters: a
tracking identifier starting "Cornerstone3DTools@^0.1.0:<tool>", the tool's label the first
Comment). highdicom, dcmqi (3D Slicer) and dsrdump read the same TID 1501 group. The content,
one measurement group in Imaging Measurements:

- Measured: the Cobb angle NUM (SCT 285285000, UCUM deg; method "Cobb L1-S1 superior
  endplates", normality CID 222, the segmentation algorithm with version and weights SHA-256)
  inferred from a 4-point POLYLINE nested under it on the measured image: the L1 then the S1
  superior endplate, anterior end first, which OHIF draws as its Cobb angle, two lines the
  radiologist can move. With an ensemble, the range of its members' own angles (LLA-SPREAD,
  deg): the angle's uncertainty. Its qualitative evaluations: the class, the Deteclordose
  class (the CNN's probability is a NUM naming its own algorithm), every quality flag.
- Not measured (no L1 or no S1): no number; a POINT on the measured image (the endplate that
  was found, else the image centre) that OHIF shows as an arrow saying why ("LLA not measured:
  L1 not identified"), with the same qualitative evaluations. Never a number that was not
  measured, nor a line that was not found.
- Both: the finding in sentences (DCM "Comment"): OHIF labels the annotation with the first
  and lists them with the measurement, instead of codes.
- The levels are the SEG's segments; the SR lists the SEG in its evidence. Levels counted from
  an S1 that could not be confirmed carry the flag `levels_unconfirmed`.

The AI algorithm (IHE AIR): Procedure Reported is the imaging procedure analysed (MR of the
lumbar spine), not the algorithm; the observer is the segmentation network as a device, whose
Device Observer UID (and Serial Number) is the UID its Contributing Equipment item carries
(`seg.algorithm_equipment`; derived from its weights: the same in every job, new with new
weights); every measurement and the group name their algorithm (TID 4019 Algorithm Name,
Version, Parameters).
"""

from __future__ import annotations

import highdicom as hd
import numpy as np
from pydicom.dataset import Dataset

from dicom_io import codes
from dicom_io.results import Algorithm, LordosisFinding, Producer
from dicom_io.seg import algorithm_equipment
from dicom_io.series import Series
from dicom_io.study import copy_study
from dicom_io.uids import ResultUIDs

SR_SERIES_DESCRIPTION = "Lumbar lordosis report (lumbarnode)"
LLA_NAME = "Lumbar lordosis angle (Cobb L1-S1)"
CNN_NAME = "Deteclordose second opinion"
CONTAINS = hd.sr.RelationshipTypeValues.CONTAINS
# the flags that say why no angle was measured, in the order a reader wants the first one
NOT_MEASURED_BECAUSE = ("no_vertebrae_found", "no_discs_found", "s1_not_found", "l1_not_found")


def _frames(frame: int | None) -> list[int] | None:
    """Referenced frame numbers: the measured frame of a multi-frame image, none otherwise."""
    return None if frame is None else [frame]


def _algorithm_id(algorithm: Algorithm, *extra: str) -> hd.sr.AlgorithmIdentification:
    return hd.sr.AlgorithmIdentification(
        name=algorithm.name, version=algorithm.version,
        parameters=[f"weights_sha256={algorithm.sha256}", *extra],
    )


def endplate_polyline(finding: LordosisFinding) -> np.ndarray:
    """(4, 2) SCOORD points (column, row) of the L1 then the S1 superior endplate.

    SCOORD puts the top-left corner of the image at (0, 0), so the centre of pixel
    (row r, col c) is (c + 0.5, r + 0.5).
    """
    points = [p for level in ("L1", "S1") for p in finding.endplates[level]]
    return np.array([[col + 0.5, row + 0.5] for row, col in points], dtype=np.float32)


def sentences(finding: LordosisFinding) -> list[str]:
    """The finding as a radiologist reads it: the class (or why there is none; OHIF's label of
    the annotation), the angle against the thresholds, the second opinion, each flag."""
    low, high = finding.thresholds_deg
    if finding.measured:
        lines = [f"L1-S1 lordosis: {finding.lla_class}",
                 f"LLA {finding.lla_deg:.1f} deg (hypolordosis below {low:g} deg, hyperlordosis from {high:g} deg)"]
        if finding.lla_spread_deg is not None:
            lines.append(f"Spread across {finding.members} segmentation passes: {finding.lla_spread_deg:.1f} deg")
    else:
        lines = [f"LLA not measured: {_why_not_measured(finding)}"]
    if finding.cnn_class is not None:
        probability = finding.cnn_probabilities.get(finding.cnn_class, 0.0)
        lines.append(f"{CNN_NAME}: {finding.cnn_class} (probability {probability:.2f})")
    return lines + [f"Flag: {codes.flag_meaning(flag)}" for flag in finding.flags]


def _why_not_measured(finding: LordosisFinding) -> str:
    reasons = [flag for flag in finding.flags if flag in NOT_MEASURED_BECAUSE] or list(finding.flags)
    return codes.flag_meaning(reasons[0]).split(";")[0] if reasons else "no L1 and S1 superior endplates"


def _comments(finding: LordosisFinding) -> list[hd.sr.TextContentItem]:
    return [hd.sr.TextContentItem(codes.COMMENT, text, relationship_type=CONTAINS) for text in sentences(finding)]


def _evaluations(finding: LordosisFinding) -> list[hd.sr.QualitativeEvaluation]:
    evaluations = []
    if finding.measured:
        evaluations.append(hd.sr.QualitativeEvaluation(codes.LORDOSIS_CLASS, codes.CLASS_CODES[finding.lla_class]))
    if finding.cnn_class is not None:
        evaluations.append(hd.sr.QualitativeEvaluation(codes.CNN_LORDOSIS_CLASS, codes.CLASS_CODES[finding.cnn_class]))
    return evaluations + [hd.sr.QualitativeEvaluation(codes.QUALITY_FLAG, codes.flag_code(flag))
                          for flag in finding.flags]


def _lla_group(finding: LordosisFinding, image: Dataset, frame: int | None,
               uids: ResultUIDs) -> hd.sr.MeasurementsAndQualitativeEvaluations:
    """The measured angle as OHIF's Cobb angle tool writes one, with our codes and algorithm."""
    low, high = finding.thresholds_deg
    algorithm_id = _algorithm_id(
        finding.segmentation, f"hypolordosis below {low:g} deg, hyperlordosis from {high:g} deg")
    site = [hd.sr.FindingSite(codes.LUMBAR_SPINE)]
    lines = hd.sr.CoordinatesForMeasurement(
        graphic_type=hd.sr.GraphicTypeValues.POLYLINE,
        graphic_data=endplate_polyline(finding),
        source_image=hd.sr.SourceImageForRegion.from_source_image(image, referenced_frame_numbers=_frames(frame)),
    )
    measurements = [hd.sr.Measurement(
        name=codes.COBB_ANGLE,
        value=round(float(finding.lla_deg), 2),
        unit=codes.DEGREE,
        method=codes.COBB_METHOD,
        finding_sites=site,
        properties=hd.sr.MeasurementProperties(normality=codes.NORMALITY[finding.lla_class]),
        algorithm_id=algorithm_id,
        referenced_coordinates=[lines],
    )]
    if finding.lla_spread_deg is not None:
        measurements.append(hd.sr.Measurement(name=codes.LLA_SPREAD, value=round(float(finding.lla_spread_deg), 2),
                                              unit=codes.DEGREE, algorithm_id=algorithm_id))
    if finding.classifier is not None and finding.cnn_class is not None:
        probability = float(finding.cnn_probabilities.get(finding.cnn_class, 0.0))
        measurements.append(hd.sr.Measurement(name=codes.PROBABILITY, value=round(probability, 4),
                                              unit=codes.NO_UNITS, algorithm_id=_algorithm_id(finding.classifier)))
    group = hd.sr.MeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(uid=uids.derive_more("tracking", "lla"),
                                                     identifier=f"{codes.OHIF_COBB_ANGLE_TRACKING}:{LLA_NAME}"),
        finding_type=codes.COBB_ANGLE, method=codes.COBB_METHOD, algorithm_id=algorithm_id,
        finding_sites=site, measurements=measurements, qualitative_evaluations=_evaluations(finding),
        source_images=[hd.sr.SourceImageForMeasurementGroup.from_source_image(
            image, referenced_frame_numbers=_frames(frame))],
    )
    group[0].ContentSequence.extend(_comments(finding))
    return group


def _not_measured_group(finding: LordosisFinding, image: Dataset, frame: int | None,
                        uids: ResultUIDs) -> hd.sr.MeasurementsAndQualitativeEvaluations:
    """Why there is no angle, as OHIF's arrow with text writes it: a POINT on the measured image."""
    group = hd.sr.MeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(uid=uids.derive_more("tracking", "lla"),
                                                     identifier=f"{codes.OHIF_ARROW_TRACKING}:{LLA_NAME}"),
        finding_type=codes.COBB_ANGLE, method=codes.COBB_METHOD, algorithm_id=_algorithm_id(finding.segmentation),
        qualitative_evaluations=_evaluations(finding) or None,
        source_images=[hd.sr.SourceImageForMeasurementGroup.from_source_image(
            image, referenced_frame_numbers=_frames(frame))],
    )
    point = hd.sr.ScoordContentItem(codes.IMAGE_REGION, hd.sr.GraphicTypeValues.POINT,
                                    np.array([_pointed_at(finding, image)], dtype=np.float32),
                                    relationship_type=CONTAINS)
    point.ContentSequence = hd.sr.ContentSequence([hd.sr.ImageContentItem(
        codes.SOURCE_IMAGE, image.SOPClassUID, image.SOPInstanceUID, referenced_frame_numbers=frame,
        relationship_type=hd.sr.RelationshipTypeValues.SELECTED_FROM)])
    group[0].ContentSequence.extend([point, *_comments(finding)])
    return group


def _pointed_at(finding: LordosisFinding, image: Dataset) -> tuple[float, float]:
    """(column, row) SCOORD of the middle of the endplate that was found, else of the image."""
    for level in ("S1", "L1"):
        if level in finding.endplates:
            (r0, c0), (r1, c1) = finding.endplates[level]
            return (c0 + c1) / 2 + 0.5, (r0 + r1) / 2 + 0.5
    return int(image.Columns) / 2, int(image.Rows) / 2


def build_report(
    series: Series,
    finding: LordosisFinding,
    uids: ResultUIDs,
    seg: Dataset | None = None,
    producer: Producer = Producer(),
    series_number: int = 9902,
) -> hd.sr.Comprehensive3DSR:
    """The TID 1500 Measurement Report of `finding`, referencing the SEG when one was made."""
    image = series.header(finding.measured_slice.sop_instance_uid)
    frame = finding.measured_slice.frame_number
    # the segmentation network, as its Contributing Equipment item names it (the same UID)
    device = codes.device_uid(finding.segmentation.sha256)
    observer = hd.sr.ObserverContext(
        observer_type=codes.DEVICE,
        observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
            uid=device, name=producer.model_name, manufacturer_name=producer.manufacturer,
            model_name=f"{finding.segmentation.name} {finding.segmentation.version}", serial_number=device,
        ),
    )
    group = (_lla_group if finding.measured else _not_measured_group)(finding, image, frame, uids)
    report = hd.sr.MeasurementReport(
        observation_context=hd.sr.ObservationContext(observer_device_context=observer),
        procedure_reported=codes.MR_LUMBAR_SPINE,
        imaging_measurements=[group],
    )
    sr = hd.sr.Comprehensive3DSR(
        evidence=[image, *([seg] if seg is not None else [])],
        content=report[0],
        series_instance_uid=uids.sr_series,
        series_number=series_number,
        sop_instance_uid=uids.sr_instance,
        instance_number=1,
        manufacturer=producer.manufacturer,
        is_complete=True,
        series_description=SR_SERIES_DESCRIPTION,
        contributing_equipment=algorithm_equipment(producer, finding.segmentation, finding.classifier),
    )
    producer.stamp(sr)
    copy_study(image, sr)
    sr.CodingSchemeIdentificationSequence = [codes.coding_scheme_identification()]
    return sr
