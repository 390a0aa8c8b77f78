"""DICOM SEG, TID 1500 SR and key image: validated by dciodvfy and dsrdump, read back by
highdicom, and checked pixel by pixel against the source images as stored.

The builders take plain data (a label volume, a LordosisFinding), so these tests need no
network: the "segmentation" is a known asymmetric shape, written into the MR pixels too, so
that each SEG frame can be compared with its source image read straight from disk.
"""

from __future__ import annotations

import itertools
import re
import subprocess
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest
from pydicom.sr.codedict import codes as pydicom_codes

from dicom_io import codes
from dicom_io.geometry import InPlaneFlip
from dicom_io.key_image import build_key_image
from dicom_io.results import LordosisFinding
from dicom_io.seg import STRUCTURES, build_segmentation
from dicom_io.series import SliceRef, load_series
from dicom_io.sr import build_report, endplate_polyline
from dicom_io.uids import ResultUIDs, check_root, derived_uid
from tests.helpers.results import (
    CNN,
    PATIENT,
    PRIVATE_SCHEME_WARNING,
    UNET,
    asymmetric_labels,
    dciodvfy,
    finding_for,
    seg_frames_by_source,
    segment_numbers,
    uids_for,
    write_series,
)
from tests.helpers.tools import require_tool


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """One series with its SEG, SR and key image written to disk."""
    folder = tmp_path_factory.mktemp("built")
    labels = asymmetric_labels()
    series = load_series(write_series(folder / "mr", labels))
    uids = uids_for(series)
    seg = build_segmentation(series, labels, UNET, uids, series_number=701)
    sr = build_report(series, finding_for(series), uids, seg, series_number=702)
    picture = np.zeros((80, 60, 3), np.uint8)
    picture[10:30, 5:15] = (255, 0, 0)
    key = build_key_image(series, finding_for(series), picture, uids, series_number=703)
    paths = {}
    for kind, ds in (("seg", seg), ("sr", sr), ("key", key)):
        paths[kind] = folder / f"{kind}.dcm"
        ds.save_as(paths[kind], enforce_file_format=True)
    return series, paths, labels


# --- SEG -----------------------------------------------------------------------------------


@pytest.mark.parametrize("flip", [InPlaneFlip(*f) for f in itertools.product((False, True), repeat=3)],
                         ids=lambda f: f"T{int(f.transpose)}R{int(f.flip_rows)}C{int(f.flip_cols)}")
def test_seg_frames_lie_exactly_on_their_source_frames(tmp_path, flip):
    """Whatever layout the scanner stored (transposed, mirrored), each SEG frame equals the
    label drawn into the pixels of the source image it references, read straight from disk."""
    labels = asymmetric_labels()
    folder = write_series(tmp_path / "mr", labels, flip)
    series = load_series(folder)
    seg = build_segmentation(series, labels, UNET, uids_for(series))
    seg.save_as(tmp_path / "seg.dcm", enforce_file_format=True)
    seg = pydicom.dcmread(tmp_path / "seg.dcm")
    frames = seg_frames_by_source(seg)
    numbers = segment_numbers(seg)
    assert set(numbers) == {"L1", "S1 / sacrum", "Spinal canal"}
    for path in sorted(folder.iterdir()):
        source = pydicom.dcmread(path)
        stored = source.pixel_array
        for label, value in (("L1", 20), ("S1 / sacrum", 26), ("Spinal canal", 40)):
            frame = frames[(source.SOPInstanceUID, None, numbers[label])]
            np.testing.assert_array_equal(frame.astype(bool), stored == 1000 + 10 * value)
    # The planes are the sources' planes: same position and orientation, same pixel spacing.
    by_uid = {pydicom.dcmread(p).SOPInstanceUID: pydicom.dcmread(p) for p in folder.iterdir()}
    shared = seg.SharedFunctionalGroupsSequence[0]
    for frame in seg.PerFrameFunctionalGroupsSequence:
        source = by_uid[frame.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID]
        np.testing.assert_allclose(frame.PlanePositionSequence[0].ImagePositionPatient,
                                   source.ImagePositionPatient, atol=1e-4)
        np.testing.assert_allclose(shared.PlaneOrientationSequence[0].ImageOrientationPatient,
                                   source.ImageOrientationPatient, atol=1e-6)
        np.testing.assert_allclose(shared.PixelMeasuresSequence[0].PixelSpacing, source.PixelSpacing)


def test_seg_of_an_enhanced_mr_references_each_frame(tmp_path):
    labels = asymmetric_labels()
    folder = write_series(tmp_path / "mr", labels, InPlaneFlip(True, False, True), enhanced=True)
    series = load_series(folder)
    seg = build_segmentation(series, labels, UNET, uids_for(series))
    seg.save_as(tmp_path / "seg.dcm", enforce_file_format=True)
    errors, _ = dciodvfy(tmp_path / "seg.dcm")
    assert errors == []
    seg = pydicom.dcmread(tmp_path / "seg.dcm")
    source = pydicom.dcmread(next(folder.iterdir()))
    stored = source.pixel_array
    frames, numbers = seg_frames_by_source(seg), segment_numbers(seg)
    for frame_number in range(1, int(source.NumberOfFrames) + 1):
        frame = frames[(source.SOPInstanceUID, frame_number, numbers["L1"])]
        np.testing.assert_array_equal(frame.astype(bool), stored[frame_number - 1] == 1200)


def test_seg_is_valid_and_says_what_each_segment_is(built):
    series, paths, _ = built
    errors, warnings = dciodvfy(paths["seg"])
    assert errors == [] and warnings == []
    seg = pydicom.dcmread(paths["seg"])
    source = series.headers[0]
    assert seg.Modality == "SEG" and seg.SegmentationType == "BINARY"
    assert seg.StudyInstanceUID == source.StudyInstanceUID
    assert seg.FrameOfReferenceUID == source.FrameOfReferenceUID
    assert (seg.PatientName, seg.PatientID) == (source.PatientName, source.PatientID)
    assert seg.SeriesInstanceUID != source.SeriesInstanceUID
    assert seg.SOPInstanceUID not in {s.sop_instance_uid for s in series.slices}
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == series.series_instance_uid  # OHIF needs it
    assert {r.ReferencedSOPInstanceUID for r in seg.ReferencedSeriesSequence[0].ReferencedInstanceSequence} == {
        s.sop_instance_uid for s in series.slices}
    assert seg.SeriesDescription and seg.Manufacturer == "lumbarnode" and seg.SoftwareVersions
    # every source frame for every segment, empty or not (OHIF shifted segments when frames were omitted)
    assert int(seg.NumberOfFrames) == len(seg.SegmentSequence) * len(series.slices)
    by_label = {str(s.SegmentLabel): s for s in seg.SegmentSequence}
    expected = {"L1": "66794005", "S1 / sacrum": "54735007", "Spinal canal": "61853006"}
    for label, code in expected.items():
        segment = by_label[label]
        assert segment.SegmentedPropertyTypeCodeSequence[0].CodeValue == code
        assert segment.SegmentedPropertyTypeCodeSequence[0].CodingSchemeDesignator == "SCT"
        assert segment.SegmentedPropertyCategoryCodeSequence[0].CodeValue == "91723000"  # anatomical structure, CID 7150
        assert segment.SegmentAlgorithmType == "AUTOMATIC"
        algorithm = segment.SegmentationAlgorithmIdentificationSequence[0]
        assert (algorithm.AlgorithmName, algorithm.AlgorithmVersion) == (UNET.name, UNET.version)
        assert algorithm.AlgorithmFamilyCodeSequence[0].CodeValue == "123110"  # artificial intelligence
        assert UNET.sha256 in algorithm.AlgorithmParameters
        assert "RecommendedDisplayCIELabValue" in segment


def test_highdicom_reads_the_seg_back_to_the_same_masks(built):
    series, paths, labels = built
    seg = hd.seg.segread(paths["seg"])
    numbers = segment_numbers(seg)
    uids = [s.sop_instance_uid for s in series.slices]
    for label, value in (("L1", 20), ("S1 / sacrum", 26), ("Spinal canal", 40)):
        masks = seg.get_pixels_by_source_instance(source_sop_instance_uids=uids, segment_numbers=[numbers[label]])
        np.testing.assert_array_equal(masks[..., 0].astype(bool), labels == value)  # stored as written: no flip


def test_level_codes_are_the_snomed_codes_of_the_issue():
    expected = {"L1": "66794005", "L2": "14293000", "L3": "36470004", "L4": "11994002", "L5": "49668003",
                "S1": "54735007", "T12": "23215003", "T11": "12989004"}
    assert {k: codes.LEVEL_CODES[k].value for k in expected} == expected
    assert {v for v, *_ in STRUCTURES.values()} >= {"L1", "L5", "Intervertebral discs", "Spinal canal"}


def test_every_flag_the_pipeline_raises_has_a_meaning_for_the_report():
    # A flag without an entry is still coded, but a radiologist would read its bare name.
    raised = set()
    for source in (Path(__file__).parents[2] / "pipeline").glob("*.py"):
        for line in source.read_text().splitlines():
            if "flags" in line:
                raised |= set(re.findall(r'f?"([a-z][a-z0-9_]+)(?=[:"])', line))
    assert {"possible_fused_bodies", "s1_not_found", "measured_off_midline"} <= raised
    assert raised <= set(codes.FLAG_MEANINGS)
    assert codes.flag_code("possible_fused_bodies:L5").meaning.endswith("may be one off: L5")


def test_a_label_without_a_segment_definition_is_refused():
    labels = asymmetric_labels()
    labels[0, 0, 0] = 77
    with pytest.raises(ValueError, match="77"):
        from dicom_io.seg import segment_values
        segment_values(labels)


# --- SR --------------------------------------------------------------------------------------

def test_sr_is_valid_with_only_the_private_scheme_warning(built):
    _, paths, _ = built
    errors, warnings = dciodvfy(paths["sr"])
    assert errors == []
    assert warnings and all(PRIVATE_SCHEME_WARNING in w for w in warnings)


def test_dsrdump_shows_the_angle_where_a_tid_1500_reader_looks(built):
    _, paths, _ = built
    out = subprocess.run([require_tool("dsrdump"), "+Pc", "+Pl", "+Pu", str(paths["sr"])], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    text = out.stdout
    assert '<CONTAINER:(126000,DCM,"Imaging Measurement Report")=CONTINUOUS>' in text
    [value] = re.findall(r'<contains NUM:\(285285000,SCT,"Cobb angle"\)="([0-9.]+)" \(deg,UCUM,"degree"\)>', text)
    assert float(value) == 47.0
    assert '<has concept mod CODE:(363589002,DCM,"Finding Site")=(122496007,SCT,"Lumbar spine")>' in text \
        or '(122496007,SCT,"Lumbar spine")' in text
    assert '(17621005,SCT,"Normal")' in text  # CID 222 normality
    assert '"Cobb L1-S1 superior endplates"' in text
    assert "SCOORD" in text and "POLYLINE" in text
    assert f'"weights_sha256={UNET.sha256}"' in text


def _texts(item) -> list[str]:
    found = [str(item.TextValue)] if "TextValue" in item else []
    return found + [text for child in item.get("ContentSequence", []) for text in _texts(child)]


def _comments(items) -> list[str]:
    return [str(i.TextValue) for i in items if i.ValueType == "TEXT" and i.ConceptNameCodeSequence[0].CodeValue == "121106"]


def test_highdicom_reads_back_the_angle_class_lines_and_references(built):
    series, paths, _ = built
    sr = hd.sr.srread(paths["sr"])
    assert sr.SOPClassUID == "1.2.840.10008.5.1.4.1.1.88.34"  # Comprehensive 3D SR
    assert sr.StudyInstanceUID == series.study_instance_uid and sr.PatientID == PATIENT.id
    report = sr.content
    # one group, with image coordinates: OHIF fails to open a report with a group that has none
    assert report.get_planar_roi_measurement_groups() == report.get_volumetric_roi_measurement_groups() == []
    [group] = report.get_image_measurement_groups()
    assert group.tracking_uid and "Lumbar lordosis angle" in group.tracking_identifier
    assert group.tracking_identifier.startswith(codes.OHIF_COBB_ANGLE_TRACKING)  # OHIF's editable Cobb angle
    [angle] = group.get_measurements(name=pydicom_codes.SCT.CobbAngle)
    assert angle.value == pytest.approx(47.0)
    assert angle.unit.value == "deg" and angle.unit.scheme_designator == "UCUM"
    evaluations = {e.name.value: e.value.value for e in group.get_qualitative_evaluations()}
    assert evaluations["LORDOSIS-CLASS"] == "NORMOLORDOSIS" and evaluations["CNN-LORDOSIS"] == "NORMOLORDOSIS"
    flags = [e.value.value for e in group.get_qualitative_evaluations(name=codes.QUALITY_FLAG)]
    assert flags == ["endplate_fit_poor:L1"]
    # the two endplates, nested under the angle as OHIF's Cobb angle tool writes them
    [lines] = angle.referenced_coordinates
    assert lines.graphic_type == hd.sr.GraphicTypeValues.POLYLINE
    # (column, row) + 0.5 of the L1 then S1 endplate ends, on the measured source image
    np.testing.assert_allclose(lines.value, [[4.5, 5.5], [20.5, 7.0], [12.5, 50.5], [30.0, 44.5]], atol=1e-4)
    source = lines.ContentSequence[0].ReferencedSOPSequence[0]
    assert source.ReferencedSOPInstanceUID == series.slices[1].sop_instance_uid
    # the second opinion: its probability names the classifier's own weights
    [probability] = group.get_measurements(name=pydicom_codes.DCM.Probability)
    assert probability.value == pytest.approx(0.7)
    assert f"weights_sha256={CNN.sha256}" in _texts(probability[0])
    # what OHIF shows: sentences, not codes
    assert _comments(group[0].ContentSequence) == [
        "L1-S1 lordosis: normal",  # OHIF's label of the angle
        "LLA 47.0 deg (hypolordosis below 39 deg, hyperlordosis from 53 deg)",
        "Deteclordose second opinion: normal (probability 0.70)",
        "Flag: Poor endplate fit: L1"]
    # the levels are the SEG's, which the report lists in its evidence
    seg = pydicom.dcmread(paths["seg"])
    evidence = {item.ReferencedSOPInstanceUID for s in sr.CurrentRequestedProcedureEvidenceSequence
                for series_item in s.ReferencedSeriesSequence for item in series_item.ReferencedSOPSequence}
    assert seg.SOPInstanceUID in evidence
    assert sr.CodingSchemeIdentificationSequence[0].CodingSchemeDesignator == codes.PRIVATE_SCHEME


def test_sr_without_l1_has_no_angle_and_says_why(tmp_path, built):
    series, _, _ = built
    finding = finding_for(series, endplates={"S1": ((50.0, 12.0), (44.0, 29.5))}, lla=None,
                          flags=("l1_not_found",))
    sr = build_report(series, finding, uids_for(series))
    sr.save_as(tmp_path / "sr.dcm", enforce_file_format=True)
    errors, _ = dciodvfy(tmp_path / "sr.dcm")
    assert errors == []
    report = hd.sr.srread(tmp_path / "sr.dcm").content
    assert report.get_planar_roi_measurement_groups() == []
    [group] = report.get_image_measurement_groups()  # OHIF opens no report without an annotated image
    assert "Lumbar lordosis angle" in group.tracking_identifier
    assert group.tracking_identifier.startswith(codes.OHIF_ARROW_TRACKING)
    assert group.get_measurements() == []
    values = {e.name.value: e.value.value for e in group.get_qualitative_evaluations()}
    assert values == {"QUALITY-FLAG": "l1_not_found", "CNN-LORDOSIS": "NORMOLORDOSIS"}
    # the arrow points at the S1 endplate that was found, on the measured image
    [point] = [i for i in group[0].ContentSequence if i.ValueType == "SCOORD"]
    assert point.GraphicType == "POINT"
    np.testing.assert_allclose(point.GraphicData, [(12.0 + 29.5) / 2 + 0.5, (50.0 + 44.0) / 2 + 0.5])
    assert point.ContentSequence[0].ReferencedSOPSequence[0].ReferencedSOPInstanceUID == series.slices[1].sop_instance_uid
    comments = _comments(group[0].ContentSequence)
    assert comments[0] == "LLA not measured: L1 not identified"  # OHIF's label of the arrow
    assert "Flag: L1 not identified; LLA not measured" in comments
    text = subprocess.run([require_tool("dsrdump"), str(tmp_path / "sr.dcm")], capture_output=True, text=True).stdout
    assert "NUM" not in text and "POLYLINE" not in text  # never a number or a line that was not measured


def test_endplate_polyline_is_l1_then_s1_in_column_row_order_at_pixel_centres():
    finding = LordosisFinding(SliceRef("1.2", "1.2.3", None), 40.0, "normal", (39.0, 53.0),
                              {"S1": ((10.0, 1.0), (12.0, 3.0)), "L1": ((0.0, 0.0), (2.0, 5.0))}, (), UNET)
    np.testing.assert_allclose(endplate_polyline(finding), [[0.5, 0.5], [5.5, 2.5], [1.5, 10.5], [3.5, 12.5]])


# --- key image -------------------------------------------------------------------------------

def test_key_image_is_a_valid_derived_secondary_capture_of_the_study(built):
    series, paths, _ = built
    errors, warnings = dciodvfy(paths["key"])
    assert errors == [] and warnings == []
    key = pydicom.dcmread(paths["key"])
    assert key.SOPClassUID == "1.2.840.10008.5.1.4.1.1.7"
    assert list(key.ImageType)[:2] == ["DERIVED", "SECONDARY"] and key.BurnedInAnnotation == "YES"
    assert "not for primary diagnosis" in key.ImageComments
    assert key.StudyInstanceUID == series.study_instance_uid and key.PatientID == PATIENT.id
    assert key.SourceImageSequence[0].ReferencedSOPInstanceUID == series.slices[1].sop_instance_uid
    assert key.pixel_array[20, 10].tolist() == [255, 0, 0]


# --- UIDs ------------------------------------------------------------------------------------

def test_result_uids_are_deterministic_and_new_for_new_inputs():
    a = ResultUIDs.derive("1.2.3", ["1.2.3.1", "1.2.3.2"], "sha")
    assert a == ResultUIDs.derive("1.2.3", ["1.2.3.2", "1.2.3.1"], "sha")  # order of arrival does not matter
    assert a.sr_instance != ResultUIDs.derive("1.2.3", ["1.2.3.1", "1.2.3.2", "1.2.3.3"], "sha").sr_instance
    assert a.sr_instance != ResultUIDs.derive("1.2.3", ["1.2.3.1", "1.2.3.2"], "other weights").sr_instance
    values = [a.seg_series, a.seg_instance, a.sr_series, a.sr_instance, a.key_series, a.key_instance]
    assert len(set(values)) == 6 and all(v.startswith("2.25.") for v in values)


def test_uids_under_an_organisation_root_are_valid_uids():
    root = "1.2.826.0.1.3680043.10.999"
    uids = ResultUIDs.derive("1.2.3", ["4"], "sha", root=root)
    for uid in (uids.seg_instance, uids.derive_more("tracking", "lla")):
        assert uid.startswith(root + ".") and len(uid) <= 64
        assert pydicom.uid.UID(uid).is_valid
    assert len(derived_uid("x", root="1." + "2" * 38)) == 64
    for bad in ("1.02.3", "abc", "1..2", "1." + "2" * 45):
        with pytest.raises(ValueError):
            check_root(bad)


# --- the study as a whole ------------------------------------------------------------------

def test_every_segment_colour_is_told_apart_from_every_other():
    """Issue 19: T11..L3 came out as near-identical reds in OHIF. CIE76 distance between the
    display colours of any two segments at least 30 (about 2 is 'just noticeable')."""
    levels = STRUCTURES
    lab = {value: np.array(hd.color.CIELabColor.from_rgb(*rgb).lab) for value, (_, _, rgb) in levels.items()}
    for (a, la), (b, lb) in itertools.combinations(lab.items(), 2):
        distance = float(np.linalg.norm(la - lb))
        assert distance >= 30, f"{levels[a][0]} and {levels[b][0]} differ by only {distance:.1f} (CIE76)"


def test_series_and_results_describe_the_patient_and_study_the_same_way(built):
    """dcentvfy (dicom3tools) over the source series, the SEG, the SR and the key image: no
    attribute of the patient or the study present in one and absent or different in another.
    Its only other remark, AccessionNumber's information entity (Series in the SC/SEG/MR
    dictionaries, Study in the SR's), is about its dictionaries, not about our values."""
    _, paths, _ = built
    mr = sorted(paths["seg"].parent.joinpath("mr").glob("*.dcm"))
    files = [str(p) for p in (*mr, *paths.values())]
    out = subprocess.run([require_tool("dcentvfy"), *files], capture_output=True, text=True)
    remarks = [line for line in (out.stdout + out.stderr).splitlines() if line.strip()]
    inconsistent = [line for line in remarks if "Different information entities for attribute" not in line]
    assert inconsistent == [], "\n".join(inconsistent)
    key = pydicom.dcmread(paths["key"], stop_before_pixels=True)
    source = pydicom.dcmread(mr[0], stop_before_pixels=True)
    assert key.StudyDescription == source.StudyDescription
