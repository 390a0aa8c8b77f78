"""The Structured Report: a TID 1500 Measurement Report of the lumbar lordosis angle.

Comprehensive 3D SR: OHIF opens it as it opens Comprehensive SR, highdicom, dcmqi (3D
Slicer) and Slim use it for TID 1500, and it carries the 2-D image coordinates used here as
well as 3-D ones. The content:

- Measurement group "Lumbar lordosis angle": the Cobb angle (SCT 285285000) in UCUM `deg`,
  finding site lumbar spine, method "Cobb L1-S1 superior endplates", normality (CID 222),
  the class as a qualitative evaluation (99LUMBARNODE codes) and every quality flag, on an
  image region: the two superior endplates (L1 then S1, anterior end first) as one
  4-point POLYLINE on the measured source image, the way viewers encode a Cobb angle.
  Without an L1 or S1 the group has no angle and no region; its flags say why (never a
  number that was not measured).
- Measurement group "Deteclordose second opinion": the CNN class and its probability.
- One volumetric group per identified level, referencing its segment in the SEG; with levels
  counted from an S1 that could not be confirmed (`levels_unconfirmed`) its identifier says
  "(unconfirmed)" and it carries that flag. Levels withheld (`s1_not_found`) have no group.
- Every group names its algorithm with version and the SHA-256 of the weights.
"""

from __future__ import annotations

import highdicom as hd
import numpy as np
from pydicom.dataset import Dataset

from dicom_io import codes
from dicom_io.results import Algorithm, LordosisFinding, Producer
from dicom_io.seg import levels_unconfirmed
from dicom_io.series import Series
from dicom_io.uids import ResultUIDs

SR_SERIES_DESCRIPTION = "Lumbar lordosis report (lumbarnode)"


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


def _lla_group(finding: LordosisFinding, image: Dataset, frame: int | None,
               uids: ResultUIDs) -> hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations | hd.sr.MeasurementsAndQualitativeEvaluations:
    low, high = finding.thresholds_deg
    algorithm_id = _algorithm_id(
        finding.segmentation, f"hypolordosis below {low:g} deg, hyperlordosis from {high:g} deg")
    tracking = hd.sr.TrackingIdentifier(uid=uids.derive_more("tracking", "lla"),
                                        identifier="Lumbar lordosis angle (Cobb L1-S1)")
    site = [hd.sr.FindingSite(codes.LUMBAR_SPINE)]
    evaluations = [hd.sr.QualitativeEvaluation(codes.QUALITY_FLAG, codes.flag_code(flag)) for flag in finding.flags]
    if not finding.measured:
        return hd.sr.MeasurementsAndQualitativeEvaluations(
            tracking_identifier=tracking, finding_type=codes.COBB_ANGLE, method=codes.COBB_METHOD,
            algorithm_id=algorithm_id, finding_sites=site, qualitative_evaluations=evaluations or None,
            source_images=[hd.sr.SourceImageForMeasurementGroup.from_source_image(
                image, referenced_frame_numbers=_frames(frame))],
        )
    measurement = hd.sr.Measurement(
        name=codes.COBB_ANGLE,
        value=round(float(finding.lla_deg), 2),
        unit=codes.DEGREE,
        method=codes.COBB_METHOD,
        finding_sites=site,
        properties=hd.sr.MeasurementProperties(normality=codes.NORMALITY[finding.lla_class]),
        algorithm_id=algorithm_id,
    )
    evaluations.insert(0, hd.sr.QualitativeEvaluation(codes.LORDOSIS_CLASS, codes.CLASS_CODES[finding.lla_class]))
    region = hd.sr.ImageRegion(
        graphic_type=hd.sr.GraphicTypeValues.POLYLINE,
        graphic_data=endplate_polyline(finding),
        source_image=hd.sr.SourceImageForRegion.from_source_image(
            image, referenced_frame_numbers=_frames(frame)),
    )
    return hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations(
        tracking_identifier=tracking, referenced_region=region, finding_type=codes.COBB_ANGLE,
        method=codes.COBB_METHOD, algorithm_id=algorithm_id, finding_sites=site,
        measurements=[measurement], qualitative_evaluations=evaluations,
    )


def _cnn_group(finding: LordosisFinding, image: Dataset, frame: int | None,
               uids: ResultUIDs) -> hd.sr.MeasurementsAndQualitativeEvaluations:
    algorithm_id = _algorithm_id(finding.classifier)
    probability = float(finding.cnn_probabilities.get(finding.cnn_class, 0.0))
    return hd.sr.MeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(uid=uids.derive_more("tracking", "cnn"),
                                                     identifier="Deteclordose second opinion"),
        finding_type=codes.CNN_LORDOSIS_CLASS,
        algorithm_id=algorithm_id,
        finding_sites=[hd.sr.FindingSite(codes.LUMBAR_SPINE)],
        measurements=[hd.sr.Measurement(name=codes.PROBABILITY, value=round(probability, 4), unit=codes.NO_UNITS,
                                        algorithm_id=algorithm_id)],
        qualitative_evaluations=[hd.sr.QualitativeEvaluation(codes.CNN_LORDOSIS_CLASS,
                                                             codes.CLASS_CODES[finding.cnn_class])],
        source_images=[hd.sr.SourceImageForMeasurementGroup.from_source_image(
            image, referenced_frame_numbers=_frames(frame))],
    )


def _segment_groups(series: Series, finding: LordosisFinding, seg: Dataset,
                    uids: ResultUIDs) -> list[hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations]:
    groups = []
    unconfirmed = [flag for flag in finding.flags if levels_unconfirmed([flag])]
    suffix = " (unconfirmed)" if unconfirmed else ""
    evaluations = [hd.sr.QualitativeEvaluation(codes.QUALITY_FLAG, codes.flag_code(flag)) for flag in unconfirmed]
    for segment in seg.SegmentSequence:
        level = str(segment.SegmentLabel).split()[0]
        if level not in finding.levels:
            continue
        groups.append(hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations(
            tracking_identifier=hd.sr.TrackingIdentifier(uid=uids.derive_more("tracking", "segment", level),
                                                         identifier=f"{level} vertebra{suffix}"),
            referenced_segment=hd.sr.ReferencedSegment(
                sop_class_uid=seg.SOPClassUID, sop_instance_uid=seg.SOPInstanceUID,
                segment_number=int(segment.SegmentNumber),
                source_series=hd.sr.SourceSeriesForSegmentation(series.series_instance_uid)),
            finding_type=codes.LEVEL_CODES[level],
            algorithm_id=_algorithm_id(finding.segmentation),
            finding_sites=[hd.sr.FindingSite(codes.LEVEL_CODES[level])],
            qualitative_evaluations=evaluations or None,
        ))
    return groups


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
    observer = hd.sr.ObserverContext(
        observer_type=codes.DEVICE,
        observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
            uid=uids.derive_more("observer", producer.device_serial_number),
            name=producer.model_name, manufacturer_name=producer.manufacturer,
            model_name=f"{finding.segmentation.name} {finding.segmentation.version}",
            serial_number=producer.device_serial_number,
        ),
    )
    groups: list = [_lla_group(finding, image, frame, uids)]
    if finding.classifier is not None and finding.cnn_class is not None:
        groups.append(_cnn_group(finding, image, frame, uids))
    if seg is not None:
        groups += _segment_groups(series, finding, seg, uids)
    report = hd.sr.MeasurementReport(
        observation_context=hd.sr.ObservationContext(observer_device_context=observer),
        procedure_reported=codes.IMAGING_PROCEDURE,
        imaging_measurements=groups,
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
    )
    producer.stamp(sr)
    sr.CodingSchemeIdentificationSequence = [codes.coding_scheme_identification()]
    return sr
