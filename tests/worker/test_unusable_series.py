"""Series the method cannot use end as `skipped` jobs with their reason, and nothing is lost:
axial, CT, brain MR, a single slice (decided from headers when the series is complete) and
mixed image sizes (found when the worker reads the pixels' geometry).

The real node (`worker.node.Node`: storage SCP, assembly, job database) runs in this
process and instances arrive over real associations; the Celery queue is replaced by a
list of job ids (a stand-in: these tests are about what is decided before and at the
start of a job; the queue is tested end to end in test_node.py and test_faults.py)."""

from __future__ import annotations

import threading
from pathlib import Path

import pydicom
import pytest

from db import JobStore
from dicom_io.scu import send_files
from tests.helpers.dicom_files import write_series
from tests.helpers.tools import free_port, wait_until
from worker import jobs
from worker.node import Node
from worker.settings import Settings


@pytest.fixture
def node(tmp_path):
    settings = Settings(data_dir=tmp_path / "node", host="127.0.0.1", port=free_port(), quiet_period_s=0.3,
                        allowed_callers="PACS", min_free_spool_mb=0)
    queued: list[int] = []
    node = Node(settings, enqueue=queued.append)
    node.start()
    loop = threading.Thread(target=node.run, daemon=True)
    loop.start()
    yield settings, node.store, queued
    node.stop()
    loop.join(timeout=10)


def send_and_wait(settings: Settings, store: JobStore, files: list[Path]):
    assert send_files(files, settings.ae_title, "127.0.0.1", settings.port, calling_ae="PACS").ok
    series_uid = pydicom.dcmread(files[0], stop_before_pixels=True).SeriesInstanceUID
    # A job is written as received and then queued (or written as skipped): wait for the triage's
    # answer, not the first row, which a slow machine showed before the queue step had run.
    job = wait_until(lambda: (j := store.latest_job(series_uid)) and j.status != "received" and j, 30,
                     f"the triaged job of series {series_uid}")
    spooled = {p.stem for p in settings.spool_dir.rglob("*.dcm")}
    assert set(job.instance_uids) == {pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID for f in files}
    assert set(job.instance_uids) <= spooled  # kept, whatever the method thinks of them
    return job


CASES = {
    "axial": (dict(ImageOrientationPatient=[1, 0, 0, 0, 1, 0],
                   ImagePositionPatient=lambda ds: [0, 0, 4.0 * float(ds.InstanceNumber)]), "not_sagittal:axial"),
    "ct": (dict(SOPClassUID="1.2.840.10008.5.1.4.1.1.2", Modality="CT",
                file_meta=lambda ds: _with_class(ds.file_meta, "1.2.840.10008.5.1.4.1.1.2")), "not_an_mr_image"),
    "brain": (dict(BodyPartExamined="HEAD", SeriesDescription="T1 SAG BRAIN", StudyDescription="MR HEAD"),
              "not_lumbar:head"),
}


def _with_class(meta, sop_class: str):
    meta.MediaStorageSOPClassUID = sop_class
    return meta


@pytest.mark.parametrize("case", sorted(CASES))
def test_a_series_the_method_cannot_use_is_skipped_with_its_reason(node, tmp_path, case):
    settings, store, queued = node
    headers, reason = CASES[case]
    job = send_and_wait(settings, store, write_series(tmp_path / case, f"unusable-{case}", **headers))
    assert (job.status, job.reason) == ("skipped", reason)
    assert job.id not in queued and job.error
    assert any(e.kind == "skipped" and reason in e.message for e in store.events(job.id))


def test_a_single_slice_is_skipped(node, tmp_path):
    settings, store, queued = node
    job = send_and_wait(settings, store, write_series(tmp_path / "one", "unusable-one", slices=1))
    assert (job.status, job.reason) == ("skipped", "single_slice") and job.id not in queued


def test_mixed_image_sizes_are_skipped_when_the_worker_reads_them(node, tmp_path):
    """Headers alone look usable (triage reads one file); the worker finds the sizes differ."""
    settings, store, queued = node
    files = write_series(tmp_path / "a", "unusable-mixed", slices=4, shape=(48, 64))
    other = pydicom.dcmread(write_series(tmp_path / "b", "unusable-mixed-b", slices=1, shape=(64, 64))[0])
    first = pydicom.dcmread(files[0])
    for name in ("StudyInstanceUID", "SeriesInstanceUID", "FrameOfReferenceUID", "ImageOrientationPatient"):
        setattr(other, name, getattr(first, name))
    other.ImagePositionPatient = [16.0, *first.ImagePositionPatient[1:]]
    other.InstanceNumber = 5
    other.save_as(tmp_path / "a" / "odd.dcm")
    job = send_and_wait(settings, store, [*files, tmp_path / "a" / "odd.dcm"])
    assert job.status == "queued" and queued == [job.id]
    assert jobs.run_job(settings, store, job.id) is None  # the worker's own code, before any network is loaded
    job = store.get_job(job.id)
    assert (job.status, job.reason) == ("skipped", "mixed_geometry"), job.error
    assert job.error and job.instance_count == 5
