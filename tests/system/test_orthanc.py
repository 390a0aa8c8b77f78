"""Against a real PACS: Orthanc (Debian package, with DICOMweb) on free loopback ports, the
node (`lumbarnode serve`) known to it as a DICOM modality, and Orthanc known to the node as
an allowed caller with its return address. A study with real anatomy (the fastMONAI T2
volume shipped in demo/, wrapped as DICOM) is uploaded to Orthanc over REST and pushed to
the node as a PACS does; the test then waits on Orthanc, not on the node."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest
from pydicom.filebase import DicomBytesIO
from pydicom.sr.codedict import codes as pydicom_codes

from db import JobStore
from dicom_io.mr_writer import MRSeriesInfo, write_mr_series
from dicom_io.volumes import load_real, wrap_as_dicom
from tests.helpers.orthanc import Orthanc
from tests.helpers.tools import DCMTK_ENV, free_port, require_tool, wait_until
from worker.demo import DEMO_VOLUME
from worker.settings import Settings

@pytest.fixture(scope="module")
def site(tmp_path_factory):
    """Orthanc and the node, each knowing the other."""
    root = tmp_path_factory.mktemp("site")
    node_port = free_port()
    orthanc = Orthanc(root, modalities={"lumbarnode": ["LUMBARNODE", "127.0.0.1", node_port]})
    settings = Settings(data_dir=root / "node", host="127.0.0.1", port=node_port, quiet_period_s=1.0,
                        allowed_callers=f"ORTHANC=ORTHANC@127.0.0.1:{orthanc.dicom_port}")
    log = open(root / "node.log", "w")
    node = subprocess.Popen([sys.executable, "-m", "worker.cli", "serve"], env={**os.environ, **settings.environment()},
                            stdout=log, stderr=subprocess.STDOUT)
    from dicom_io.scu import echo

    wait_until(lambda: echo("LUMBARNODE", "127.0.0.1", node_port, calling_ae="ORTHANC"), 60, "the node", node)
    store = JobStore(settings.database_url)
    yield orthanc, settings, store
    store.dispose()
    node.send_signal(signal.SIGTERM)
    node.wait(timeout=120)
    log.close()
    orthanc.stop()


@pytest.fixture(scope="module")
def real_study(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("real") / "dicom"
    wrap_as_dicom(load_real(DEMO_VOLUME), folder)
    return folder


def series_of_study(orthanc: Orthanc, study_id: str) -> dict[str, dict]:
    """Orthanc series of a study by modality (SEG, SR, OT, MR)."""
    return {s["MainDicomTags"].get("Modality", ""): s for s in orthanc.get(f"/studies/{study_id}/series")}


def test_echo_both_ways(site):
    orthanc, settings, _ = site
    assert orthanc.request("POST", "/modalities/lumbarnode/echo", "{}") is not None  # HTTP 200, else urlopen raises
    done = subprocess.run([require_tool("echoscu"), "-aet", "ORTHANC", "-aec", settings.ae_title, "127.0.0.1",
                           str(settings.port)], capture_output=True, text=True, env=DCMTK_ENV)
    assert done.returncode == 0, done.stderr


def test_a_study_pushed_from_orthanc_gains_seg_sr_and_key_image(site, real_study):
    orthanc, settings, store = site
    uploaded = orthanc.upload(sorted(real_study.glob("*.dcm")))
    study_id, series_id = uploaded[0]["ParentStudy"], uploaded[0]["ParentSeries"]
    orthanc.request("POST", "/modalities/lumbarnode/store", {"Resources": [series_id], "Synchronous": True})
    # wait on the PACS: the study must gain the three result series
    found = wait_until(lambda: (lambda s: s if {"SEG", "SR", "OT"} <= set(s) else None)(series_of_study(orthanc, study_id)),
                       240, "Orthanc to hold the SEG, SR and key image")
    series_uid = orthanc.get(f"/series/{series_id}")["MainDicomTags"]["SeriesInstanceUID"]
    job = wait_until(lambda: (lambda j: j if j and j.status == "done" else None)(store.latest_job(series_uid)),
                     60, "the job row to say done")
    assert job.calling_ae == "ORTHANC" and job.destination == f"ORTHANC@127.0.0.1:{orthanc.dicom_port}"
    for stage in ("quiet_period_s", "queue_wait_s", "load_s", "inference_s", "measurement_s", "build_s", "export_s"):
        assert stage in job.timings
    [sr_instance] = orthanc.get(f"/series/{found['SR']['ID']}/instances")
    sr = pydicom.dcmread(DicomBytesIO(orthanc.get(f"/instances/{sr_instance['ID']}/file")))
    assert sr.SOPInstanceUID == job.sr_sop_instance_uid
    report = hd.sr.Comprehensive3DSR.from_dataset(sr).content
    [group] = report.get_image_measurement_groups()
    [angle] = group.get_measurements(name=pydicom_codes.SCT.CobbAngle)
    assert angle.value == pytest.approx(job.lla_deg, abs=0.005)
    # the SEG is in the same study and frame of reference, and DICOMweb serves it to viewers
    [seg_instance] = orthanc.get(f"/series/{found['SEG']['ID']}/instances")
    seg_uid = seg_instance["MainDicomTags"]["SOPInstanceUID"]
    assert seg_uid == job.seg_sop_instance_uid
    study_uid = orthanc.get(f"/studies/{study_id}")["MainDicomTags"]["StudyInstanceUID"]
    metadata = orthanc.get(f"/dicom-web/studies/{study_uid}/series/{found['SEG']['MainDicomTags']['SeriesInstanceUID']}/metadata")
    assert metadata[0]["00080016"]["Value"] == ["1.2.840.10008.5.1.4.1.1.66.4"]  # Segmentation Storage


def test_a_non_lumbar_series_is_skipped_and_nothing_comes_back(site, tmp_path):
    orthanc, settings, store = site
    volume = np.full((4, 64, 64), 300, np.uint16)
    write_mr_series(volume, (1.0, 1.0), [0, 4, 8, 12], MRSeriesInfo(key="orthanc-axial"), tmp_path)
    for path in tmp_path.glob("*.dcm"):
        ds = pydicom.dcmread(path)
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        ds.ImagePositionPatient = [0, 0, float(ds.InstanceNumber) * 4]
        ds.save_as(path)
    uploaded = orthanc.upload(sorted(tmp_path.glob("*.dcm")))
    study_id, series_id = uploaded[0]["ParentStudy"], uploaded[0]["ParentSeries"]
    orthanc.request("POST", "/modalities/lumbarnode/store", {"Resources": [series_id], "Synchronous": True})
    series_uid = orthanc.get(f"/series/{series_id}")["MainDicomTags"]["SeriesInstanceUID"]
    job = wait_until(lambda: (lambda j: j if j and j.status == "skipped" else None)(store.latest_job(series_uid)),
                     60, "the skipped job")
    assert job.reason == "not_sagittal:axial"
    time.sleep(1.0)  # a result would have been sent at once; make sure none arrives
    assert set(series_of_study(orthanc, study_id)) == {"MR"}
    assert store.exports(job.id) == []
