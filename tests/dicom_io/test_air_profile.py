"""IHE Radiology AI Results (AIR, Rev. 1.1): what the profile asks of an AI result, on our
SEG, TID 1500 SR and key image (Secondary Capture). One test per requirement we meet; each
object is also checked by dciodvfy (no errors, no new warnings) and the SR by dsrdump.

Built from plain data as in test_dicom_results.py (tests/helpers/results.py), and once end to
end through `lumbarnode process` with the shipped networks, so that the weights named are the
ones that ran.
"""

from __future__ import annotations

import dataclasses
import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pydicom
import pytest

from dicom_io import codes
from dicom_io.key_image import build_key_image
from dicom_io.results import Algorithm, software_version
from dicom_io.seg import build_segmentation
from dicom_io.series import load_series
from dicom_io.sr import build_report
from dicom_io.uids import ResultUIDs
from tests.helpers.results import (
    CNN,
    PRIVATE_SCHEME_WARNING,
    UNET,
    asymmetric_labels,
    dciodvfy,
    finding_for,
    uids_for,
    write_series,
)
from tests.helpers.tools import dciodvfy_errors, require_tool

LUMBARNODE = Path(sys.executable).with_name("lumbarnode")
OTHER_WEIGHTS = Algorithm(UNET.name, UNET.version, "c" * 64)  # the same network retrained
PICTURE = np.zeros((80, 60, 3), np.uint8)


def _write(folder: Path, series, uids, segmentation: Algorithm = UNET) -> dict[str, Path]:
    labels = asymmetric_labels()
    finding = dataclasses.replace(finding_for(series), segmentation=segmentation)
    seg = build_segmentation(series, labels, segmentation, uids)
    objects = {"seg": seg, "sr": build_report(series, finding, uids, seg),
               "key": build_key_image(series, finding, PICTURE, uids)}
    paths = {}
    for kind, ds in objects.items():
        paths[kind] = folder / f"{kind}.dcm"
        ds.save_as(paths[kind], enforce_file_format=True)
    return paths


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    folder = tmp_path_factory.mktemp("air")
    series = load_series(write_series(folder / "mr", asymmetric_labels()))
    return series, _write(folder, series, uids_for(series))


def _algorithm_items(path: Path) -> list[pydicom.Dataset]:
    """Our networks' Contributing Equipment items (not the source's acquisition, not highdicom)."""
    ds = pydicom.dcmread(path, stop_before_pixels=True)
    return [item for item in ds.ContributingEquipmentSequence if item.Manufacturer == "lumbarnode"
            and item.PurposeOfReferenceCodeSequence[0].CodeValue != "109101"]


def _dsrdump(path: Path) -> str:
    out = subprocess.run([require_tool("dsrdump"), "+Pc", "+Pl", "+Pu", str(path)], capture_output=True, text=True, check=False)
    assert out.returncode == 0, out.stderr
    return out.stdout


def _observer_uid(path: Path) -> str:
    [uid] = re.findall(r'UIDREF:\(121012,DCM,"Device Observer UID"\)="([0-9.]+)"', _dsrdump(path))
    return uid


# --- 6.5.3.1: every algorithm in the Contributing Equipment Sequence ------------------------

def test_contributing_equipment_names_each_network_of_seg_sr_and_key_image(built):
    _, paths = built
    expected = {"seg": [UNET], "sr": [UNET, CNN], "key": [UNET, CNN]}  # the SEG is the segmentation's alone
    for kind, algorithms in expected.items():
        items = _algorithm_items(paths[kind])
        assert [str(i.ManufacturerModelName) for i in items] == [a.name for a in algorithms], kind
        for item, algorithm in zip(items, algorithms):
            purpose = item.PurposeOfReferenceCodeSequence[0]
            # CID 7005 "Processing Equipment": made new instances (see dicom_io/codes.py)
            assert (purpose.CodeValue, purpose.CodingSchemeDesignator) == ("109102", "DCM")
            assert list(item.SoftwareVersions) == [software_version(), algorithm.version]
            assert item.DeviceSerialNumber == codes.device_uid(algorithm.sha256)
            assert algorithm.sha256 in item.ContributionDescription
        # highdicom's own items are kept: the source's acquisition equipment first, highdicom last
        sequence = pydicom.dcmread(paths[kind], stop_before_pixels=True).ContributingEquipmentSequence
        assert sequence[0].PurposeOfReferenceCodeSequence[0].CodeValue == "109101"
        assert sequence[-1].ManufacturerModelName == "highdicom"


def test_the_device_uid_changes_with_the_weights_and_with_nothing_else(built, tmp_path):
    series, paths = built
    uid = codes.device_uid(UNET.sha256)
    assert pydicom.uid.UID(uid).is_valid and uid.startswith("2.25.") and len(uid) <= 64
    assert codes.device_uid(UNET.sha256.upper()) == uid
    assert codes.device_uid(OTHER_WEIGHTS.sha256) != uid
    # another job on the same weights (here under a site root, which also renames every result):
    # the same device; the same series with retrained weights: another device
    rooted = ResultUIDs.derive(series.series_instance_uid, [s.sop_instance_uid for s in series.slices],
                               UNET.sha256, root="1.2.826.0.1.3680043.10.999")
    (tmp_path / "job").mkdir()
    (tmp_path / "retrained").mkdir()
    other_job = _write(tmp_path / "job", series, rooted)
    retrained = _write(tmp_path / "retrained", series, uids_for(series), OTHER_WEIGHTS)
    for kind in ("seg", "sr", "key"):
        assert pydicom.dcmread(other_job[kind]).SOPInstanceUID != pydicom.dcmread(paths[kind]).SOPInstanceUID
        assert _algorithm_items(other_job[kind])[0].DeviceSerialNumber == uid
        assert _algorithm_items(retrained[kind])[0].DeviceSerialNumber == codes.device_uid(OTHER_WEIGHTS.sha256)
    assert _observer_uid(other_job["sr"]) == uid  # it was derived from the job before AIR
    assert _observer_uid(retrained["sr"]) == codes.device_uid(OTHER_WEIGHTS.sha256)


# --- SEG: segments made by an identified AI algorithm --------------------------------------

def test_every_segment_is_automatic_with_the_networks_algorithm_identification(built):
    _, paths = built
    seg = pydicom.dcmread(paths["seg"], stop_before_pixels=True)
    assert len(seg.SegmentSequence) == 3
    for segment in seg.SegmentSequence:
        assert segment.SegmentAlgorithmType == "AUTOMATIC"
        assert segment.SegmentAlgorithmName == UNET.name
        [algorithm] = segment.SegmentationAlgorithmIdentificationSequence
        family = algorithm.AlgorithmFamilyCodeSequence[0]
        assert (family.CodeValue, family.CodingSchemeDesignator) == ("123110", "DCM")  # artificial intelligence
        assert (algorithm.AlgorithmName, algorithm.AlgorithmVersion) == (UNET.name, UNET.version)
        assert f"weights_sha256={UNET.sha256}" in algorithm.AlgorithmParameters


# --- SR: observer, procedure reported, algorithm of each measurement -----------------------

def test_sr_observer_is_the_segmentation_network_as_a_device(built):
    _, paths = built
    text = _dsrdump(paths["sr"])
    assert '<has obs context CODE:(121005,DCM,"Observer Type")=(121007,DCM,"Device")>' in text
    uid = codes.device_uid(UNET.sha256)
    assert _observer_uid(paths["sr"]) == uid == _algorithm_items(paths["seg"])[0].DeviceSerialNumber
    assert '(121013,DCM,"Device Observer Name")="lumbarnode"' in text
    assert '(121014,DCM,"Device Observer Manufacturer")="lumbarnode"' in text
    assert f'(121015,DCM,"Device Observer Model Name")="{UNET.name} {UNET.version}"' in text
    assert f'(121016,DCM,"Device Observer Serial Number")="{uid}"' in text


def test_sr_procedure_reported_is_the_imaging_procedure_analysed(built):
    _, paths = built
    [procedure] = re.findall(r'CODE:\(121058,DCM,"Procedure reported"\)=\(([^)]*)\)', _dsrdump(paths["sr"]))
    assert procedure == '24968-0,LN,"MR Lumbar spine"'  # not the algorithm, nor "Imaging procedure"


def test_sr_measurements_name_their_algorithm_and_version(built):
    _, paths = built
    text = _dsrdump(paths["sr"])
    names = re.findall(r'TEXT:\(111001,DCM,"Algorithm Name"\)="([^"]+)"', text)
    versions = re.findall(r'TEXT:\(111003,DCM,"Algorithm Version"\)="([^"]+)"', text)
    # the group, the angle and its spread name the segmentation network; the probability the classifier
    assert names.count(UNET.name) >= 2 and names.count(CNN.name) == 1
    assert len(versions) == len(names) and set(versions) == {UNET.version, CNN.version}
    angle = text[text.index('NUM:(285285000,SCT,"Cobb angle")'):]
    assert angle.index(f'"Algorithm Name")="{UNET.name}"') < angle.index('NUM:(122157,DCM,"Probability")')


# --- key image ---------------------------------------------------------------------------

def test_key_image_says_it_is_derived_with_burned_in_results(built):
    _, paths = built
    key = pydicom.dcmread(paths["key"], stop_before_pixels=True)
    assert key.BurnedInAnnotation == "YES" and list(key.ImageType)[:2] == ["DERIVED", "SECONDARY"]
    assert [i.DeviceSerialNumber for i in _algorithm_items(paths["key"])] == [
        codes.device_uid(UNET.sha256), codes.device_uid(CNN.sha256)]


# --- validators -----------------------------------------------------------------------------

def test_dciodvfy_finds_no_errors_and_no_new_warnings(built):
    _, paths = built
    assert dciodvfy(paths["seg"]) == ([], [])
    assert dciodvfy(paths["key"]) == ([], [])
    errors, warnings = dciodvfy(paths["sr"])
    assert errors == [] and warnings and all(PRIVATE_SCHEME_WARNING in w for w in warnings)


# --- end to end: the weights that ran -------------------------------------------------------

@pytest.fixture(scope="module")
def processed(tmp_path_factory):
    from pipeline.synthetic.phantom import PhantomParams
    from worker.phantom_study import write_phantom_study

    params = PhantomParams(lla_deg=47.0, seed=1001, rows=448, cols=320, row_spacing_mm=0.6, col_spacing_mm=0.9)
    study = write_phantom_study(params, tmp_path_factory.mktemp("phantom"))
    out = tmp_path_factory.mktemp("out")
    done = subprocess.run([LUMBARNODE, "process", str(study.dicom_dir), "--out", str(out)],
                          capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    return out


def test_the_processed_results_name_the_weights_that_ran(processed):
    model = json.loads((processed / "result.json").read_text())["model"]
    segmentation, classifier = codes.device_uid(model["sha256"]), codes.device_uid(model["classifier"]["sha256"])
    assert [i.DeviceSerialNumber for i in _algorithm_items(processed / "seg.dcm")] == [segmentation]
    for kind in ("sr", "key"):
        items = _algorithm_items(processed / f"{kind}.dcm")
        assert [(str(i.ManufacturerModelName), i.DeviceSerialNumber) for i in items] == [
            (model["name"], segmentation), (model["classifier"]["name"], classifier)]
    assert _observer_uid(processed / "sr.dcm") == segmentation
    for kind in ("seg", "sr", "key"):
        assert dciodvfy_errors(processed / f"{kind}.dcm") == [], kind
