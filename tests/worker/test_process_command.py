"""`lumbarnode process` with the shipped networks: a phantom series in; a valid SEG, SR and
key image out that agree with result.json and with the phantom's own labels; the same UIDs
on a re-run; no DICOM for a refused series."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest
from pydicom.sr.codedict import codes as pydicom_codes

from dicom_io import codes
from dicom_io.mr_writer import MRSeriesInfo, write_mr_series
from pipeline.synthetic.phantom import PhantomParams
from tests.helpers.results import (
    PRIVATE_SCHEME_WARNING,
    dciodvfy,
    seg_frames_by_source,
    segment_numbers,
)
from tests.helpers.tools import require_tool
from worker.phantom_study import write_phantom_study
from worker.settings import Settings

LUMBARNODE = Path(sys.executable).with_name("lumbarnode")


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    params = PhantomParams(lla_deg=47.0, seed=1001, rows=448, cols=320, row_spacing_mm=0.6, col_spacing_mm=0.9)
    return write_phantom_study(params, tmp_path_factory.mktemp("phantom"))


@pytest.fixture(scope="module")
def processed(study, tmp_path_factory):
    out = tmp_path_factory.mktemp("out")
    done = subprocess.run([LUMBARNODE, "process", str(study.dicom_dir), "--out", str(out)],
                          capture_output=True, text=True)
    return done, out


def test_process_writes_valid_seg_sr_and_key_image(processed):
    done, out = processed
    assert done.returncode == 0, done.stderr
    assert sorted(p.name for p in out.iterdir()) == ["key.dcm", "overlay.png", "result.json", "seg.dcm", "sr.dcm"]
    for name in ("seg.dcm", "key.dcm"):
        assert dciodvfy(out / name) == ([], []), name
    errors, warnings = dciodvfy(out / "sr.dcm")
    assert errors == [] and all(PRIVATE_SCHEME_WARNING in w for w in warnings)


def test_the_series_and_its_results_are_one_consistent_study_for_dcentvfy(processed, study):
    """dicom3tools' dcentvfy over the source series and what `process` wrote: no patient or
    study attribute present in one object and absent or different in another (the key image
    lacked StudyDescription). Its remark on AccessionNumber's information entity is about its
    own per-IOD dictionaries, not our values (tests/dicom_io/test_dicom_results.py)."""
    _, out = processed
    files = [*sorted(study.dicom_dir.glob("*.dcm")), out / "seg.dcm", out / "sr.dcm", out / "key.dcm"]
    done = subprocess.run([require_tool("dcentvfy"), *map(str, files)], capture_output=True, text=True)
    remarks = [line for line in (done.stdout + done.stderr).splitlines() if line.strip()]
    assert [r for r in remarks if "Different information entities for attribute" not in r] == []


def test_sr_angle_and_class_are_those_of_result_json_and_close_to_the_truth(processed, study):
    _, out = processed
    result = json.loads((out / "result.json").read_text())
    assert abs(result["lla_deg"] - study.truth["lla_deg"]) < 3.0
    sr = hd.sr.srread(out / "sr.dcm")
    [group] = sr.content.get_image_measurement_groups()
    [angle] = group.get_measurements(name=pydicom_codes.SCT.CobbAngle)
    assert angle.value == pytest.approx(result["lla_deg"], abs=0.005)
    classes = {"hypolordosis": "HYPOLORDOSIS", "normal": "NORMOLORDOSIS", "hyperlordosis": "HYPERLORDOSIS"}
    evaluations = {e.name.value: e.value.value for e in group.get_qualitative_evaluations()}
    assert evaluations["LORDOSIS-CLASS"] == classes[result["class"]]
    # the polyline is the JSON's L1 and S1 endplates, (col, row) at pixel centres, on the measured image
    ends = [p for level in ("L1", "S1") for p in result["vertebrae"][level]["superior_endplate"]]
    [lines] = angle.referenced_coordinates  # nested under the angle, as OHIF's Cobb angle tool writes it
    np.testing.assert_allclose(lines.value, [[c + 0.5, r + 0.5] for r, c in ends], atol=0.02)
    image = lines.ContentSequence[0].ReferencedSOPSequence[0]
    assert image.ReferencedSOPInstanceUID == result["sop_instance_uid"]
    assert result["outputs"]["sr"]["sop_instance_uid"] == sr.SOPInstanceUID
    model = result["model"]
    text = subprocess.run([require_tool("dsrdump"), "+Pl", str(out / "sr.dcm")], capture_output=True, text=True).stdout
    assert f"weights_sha256={model['sha256']}" in text and f"weights_sha256={model['classifier']['sha256']}" in text


def test_seg_levels_lie_on_the_phantoms_own_labels(processed, study):
    """The L1..S1 segments overlap the phantom's true bodies on every slice where both exist."""
    _, out = processed
    seg = pydicom.dcmread(out / "seg.dcm")
    frames, numbers = seg_frames_by_source(seg), segment_numbers(seg)
    assert {"L1", "L2", "L3", "L4", "L5", "S1 / sacrum", "Intervertebral discs", "Spinal canal"} <= set(numbers)
    truth = np.load(study.labels_path)["labels"]  # canonical = stored layout for the phantom writer
    sources = {pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID: int(pydicom.dcmread(
        p, stop_before_pixels=True).InstanceNumber) - 1 for p in study.dicom_dir.iterdir()}
    for label, value in (("L1", 20), ("L3", 22), ("L5", 24), ("S1 / sacrum", 26)):
        found = np.stack([frames[(uid, None, numbers[label])] for uid in sorted(sources, key=sources.get)]).astype(bool)
        true = truth == value
        dice = 2 * (found & true).sum() / (found.sum() + true.sum())
        assert dice > 0.7, (label, dice)


def test_a_rerun_replaces_rather_than_duplicates_and_the_key_image_can_be_turned_off(processed, study, tmp_path):
    _, first = processed
    done = subprocess.run([LUMBARNODE, "process", str(study.dicom_dir), "--out", str(tmp_path), "--no-key-image"],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert not (tmp_path / "key.dcm").exists()
    for name in ("seg.dcm", "sr.dcm"):
        a, b = pydicom.dcmread(first / name), pydicom.dcmread(tmp_path / name)
        assert (a.SOPInstanceUID, a.SeriesInstanceUID) == (b.SOPInstanceUID, b.SeriesInstanceUID)
        assert a.StudyInstanceUID == b.StudyInstanceUID == study.truth["study_instance_uid"]


def test_results_are_numbered_after_their_source_series_and_under_the_site_root(study, monkeypatch):
    from dicom_io.series import load_series
    from worker.method import Models, run_series

    settings = dataclasses.replace(Settings(), uid_root="1.2.826.0.1.3680043.10.999", key_image=False)
    outputs = run_series(load_series(study.dicom_dir), Models.load(settings), settings)
    assert set(outputs.datasets) == {"seg", "sr"}
    for ds in outputs.datasets.values():
        assert ds.SOPInstanceUID.startswith("1.2.826.0.1.3680043.10.999.")
        assert ds.SeriesInstanceUID.startswith("1.2.826.0.1.3680043.10.999.")
    assert [int(outputs.datasets[k].SeriesNumber) for k in ("seg", "sr")] == [101, 102]  # source series 1


def test_a_refused_series_writes_no_dicom_and_says_why(tmp_path):
    volume = np.full((4, 64, 64), 100, np.uint16)
    folder = tmp_path / "axial"
    write_mr_series(volume, (1.0, 1.0), [0, 4, 8, 12], MRSeriesInfo(key="axial"), folder)
    for path in folder.iterdir():  # turn the slices axial
        ds = pydicom.dcmread(path)
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        ds.ImagePositionPatient = [0, 0, float(ds.InstanceNumber) * 4]
        ds.save_as(path)
    done = subprocess.run([LUMBARNODE, "process", str(folder), "--out", str(tmp_path / "out")],
                          capture_output=True, text=True)
    assert done.returncode == 2
    assert "not_sagittal" in done.stderr
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["result.json"]
    result = json.loads((tmp_path / "out" / "result.json").read_text())
    assert result["refused"].startswith("not_sagittal") and result["lla_deg"] is None


def test_a_spine_without_l1_gets_an_sr_without_an_angle_that_says_why(study, tmp_path):
    """The image above L2 blanked out: no L1 to measure from, so no number, exit 3."""
    import shutil

    folder = tmp_path / "dicom"
    shutil.copytree(study.dicom_dir, folder)
    labels = np.load(study.labels_path)["labels"]
    below_l1 = int(np.nonzero((labels == 20).any(axis=(0, 2)))[0].max()) + 3
    for path in folder.iterdir():
        ds = pydicom.dcmread(path)
        pixels = ds.pixel_array.copy()
        pixels[:below_l1] = 0
        ds.PixelData = pixels.tobytes()
        ds.save_as(path)
    done = subprocess.run([LUMBARNODE, "process", str(folder), "--out", str(tmp_path / "out")],
                          capture_output=True, text=True)
    assert done.returncode == 3, done.stderr
    result = json.loads((tmp_path / "out" / "result.json").read_text())
    assert result["lla_deg"] is None and "l1_not_found" in result["flags"] and "L1" not in result["vertebrae"]
    assert dciodvfy(tmp_path / "out" / "sr.dcm")[0] == []
    report = hd.sr.srread(tmp_path / "out" / "sr.dcm").content
    assert report.get_planar_roi_measurement_groups() == []
    for group in report.get_image_measurement_groups():
        assert group.get_measurements(name=pydicom_codes.SCT.CobbAngle) == []
    flags = [e.value.value for g in report.get_image_measurement_groups()
             for e in g.get_qualitative_evaluations(name=codes.QUALITY_FLAG)]
    assert "l1_not_found" in flags
    assert "L1" not in segment_numbers(pydicom.dcmread(tmp_path / "out" / "seg.dcm"))
