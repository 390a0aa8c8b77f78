"""Nothing lost: a worker killed in the middle of a job, the node killed while a series is
arriving, a spool disk nearly full. Real processes (`lumbarnode serve`, DCMTK storescp as
the PACS), killed with SIGKILL as the kernel or an operator would."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pydicom
import pytest
from pynetdicom import AE
from pynetdicom.sop_class import MRImageStorage

from db import JobStore
from dicom_io.scp import StorageSCP
from dicom_io.scu import echo, send_files
from dicom_io.series import decodable_transfer_syntaxes
from tests.conftest import free_port, storescp, wait_until
from tests.test_node import final_job
from training.phantom import PhantomParams
from training.studies import write_phantom_study
from worker.settings import Settings


def start_serve(settings: Settings, log: Path) -> subprocess.Popen:
    """`lumbarnode serve` in its own process group, so that the test can kill it whole."""
    process = subprocess.Popen([sys.executable, "-m", "worker.cli", "serve"], env={**os.environ, **settings.environment()},
                               stdout=open(log, "a"), stderr=subprocess.STDOUT, start_new_session=True)
    wait_until(lambda: echo(settings.ae_title, "127.0.0.1", settings.port, calling_ae="SCU"), 60, "the node", process)
    return process


def kill_group(process: subprocess.Popen) -> None:
    os.killpg(process.pid, signal.SIGKILL)
    process.wait(timeout=30)


def stop_group(process: subprocess.Popen) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=120)
    try:
        os.killpg(process.pid, signal.SIGKILL)  # anything left of the group
    except ProcessLookupError:
        pass


def inference_worker(process: subprocess.Popen) -> int:
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                cmd = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
                group = os.getpgid(int(entry.name))
            except (OSError, ProcessLookupError):
                continue
            if group == process.pid and "worker --queues inference" in cmd:
                return int(entry.name)
    raise LookupError("no inference worker found")


@pytest.fixture
def pacs(tmp_path):
    port, folder = free_port(), tmp_path / "pacs"
    folder.mkdir()
    with storescp("PACS", folder, port):
        yield port, folder


def node_settings(tmp_path: Path, pacs_port: int, **changes) -> Settings:
    return Settings(data_dir=tmp_path / "node", host="127.0.0.1", port=free_port(), quiet_period_s=1.0,
                    allowed_callers=f"SCU=PACS@127.0.0.1:{pacs_port}", **changes)


def test_a_worker_killed_mid_job_comes_back_and_the_job_completes_once(tmp_path, pacs, reliability):
    settings = node_settings(tmp_path, pacs[0], job_timeout_s=4.0)
    study = write_phantom_study(PhantomParams(lla_deg=44.0, seed=3003, slices=40), tmp_path / "study")
    node = start_serve(settings, tmp_path / "node.log")
    store = JobStore(settings.database_url)
    try:
        wait_until(lambda: "ready" in (tmp_path / "node.log").read_text(), 120, "the workers to be ready", node)
        assert send_files(sorted(study.dicom_dir.glob("*.dcm")), settings.ae_title, "127.0.0.1", settings.port,
                          calling_ae="SCU").ok
        series_uid = study.truth["series_instance_uid"]
        wait_until(lambda: (lambda j: j and j.status == "running")(store.latest_job(series_uid)), 60,
                   "the job to start", node)
        os.kill(inference_worker(node), signal.SIGKILL)
        job = final_job(store, series_uid, timeout_s=180)
        assert job.status == "done", (job.status, job.error)
        assert job.attempts >= 2
        assert any(e.kind == "requeued" for e in store.events(job.id))
        assert [e.status for e in store.exports(job.id)] == ["sent"]
        files = [p for p in pacs[1].iterdir() if p.is_file()]
        uids = {pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID for p in files}
        assert len(files) == 3 and uids == {job.seg_sop_instance_uid, job.sr_sop_instance_uid, job.key_sop_instance_uid}
        reliability(case="inference worker SIGKILLed mid-job", sent=job.instance_count, stored=job.instance_count,
                    jobs=1, lost=0, duplicates=len(files) - len(uids), note=f"done after {job.attempts} attempts")
    finally:
        store.dispose()
        stop_group(node)


def test_a_node_killed_while_a_series_arrives_loses_nothing_it_acknowledged(tmp_path, pacs, reliability):
    settings = node_settings(tmp_path, pacs[0])
    study = write_phantom_study(PhantomParams(lla_deg=50.0, seed=3004, slices=12), tmp_path / "study")
    files = sorted(study.dicom_dir.glob("*.dcm"))
    node = start_serve(settings, tmp_path / "node.log")
    ae = AE(ae_title="SCU")
    ae.add_requested_context(MRImageStorage)
    assoc = ae.associate("127.0.0.1", settings.port, ae_title=settings.ae_title)
    acknowledged = []
    for path in files[:7]:
        status = assoc.send_c_store(path)
        if status and status.Status == 0x0000:
            acknowledged.append(pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID)
    kill_group(node)  # mid-association: the node and its workers are gone at once
    assoc.abort()
    spooled = {p.stem for p in settings.spool_dir.rglob("*.dcm")}
    assert len(acknowledged) == 7 and set(acknowledged) <= spooled
    assert not [p for p in settings.spool_dir.rglob("*") if p.name.endswith(".part")]
    node = start_serve(settings, tmp_path / "node.log")
    store = JobStore(settings.database_url)
    try:
        assert send_files(files, settings.ae_title, "127.0.0.1", settings.port, calling_ae="SCU").ok  # the sender retries
        job = final_job(store, study.truth["series_instance_uid"], timeout_s=180)
        assert job.status == "done", (job.status, job.error)
        assert job.instance_count == len(files) and job.version == 1
        assert len(store.list_jobs(series_instance_uid=study.truth["series_instance_uid"])) == 1
        reliability(case="node SIGKILLed while a series arrives", sent=len(files), stored=job.instance_count,
                    jobs=1, lost=len(acknowledged) - len(set(acknowledged) & spooled), duplicates=0,
                    note="7 acknowledged before the kill, sender resent all")
    finally:
        store.dispose()
        stop_group(node)


def test_a_nearly_full_spool_refuses_instances_and_writes_nothing(tmp_path, reliability):
    refused = []
    listener = StorageSCP("LUMBARNODE", tmp_path / "spool", allowed_callers={"SCU"},
                          transfer_syntaxes=[str(t) for t in decodable_transfer_syntaxes()],
                          on_refused=lambda uid, reason: refused.append(reason), min_free_bytes=2**62)
    (tmp_path / "spool").mkdir()
    listener.start("127.0.0.1", 0)
    try:
        study = write_phantom_study(PhantomParams(seed=3005, slices=3), tmp_path / "study")
        ds = pydicom.dcmread(sorted(study.dicom_dir.glob("*.dcm"))[0])
        ae = AE(ae_title="SCU")
        ae.add_requested_context(MRImageStorage)
        assoc = ae.associate("127.0.0.1", listener.port, ae_title="LUMBARNODE")
        status = assoc.send_c_store(ds)
        assoc.release()
        assert status.Status == 0xA700 and "nearly full" in status.ErrorComment
        assert refused == ["spool_nearly_full"]
        assert not [p for p in (tmp_path / "spool").rglob("*") if p.is_file()]
        assert echo("LUMBARNODE", "127.0.0.1", listener.port, calling_ae="SCU")  # still answering
        reliability(case="spool below its free-space watermark", sent=1, stored=0, jobs=0, lost=0, duplicates=0,
                    note="refused 0xA700 before writing")
    finally:
        listener.stop()


def test_the_listener_keeps_receiving_while_the_database_is_locked_and_catches_up(tmp_path, pacs, reliability):
    """Another process holds the job database's write lock (as a long migration or a stuck
    client would): instances are still acknowledged and spooled, and the job appears once
    the database is writable again."""
    import sqlite3

    settings = node_settings(tmp_path, pacs[0])
    study = write_phantom_study(PhantomParams(lla_deg=41.0, seed=3006, slices=10), tmp_path / "study")
    files = sorted(study.dicom_dir.glob("*.dcm"))
    node = start_serve(settings, tmp_path / "node.log")
    store = JobStore(settings.database_url)
    blocker = sqlite3.connect(settings.database_url.removeprefix("sqlite:///"), timeout=1, isolation_level=None)
    try:
        blocker.execute("BEGIN EXCLUSIVE")
        assert send_files(files, settings.ae_title, "127.0.0.1", settings.port, calling_ae="SCU").ok
        spooled = {p.stem for p in settings.spool_dir.rglob("*.dcm")}
        assert {pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID for f in files} <= spooled
        time.sleep(settings.quiet_period_s + 2.0)  # the series is complete now, but its job cannot be written
        assert store.latest_job(study.truth["series_instance_uid"]) is None
        blocker.execute("ROLLBACK")
        job = final_job(store, study.truth["series_instance_uid"], timeout_s=180)
        assert job.status == "done" and job.instance_count == len(files)
        reliability(case="job database locked while a series arrives", sent=len(files), stored=len(files), jobs=1,
                    lost=0, duplicates=0, note="job made once the lock was released")
    finally:
        blocker.close()
        store.dispose()
        stop_group(node)
