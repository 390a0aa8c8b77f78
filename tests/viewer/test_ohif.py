"""What a radiologist sees of our results in OHIF 3.13.2 (tests/viewer/harness.py: the real
OHIF build, Orthanc with DICOMweb, headless Chromium), for real results: `lumbarnode process`
on the synthetic phantom, on the shipped fastMONAI volume (`lumbarnode wrap`), and on the
phantom with everything above L2 blanked (no L1: an SR without an angle or lines).

Each check fails with what OHIF reported (errors, display sets, SR display sets as OHIF parsed
them, measurements, annotations); screenshots go to test-artifacts/viewer/.

`test_the_sr_checks_pass_on_a_cobb_angle_encoded_as_ohif_writes_it` runs the same checks on
an SR written the way OHIF's own Cobb angle tool writes one: the checks can pass, whatever
our SR does."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest
from pydicom.sr.codedict import codes
from pydicom.uid import generate_uid

from tests.viewer.harness import ViewerPage, ViewerSetupError, lines_on_image, shown_image, viewer
from worker.demo import DEMO_VOLUME

LUMBARNODE = Path(sys.executable).with_name("lumbarnode")
# OHIF shows the angle its Cobb angle tool computes from the lines, to 0.1 deg: the SR's number
# within rounding (0.05) and the lines' own rounding to 0.01 pixel in the SR (up to ~0.1 deg)
DISPLAY_TOLERANCE_DEG = 0.15
TRACKING_PROMPT = "Do you want to continue tracking measurements for this study?"


@dataclass
class Case:
    """One study in Orthanc: its source series and what `lumbarnode process` made of it."""

    name: str
    dicom: Path  # the source series folder
    out: Path  # seg.dcm, sr.dcm, key.dcm, result.json (or only sr.dcm for the reference case)
    result: dict
    display_sets: int  # how many OHIF lists: MR, SEG, SR, key image

    @property
    def study_uid(self) -> str:
        return pydicom.dcmread(next(self.dicom.glob("*.dcm")), stop_before_pixels=True).StudyInstanceUID

    @property
    def measured_sop(self) -> str:
        return self.result["sop_instance_uid"]

    def files(self) -> list[Path]:
        return sorted(self.dicom.glob("*.dcm")) + sorted(self.out.glob("*.dcm"))


# -- the studies ---------------------------------------------------------------------


def _copy_series(source: Path, target: Path, tag: str, blank_rows: int = 0) -> dict[str, str]:
    """A copy of a series under new study/series/instance/frame-of-reference UIDs (derived from
    the old ones and `tag`) and its own patient ID (else OHIF lists the copies as the patient's
    other studies), optionally with the top `blank_rows` rows of every image zeroed; returns
    the old -> new SOP Instance UIDs."""
    target.mkdir(parents=True)
    renamed = {}
    for path in sorted(source.glob("*.dcm")):
        ds = pydicom.dcmread(path)
        if blank_rows:
            pixels = ds.pixel_array.copy()
            pixels[:blank_rows] = 0
            ds.PixelData = pixels.tobytes()
        for keyword in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "FrameOfReferenceUID"):
            old = getattr(ds, keyword)
            setattr(ds, keyword, generate_uid(entropy_srcs=[old, tag]))
            if keyword == "SOPInstanceUID":
                renamed[old] = ds.SOPInstanceUID
        ds.PatientID = f"{ds.PatientID}-{tag}"
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.save_as(target / path.name)
    return renamed


def _run(*args: str | Path) -> subprocess.Popen:
    return subprocess.Popen([str(LUMBARNODE), *map(str, args)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)


def _finish(process: subprocess.Popen, codes_ok: tuple[int, ...], what: str) -> None:
    output, _ = process.communicate(timeout=300)
    if process.returncode not in codes_ok:
        pytest.fail(f"{what} exited {process.returncode}:\n{output[-3000:]}")


def reference_cobb_sr(case: Case, out: Path) -> Path:
    """The LLA of `case` as OHIF 3.13 itself writes a Cobb angle (@cornerstonejs/adapters
    CobbAngle + dcmjs TID300 CobbAngle): one measurement group, tracking identifier
    "Cornerstone3DTools@^0.1.0:CobbAngle", a NUM Cobb angle in deg whose ContentSequence holds
    one 4-point SCOORD POLYLINE (INFERRED FROM) selected from the measured image. Same SOP
    class as ours (Comprehensive 3D SR)."""
    R = hd.sr.RelationshipTypeValues
    image = pydicom.dcmread(case.dicom / next(p.name for p in case.dicom.glob("*.dcm")
                                              if pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID
                                              == case.measured_sop))
    # result.json gives (row, column) per endplate end; SCOORD wants (column, row) at pixel centres
    ends = [case.result["vertebrae"][level]["superior_endplate"] for level in ("L1", "S1")]
    points = np.array([[col + 0.5, row + 0.5] for end in ends for row, col in end], dtype=np.float32)
    scoord = hd.sr.ScoordContentItem(codes.DCM.ImageRegion, hd.sr.GraphicTypeValues.POLYLINE, points,
                                     relationship_type=R.INFERRED_FROM)
    scoord.ContentSequence = hd.sr.ContentSequence([hd.sr.ImageContentItem(
        codes.DCM.SourceImage, image.SOPClassUID, image.SOPInstanceUID, relationship_type=R.SELECTED_FROM)])
    angle = hd.sr.NumContentItem(codes.SCT.CobbAngle, case.result["lla_deg"], hd.sr.CodedConcept("deg", "UCUM", "deg"),
                                 relationship_type=R.CONTAINS)
    angle.ContentSequence = hd.sr.ContentSequence([scoord])
    group = hd.sr.ContainerContentItem(codes.DCM.MeasurementGroup, relationship_type=R.CONTAINS)
    group.ContentSequence = hd.sr.ContentSequence([
        hd.sr.TextContentItem(codes.DCM.TrackingIdentifier, "Cornerstone3DTools@^0.1.0:CobbAngle",
                              relationship_type=R.HAS_OBS_CONTEXT),
        hd.sr.UIDRefContentItem(codes.DCM.TrackingUniqueIdentifier, hd.UID(), relationship_type=R.HAS_OBS_CONTEXT),
        angle])
    measurements = hd.sr.ContainerContentItem(codes.DCM.ImagingMeasurements, relationship_type=R.CONTAINS)
    measurements.ContentSequence = hd.sr.ContentSequence([group])
    root = hd.sr.ContainerContentItem(codes.DCM.ImagingMeasurementReport, template_id="1500")
    root.ContentSequence = hd.sr.ContentSequence([
        hd.sr.CodeContentItem(codes.DCM.ProcedureReported, codes.SCT.ImagingProcedure,
                              relationship_type=R.HAS_CONCEPT_MOD),
        measurements])
    sr = hd.sr.Comprehensive3DSR([image], root, series_instance_uid=hd.UID(), series_number=900,
                                 sop_instance_uid=hd.UID(), instance_number=1, manufacturer="lumbarnode test harness",
                                 series_description="Cobb angle as OHIF writes it (reference)")
    path = out / "sr.dcm"
    sr.save_as(path, enforce_file_format=True)
    return path


@pytest.fixture(scope="module")
def cases(tmp_path_factory) -> dict[str, Case]:
    root = tmp_path_factory.mktemp("viewer-cases")
    done = subprocess.run([str(LUMBARNODE), "phantom", "--out", str(root / "phantom")], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
    wrap = _run("wrap", DEMO_VOLUME, "--out", root / "demo")
    # no L1: everything above L2 blanked (label 20 is L1 in the phantom's labels), new UIDs
    labels = np.load(root / "phantom" / "labels.npz")["labels"]
    below_l1 = int(np.nonzero((labels == 20).any(axis=(0, 2)))[0].max()) + 3
    _copy_series(root / "phantom" / "dicom", root / "no-l1" / "dicom", "no-l1", blank_rows=below_l1)
    runs = {"phantom": _run("process", root / "phantom" / "dicom", "--out", root / "phantom-out"),
            "no-l1": _run("process", root / "no-l1" / "dicom", "--out", root / "no-l1-out")}
    _finish(wrap, (0,), "lumbarnode wrap (demo volume)")
    runs["demo"] = _run("process", root / "demo" / "dicom", "--out", root / "demo-out")
    for name, process in runs.items():  # 3: written without an angle
        _finish(process, (0, 3) if name == "no-l1" else (0,), f"lumbarnode process ({name})")
    found = {}
    for name in ("phantom", "demo", "no-l1"):
        out = root / f"{name}-out"
        found[name] = Case(name, root / name / "dicom", out, json.loads((out / "result.json").read_text()), 4)
    assert found["no-l1"].result["lla_deg"] is None and "l1_not_found" in found["no-l1"].result["flags"]
    # the reference: the phantom again (new UIDs), with only the reference SR
    renamed = _copy_series(root / "phantom" / "dicom", root / "reference" / "dicom", "reference")
    (root / "reference-out").mkdir()
    phantom = found["phantom"]
    reference = Case("reference", root / "reference" / "dicom", root / "reference-out",
                     {**phantom.result, "sop_instance_uid": renamed[phantom.measured_sop]}, 2)
    reference_cobb_sr(reference, reference.out)
    found["reference"] = reference
    return found


@pytest.fixture(scope="module")
def ohif(cases, tmp_path_factory) -> Iterator:
    try:
        with viewer(tmp_path_factory.mktemp("viewer")) as instance:
            for case in cases.values():
                instance.upload(case.files())
            yield instance
    except ViewerSetupError as error:
        pytest.fail(str(error))


# -- the checks ----------------------------------------------------------------------


def _no_errors(page: ViewerPage, what: str) -> None:
    page.state()  # collects the errors OHIF swallowed
    assert page.errors == [], f"OHIF reported errors {what}\n{page.report()}"


def _open_sr(page: ViewerPage, case: Case) -> dict:
    """Open the study, double-click the SR thumbnail, wait for OHIF to load it and show an
    image or the report's text; fail at the first error OHIF reports."""
    sr_file = pydicom.dcmread(case.out / "sr.dcm")
    title = sr_file.ConceptNameCodeSequence[0].CodeMeaning
    images = _referenced_sops(sr_file.ContentSequence)
    state = page.open_study(case.study_uid, case.display_sets)
    sr = page.display_set("SR", state)
    page.double_click_thumbnail(sr["uid"])

    def shown(s: dict) -> dict | None:
        loaded = [d for d in s["displaySets"] if d["uid"] == sr["uid"] and d["isLoaded"]]
        viewport = next((v for v in s["viewports"] if v["id"] == s["activeViewportId"]), None)
        if not loaded or not viewport or sr["uid"] not in viewport["displaySetInstanceUIDs"]:
            return None
        # OHIF's SR viewport shows an image the SR refers to; its text view, the report's content
        # tree (the image shown before the double-click is the series' first, which ours never cite)
        image = shown_image(s) or ""
        return s if any(f"/instances/{sop}/" in image for sop in images) or title in page.viewport_text() else None

    return page.until(shown, 30, "OHIF to open the SR (an image or the report's text in the viewport)",
                      stop_on_error=True)


def _referenced_sops(content) -> set[str]:
    found = set()
    for item in content:
        found |= {ref.ReferencedSOPInstanceUID for ref in item.get("ReferencedSOPSequence", [])}
        found |= _referenced_sops(item.get("ContentSequence", []))
    return found


def check_sr(page: ViewerPage, case: Case) -> None:
    """The issue's SR checks: the SR opens on the measured image; once the radiologist accepts
    OHIF's offer to track its measurements, a measurement with the LLA value and two lines on
    the measured image; no error anywhere."""
    lla, sop = case.result["lla_deg"], case.measured_sop
    _open_sr(page, case)
    opened = page.until(lambda s: f"/instances/{sop}/" in (shown_image(s) or "") and s,
                        15, f"the SR viewport to show the measured image {sop}", stop_on_error=True)
    page.screenshot(f"{case.name}-sr-opened")
    preview = lines_on_image(opened, sop, measured_only=False)
    if not page.answer_prompt("Yes", 10):
        raise AssertionError(f"OHIF did not offer to track the SR's measurements ({TRACKING_PROMPT!r}): it "
                             f"found none it can load as a tool; the SR preview draws {preview}\n{page.report()}")

    def measured(s: dict) -> list[dict]:
        return [m for m in s["measurements"] if m["referencedImageId"] and f"/instances/{sop}/" in m["referencedImageId"]
                and any(abs(value - lla) <= DISPLAY_TOLERANCE_DEG for value in _numbers(m["displayText"]))]

    state = page.until(lambda s: measured(s) and s, 20, f"a measurement of {lla} deg on the measured image",
                       stop_on_error=True)
    page.show_image(sop)
    page.open_panel("measurements")
    page.screenshot(f"{case.name}-sr-tracked")
    state = page.state()
    lines = lines_on_image(state, sop)
    assert sum(n for _, n in lines) == 2, (f"expected two lines on the measured image, OHIF draws {lines} "
                                           f"(SR preview: {preview})\n{page.report(state)}")
    angles = [a["angle"] for a in state["annotations"] if a["angle"] is not None]
    assert any(abs(angle - lla) <= 0.1 for angle in angles), \
        f"the lines' angle {angles} is not the SR's {lla} deg\n{page.report(state)}"
    _no_errors(page, "with the SR open")


def _numbers(display_text) -> list[float]:
    text = json.dumps(display_text)
    return [float(x) for x in re.findall(r"-?\d+(?:\.\d+)?", text)]


def check_seg(page: ViewerPage, case: Case) -> None:
    """The SEG opens on its series with every segment OHIF lists labelled as in the file, the
    overlay is drawn on the measured slice, no error."""
    seg_file = pydicom.dcmread(case.out / "seg.dcm", stop_before_pixels=True)
    expected = [(int(s.SegmentNumber), s.SegmentLabel) for s in seg_file.SegmentSequence]
    state = page.open_study(case.study_uid, case.display_sets)
    seg = page.display_set("SEG", state)
    page.double_click_thumbnail(seg["uid"])

    def loaded(s: dict) -> dict | None:
        ours = [g for g in s["segmentations"] if g["id"] == seg["uid"] and g["segments"]]
        shown = any(r["segmentationId"] == seg["uid"] and r["visible"] is not False
                    for v in s["viewports"] for r in v["representations"])
        return s if ours and shown else None

    page.until(loaded, 40, "OHIF to load the SEG and overlay it on a viewport", stop_on_error=True)
    page.answer_prompt("Yes", 5)  # "Do you want to open this Segmentation?": load it for good
    page.show_image(case.measured_sop)
    state = page.until(loaded, 10, "the segmentation to stay after it was opened", stop_on_error=True)
    page.open_panel("segmentation")
    screenshot = page.screenshot(f"{case.name}-seg")
    segmentation = next(g for g in state["segmentations"] if g["id"] == seg["uid"])
    got = [(x["index"], x["label"]) for x in segmentation["segments"]]
    assert got == expected, f"OHIF lists segments {got}, the SEG has {expected}\n{page.report(state)}"
    coloured = page.viewport_colour_fraction(screenshot)
    assert coloured > 0.01, (f"only {coloured:.2%} of the viewport is coloured: the overlay is not drawn on "
                             f"the measured slice\n{page.report(state)}")
    _no_errors(page, "with the SEG open")


# -- the tests -----------------------------------------------------------------------


@pytest.mark.parametrize("name", ["phantom", "demo"])
def test_seg_opens_in_ohif_with_every_segment_labelled(ohif, cases, name):
    with ohif.page(f"{name} SEG") as page:
        check_seg(page, cases[name])


@pytest.mark.parametrize("name", ["phantom", "demo"])
def test_sr_opens_in_ohif_with_the_lla_and_two_endplate_lines(ohif, cases, name):
    with ohif.page(f"{name} SR") as page:
        check_sr(page, cases[name])


def test_an_sr_without_lines_still_opens_and_says_why(ohif, cases):
    """Spine found, no L1: the SR has no angle and no lines. OHIF opens it on the measured image
    and, tracked, shows an arrow saying why there is no angle; no error."""
    case = cases["no-l1"]
    sop = case.measured_sop
    with ohif.page("no-l1 SR") as page:
        try:
            _open_sr(page, case)
            page.until(lambda s: f"/instances/{sop}/" in (shown_image(s) or "") and s,
                       15, f"the SR viewport to show the measured image {sop}", stop_on_error=True)
            assert page.answer_prompt("Yes", 10), f"OHIF did not offer to track the SR's arrow\n{page.report()}"

            def arrow(s: dict) -> list[dict]:
                return [a for a in s["annotations"] if a["toolName"] == "ArrowAnnotate"
                        and f"/instances/{sop}/" in (a["referencedImageId"] or "")
                        and a["label"] == "LLA not measured: L1 not identified"]

            state = page.until(lambda s: arrow(s) and s, 20, "an arrow saying why there is no angle",
                               stop_on_error=True)
            assert [m for m in state["measurements"] if m["label"] == "LLA not measured: L1 not identified"], \
                f"the measurement panel does not list the reason\n{page.report(state)}"
            drawn = [tool for tool, _ in lines_on_image(state, sop)]
            assert drawn == ["ArrowAnnotate"], f"expected only the arrow, OHIF draws {drawn}\n{page.report(state)}"
            page.show_image(sop)
            page.open_panel("measurements")
        finally:
            page.screenshot("no-l1-sr")
        _no_errors(page, "with the SR open")


def test_the_sr_checks_pass_on_a_cobb_angle_encoded_as_ohif_writes_it(ohif, cases):
    """The SR checks above are satisfiable: the same checks on the reference SR
    (`reference_cobb_sr`) pass. It is also the encoding OHIF 3.13 hydrates into its Cobb angle
    tool."""
    with ohif.page("reference SR") as page:
        check_sr(page, cases["reference"])
