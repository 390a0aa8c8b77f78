"""The node end to end, as a site runs it: `lumbarnode serve` in its own process, DCMTK
`storescu` (and pynetdicom) sending, DCMTK `storescp` playing the PACS that receives the
SEG, SR and key image, the job row read from the database. Once on the embedded defaults
(SQLite job database, SQLite broker) and once on PostgreSQL + Redis, both real."""

from __future__ import annotations

import json
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
import redis
from pydicom.sr.codedict import codes as pydicom_codes
from pynetdicom import AE
from pynetdicom.sop_class import MRImageStorage

from db import JobStore
from db.access import AccessStore
from dicom_io.mr_writer import MRSeriesInfo, write_mr_series
from dicom_io.scu import echo, send_files
from pipeline.synthetic.phantom import PhantomParams
from tests.helpers.node import final_job
from tests.helpers.tools import (
    DCMTK_ENV,
    REDIS_URL,
    free_port,
    postgres_schema,
    require_tool,
    schema_url,
    storescp,
    wait_until,
)
from worker.phantom_study import write_phantom_study
from worker.settings import Settings

FINAL = ("done", "skipped", "failed", "export_failed")


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    return write_phantom_study(PhantomParams(lla_deg=47.0, seed=1001), tmp_path_factory.mktemp("phantom"))


@pytest.fixture(scope="module", params=["embedded", "postgresql+redis"])
def backend(request):
    """Database and broker URLs, isolated for this module (a schema, a Redis database)."""
    if request.param == "embedded":
        yield {}
        return
    broker = REDIS_URL.rsplit("/", 1)[0] + "/7"
    redis.Redis.from_url(broker).flushdb()
    with postgres_schema("lumbarnode_node") as schema:
        yield {"database_url": schema_url(schema), "broker_url": broker}


@pytest.fixture(scope="module")
def pacs(tmp_path_factory):
    """DCMTK storescp as the PACS receiving the results."""
    port = free_port()
    folder = tmp_path_factory.mktemp("pacs")
    with storescp("PACS", folder, port):
        yield port, folder


DOWN_PACS_PORT = free_port()  # nothing listens here until a test starts a PACS on it


@pytest.fixture(scope="module")
def node(backend, pacs, tmp_path_factory):
    pacs_port, _ = pacs
    settings = Settings(data_dir=tmp_path_factory.mktemp("node"), host="127.0.0.1", port=free_port(),
                        quiet_period_s=1.0, export_backoff_s=0.5, export_retries=2,
                        allowed_callers=f"STORESCU=PACS@127.0.0.1:{pacs_port},SCU=PACS@127.0.0.1:{pacs_port},"
                                        f"LATE=LATEPACS@127.0.0.1:{DOWN_PACS_PORT}",
                        **backend)
    log = open(settings.data_dir / "node.log", "w")
    process = subprocess.Popen([sys.executable, "-m", "worker.cli", "serve"], env={**os.environ,
                               **settings.environment()}, stdout=log, stderr=subprocess.STDOUT)
    wait_until(lambda: echo(settings.ae_title, "127.0.0.1", settings.port, calling_ae="SCU"), 60,
               "the node to listen", process)
    store = JobStore(settings.database_url)
    yield settings, process, store
    store.dispose()
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=120)
    log.close()


def received(folder: Path) -> dict[str, pydicom.Dataset]:
    return {ds.SOPInstanceUID: ds for ds in (pydicom.dcmread(p) for p in folder.iterdir() if p.is_file())}


def test_a_study_sent_by_storescu_comes_back_as_seg_sr_and_key_image(node, pacs, study):
    settings, process, store = node
    files = sorted(study.dicom_dir.glob("*.dcm"))
    done = subprocess.run([require_tool("storescu"), "-aet", "STORESCU", "-aec", settings.ae_title, "127.0.0.1",
                           str(settings.port), *map(str, files)], capture_output=True, text=True, env=DCMTK_ENV)
    assert done.returncode == 0, done.stderr
    job = final_job(store, study.truth["series_instance_uid"])
    assert job.status == "done", (job.status, job.error)
    assert job.instance_count == len(files) and job.calling_ae == "STORESCU"
    assert abs(job.lla_deg - 47.0) < 3.0 and job.lla_class == "normal"
    assert job.model_sha256 and len(job.model_sha256) == 64
    for stage in ("quiet_period_s", "queue_wait_s", "load_s", "inference_s", "measurement_s", "build_s", "export_s"):
        assert job.timings[stage] >= 0, stage
    assert job.timings["quiet_period_s"] >= 1.0
    [export] = store.exports(job.id)
    assert export.status == "sent" and export.dimse_status == "0x0000 0x0000 0x0000"
    # what the PACS holds: the three objects of this job, in the source study
    at_pacs = received(pacs[1])
    assert {job.seg_sop_instance_uid, job.sr_sop_instance_uid, job.key_sop_instance_uid} <= set(at_pacs)
    for uid in (job.seg_sop_instance_uid, job.sr_sop_instance_uid, job.key_sop_instance_uid):
        assert at_pacs[uid].StudyInstanceUID == study.truth["study_instance_uid"]
    sr = hd.sr.Comprehensive3DSR.from_dataset(at_pacs[job.sr_sop_instance_uid])
    [group] = sr.content.get_image_measurement_groups()
    [angle] = group.get_measurements(name=pydicom_codes.SCT.CobbAngle)
    assert angle.value == pytest.approx(job.lla_deg, abs=0.005)
    assert Path(job.results_dir, "overlay.png").is_file()


def test_a_duplicate_starts_nothing_and_a_late_instance_starts_a_new_version(node, pacs, study):
    settings, _, store = node
    series_uid = study.truth["series_instance_uid"]
    first = final_job(store, series_uid)
    files = sorted(study.dicom_dir.glob("*.dcm"))
    assert send_files(files[:2], settings.ae_title, "127.0.0.1", settings.port, calling_ae="SCU").ok
    # One more lateral slice, one spacing beyond the last (a series with a gap would wait and be skipped).
    headers = sorted((pydicom.dcmread(f, stop_before_pixels=True) for f in files),
                     key=lambda ds: float(ds.ImagePositionPatient[0]))
    step = float(headers[1].ImagePositionPatient[0]) - float(headers[0].ImagePositionPatient[0])
    late = pydicom.dcmread(files[0])
    late.SOPInstanceUID = pydicom.uid.generate_uid()
    late.InstanceNumber = max(int(ds.InstanceNumber) for ds in headers) + 1
    late.ImagePositionPatient = [float(headers[-1].ImagePositionPatient[0]) + step, *late.ImagePositionPatient[1:]]
    path = study.dicom_dir.parent / "late.dcm"
    late.save_as(path)
    time.sleep(settings.quiet_period_s + 1.5)  # past the quiet period: the duplicates alone made no job
    assert store.latest_job(series_uid).id == first.id
    assert send_files([path], settings.ae_title, "127.0.0.1", settings.port, calling_ae="SCU").ok
    second = final_job(store, series_uid, version=2)
    assert second.id != first.id and second.instance_count == first.instance_count + 1
    assert late.SOPInstanceUID in second.instance_uids


def test_a_non_lumbar_series_is_skipped_with_its_reason_and_nothing_is_sent(node, pacs, tmp_path):
    settings, _, store = node
    before = set(received(pacs[1]))
    volume = np.full((4, 64, 64), 300, np.uint16)
    folder = tmp_path / "axial"
    write_mr_series(volume, (1.0, 1.0), [0, 4, 8, 12], MRSeriesInfo(key="axial-node"), folder)
    for path in folder.iterdir():
        ds = pydicom.dcmread(path)
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        ds.ImagePositionPatient = [0, 0, float(ds.InstanceNumber) * 4]
        ds.save_as(path)
    series_uid = pydicom.dcmread(next(folder.iterdir())).SeriesInstanceUID
    assert send_files(sorted(folder.iterdir()), settings.ae_title, "127.0.0.1", settings.port, calling_ae="SCU").ok
    job = final_job(store, series_uid, timeout_s=60)
    assert (job.status, job.reason) == ("skipped", "not_sagittal:axial")
    assert store.exports(job.id) == []
    assert set(received(pacs[1])) == before


def test_unknown_callers_are_rejected_at_association_time(node):
    settings, _, store = node
    ae = AE(ae_title="INTRUDER")
    ae.add_requested_context(MRImageStorage)
    assoc = ae.associate("127.0.0.1", settings.port, ae_title=settings.ae_title)
    assert assoc.is_rejected
    # ... and the audit trail says who was turned away, from where, and why (`lumbarnode audit`)
    access = AccessStore(store)
    row = wait_until(lambda: next(iter(access.audit_entries(action="association_rejected", actor="INTRUDER")), None),
                     30, "the audit row of the rejected association")
    assert (row.actor_kind, row.outcome, row.address) == ("dicom", "denied", "127.0.0.1")
    assert "'INTRUDER' is not an allowed caller" in row.detail
    env = {**os.environ, **settings.environment()}
    shown = subprocess.run([sys.executable, "-m", "worker.cli", "audit", "--action", "association_rejected", "--json"],
                           capture_output=True, text=True, env=env)
    assert shown.returncode == 0, shown.stderr
    assert [e["actor"] for e in json.loads(shown.stdout)] == ["INTRUDER"]


def test_jobs_cli_lists_and_shows_the_jobs(node, study):
    settings, _, store = node
    env = {**os.environ, **settings.environment()}
    listing = subprocess.run([sys.executable, "-m", "worker.cli", "jobs", "list", "--status", "done"],
                             capture_output=True, text=True, env=env)
    assert listing.returncode == 0, listing.stderr
    assert study.truth["series_instance_uid"] in listing.stdout and "skipped" not in listing.stdout
    job = store.latest_job(study.truth["series_instance_uid"])
    shown = subprocess.run([sys.executable, "-m", "worker.cli", "jobs", "show", str(job.id)],
                           capture_output=True, text=True, env=env)
    assert shown.returncode == 0, shown.stderr
    assert "inference_s" in shown.stdout and "export #1" in shown.stdout and job.model_sha256 in shown.stdout
    assert "PHANTOM^LUMBAR" not in shown.stdout


def test_a_pacs_that_is_down_ends_in_export_failed_and_jobs_retry_delivers_later(node, tmp_path):
    settings, _, store = node
    study = write_phantom_study(PhantomParams(lla_deg=35.0, seed=2002, slices=9), tmp_path / "study")
    files = sorted(study.dicom_dir.glob("*.dcm"))
    assert send_files(files, settings.ae_title, "127.0.0.1", settings.port, calling_ae="LATE").ok
    job = final_job(store, study.truth["series_instance_uid"])
    assert job.status == "export_failed" and "LATEPACS@127.0.0.1" in job.destination
    attempts = store.exports(job.id)
    assert [e.attempt for e in attempts] == [1, 2, 3] and all(e.status == "failed" for e in attempts)
    assert attempts[2].started_at - attempts[1].started_at > attempts[1].started_at - attempts[0].started_at
    folder = tmp_path / "latepacs"
    folder.mkdir()
    with storescp("LATEPACS", folder, DOWN_PACS_PORT):
        retry = subprocess.run([sys.executable, "-m", "worker.cli", "jobs", "retry", str(job.id)],
                               capture_output=True, text=True, env={**os.environ, **settings.environment()})
        assert retry.returncode == 0, retry.stderr
        wait_until(lambda: store.get_job(job.id).status == "done", 120, "the retried export")
    assert set(received(folder)) == {job.seg_sop_instance_uid, job.sr_sop_instance_uid, job.key_sop_instance_uid}
    assert store.exports(job.id)[-1].status == "sent"


def test_the_logs_of_the_run_hold_no_patient_name_or_id(node, study):
    settings, _, store = node
    text = (settings.data_dir / "node.log").read_text()
    assert "lumbarnode.assembly" in text  # the log is the node's, and it logged the run
    for secret in ("PHANTOM^LUMBAR", "PHANTOM-1001", "PHANTOM^", "PHANTOM-"):  # the patient name and ID
        assert secret not in text
    events = [e.message for j in store.list_jobs(limit=50) for e in store.events(j.id)]
    assert events and not any("PHANTOM" in m for m in events)


def test_the_node_stops_cleanly_on_sigterm(node):
    settings, process, _ = node
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=120) == 0
    assert not list(settings.spool_dir.rglob("*.part"))
