"""Nothing lost: a worker killed in the middle of a job, the node killed while a series is
arriving, the broker restarted with jobs queued, the job database unreachable or locked, a
spool disk nearly full. Real processes (`lumbarnode serve`, `listen` and `worker`; DCMTK
storescp as the PACS; a Redis of the test's own; the machine's PostgreSQL behind a relay
the test cuts), killed with SIGKILL as the kernel or an operator would. The process faults
run on the embedded defaults and on PostgreSQL + Redis."""

from __future__ import annotations

import os
import signal
import subprocess
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
from pipeline.synthetic.phantom import PhantomParams
from tests.helpers.node import final_job, start, start_serve, stop_group
from tests.helpers.tools import (
    RedisServer,
    TcpProxy,
    free_port,
    postgres_schema,
    schema_url,
    storescp,
    wait_until,
)
from worker.phantom_study import write_phantom_study
from worker.settings import Settings


def start_workers(settings: Settings, log: Path) -> list[subprocess.Popen]:
    """The workers of a listener-only node, as a site with GPU workers elsewhere runs them."""
    return [start(settings, log, "worker", "--queues", "inference", "--concurrency", "1"),
            start(settings, log, "worker", "--queues", "export", "--concurrency", "2")]


def send(settings: Settings, study) -> list[str]:
    files = sorted(study.dicom_dir.glob("*.dcm"))
    assert send_files(files, settings.ae_title, "127.0.0.1", settings.port, calling_ae="SCU").ok
    return [pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID for f in files]


def at_pacs(folder: Path) -> list[str]:
    return [pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID for p in folder.iterdir() if p.is_file()]


def kill_group(process: subprocess.Popen) -> None:
    os.killpg(process.pid, signal.SIGKILL)
    process.wait(timeout=30)


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


@pytest.fixture(params=["embedded", "postgresql+redis"])
def backend(request, tmp_path):
    """Database and broker of one test: the embedded defaults, or a PostgreSQL schema and a
    Redis of its own."""
    if request.param == "embedded":
        yield {}
        return
    redis_server = RedisServer(tmp_path / "redis")
    try:
        with postgres_schema("lumbarnode_faults") as schema:
            yield {"database_url": schema_url(schema), "broker_url": redis_server.url}
    finally:
        redis_server.kill()


def node_settings(tmp_path: Path, pacs_port: int, backend: dict | None = None, **changes) -> Settings:
    return Settings(data_dir=tmp_path / "node", host="127.0.0.1", port=free_port(), quiet_period_s=1.0,
                    allowed_callers=f"SCU=PACS@127.0.0.1:{pacs_port}", **(backend or {}), **changes)


def case(name: str, backend: dict) -> str:
    return f"{name} ({'PostgreSQL+Redis' if backend else 'embedded'})"


def test_a_worker_killed_mid_job_comes_back_and_the_job_completes_once(tmp_path, pacs, backend, reliability):
    settings = node_settings(tmp_path, pacs[0], backend, job_timeout_s=4.0)
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
        reliability(case=case("inference worker SIGKILLed mid-job", backend), sent=job.instance_count, stored=job.instance_count,
                    jobs=1, lost=0, duplicates=len(files) - len(uids), note=f"done after {job.attempts} attempts")
    finally:
        store.dispose()
        stop_group(node)


def test_a_node_killed_while_a_series_arrives_loses_nothing_it_acknowledged(tmp_path, pacs, backend, reliability):
    settings = node_settings(tmp_path, pacs[0], backend)
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
        reliability(case=case("node SIGKILLed while a series arrives", backend), sent=len(files), stored=job.instance_count,
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


def test_jobs_queued_when_redis_restarts_are_not_lost(tmp_path, pacs, redis_server, reliability):
    """Three jobs wait in Redis (no worker runs) when Redis is killed and started again
    without persistence: their messages are gone. A fourth series completes while Redis is
    down. The node sees the new Redis (run_id) and sends the messages again; once workers
    start, each job runs exactly once and the PACS gets each result once."""
    with postgres_schema("lumbarnode_redis") as schema:
        settings = node_settings(tmp_path, pacs[0], {"database_url": schema_url(schema),
                                                     "broker_url": redis_server.url})
        studies = [write_phantom_study(PhantomParams(lla_deg=38.0 + 6 * i, seed=3100 + i, slices=9),
                                       tmp_path / f"study{i}") for i in range(4)]
        series = [s.truth["series_instance_uid"] for s in studies]
        log = tmp_path / "node.log"
        listener = start_serve(settings, log, "listen")  # no workers yet: the jobs wait in the queue
        store = JobStore(settings.database_url)
        workers: list[subprocess.Popen] = []
        try:
            sent = [uid for study in studies[:3] for uid in send(settings, study)]
            wait_until(lambda: all((j := store.latest_job(s)) and j.status == "queued" for s in series[:3]), 60,
                       "three queued jobs", listener)
            assert redis_server.client().llen("inference") == 3
            redis_server.kill()  # the three messages die with it
            sent += send(settings, studies[3])  # the listener does not need the broker to receive
            wait_until(lambda: (j := store.latest_job(series[3])) and any(
                e.kind == "queue_unreachable" for e in store.events(j.id)), 60, "the fourth job to wait", listener)
            assert store.latest_job(series[3]).status == "received"
            redis_server.start()
            wait_until(lambda: all(any("broker restarted" in e.message for e in store.events(store.latest_job(s).id))
                                   for s in series[:3]), 30, "the lost messages to be sent again", listener)
            workers = start_workers(settings, tmp_path / "workers.log")
            done = [final_job(store, s, timeout_s=240) for s in series]
            assert [j.status for j in done] == ["done"] * 4, [(j.status, j.error) for j in done]
            assert [j.attempts for j in done] == [1] * 4  # each ran exactly once
            assert all([e.status for e in store.exports(j.id)] == ["sent"] for j in done)
            stored = at_pacs(pacs[1])
            results = {uid for j in done for uid in (j.seg_sop_instance_uid, j.sr_sop_instance_uid,
                                                     j.key_sop_instance_uid)}
            assert len(stored) == 12 and set(stored) == results
            assert sum(j.instance_count for j in done) == len(sent)
            reliability(case="Redis killed with 3 jobs queued, 1 series arriving", sent=len(sent),
                        stored=sum(j.instance_count for j in done), jobs=len(done), lost=0,
                        duplicates=len(stored) - len(set(stored)), note="each job ran once (attempts 1)")
        finally:
            store.dispose()
            for process in [*workers, listener]:
                stop_group(process)


def test_the_job_database_unreachable_for_a_while_loses_nothing(tmp_path, pacs, redis_server, reliability):
    """The network to PostgreSQL is cut (connections reset, new ones refused) with one job
    queued and no worker yet. Workers start and take its message but cannot claim it; a
    second series arrives and is acknowledged and spooled, though no job can be written.
    When the network is back both jobs are made, run once and exported."""
    import sqlalchemy as sa

    with postgres_schema("lumbarnode_dbdown") as schema:
        direct = sa.engine.make_url(schema_url(schema))
        proxy = TcpProxy(direct.port or 5432, direct.host or "127.0.0.1")
        proxied = direct.set(host="127.0.0.1", port=proxy.port).render_as_string(hide_password=False)
        settings = node_settings(tmp_path, pacs[0], {"database_url": proxied, "broker_url": redis_server.url})
        first = write_phantom_study(PhantomParams(lla_deg=45.0, seed=3201, slices=9), tmp_path / "first")
        second = write_phantom_study(PhantomParams(lla_deg=52.0, seed=3202, slices=9), tmp_path / "second")
        series = [first.truth["series_instance_uid"], second.truth["series_instance_uid"]]
        listener = start_serve(settings, tmp_path / "node.log", "listen")
        store = JobStore(direct.render_as_string(hide_password=False))  # the test's own view, not through the relay
        workers: list[subprocess.Popen] = []
        try:
            sent = send(settings, first)
            wait_until(lambda: (j := store.latest_job(series[0])) and j.status == "queued", 60, "the first job",
                       listener)
            proxy.cut()
            workers = start_workers(settings, tmp_path / "workers.log")
            sent_second = send(settings, second)  # acknowledged: on disk, whatever the database does
            assert set(sent_second) <= {p.stem for p in settings.spool_dir.rglob("*.dcm")}
            wait_until(lambda: "job database is not reachable" in (tmp_path / "workers.log").read_text(), 120,
                       "a worker to find the database away", workers[0])
            wait_until(lambda: "could not make its job" in (tmp_path / "node.log").read_text(), 30,
                       "the listener to find the database away", listener)
            assert store.latest_job(series[1]) is None and store.latest_job(series[0]).status == "queued"
            proxy.restore()
            done = [final_job(store, s, timeout_s=240) for s in series]
            assert [j.status for j in done] == ["done", "done"], [(j.status, j.error) for j in done]
            assert [j.attempts for j in done] == [1, 1]
            assert [j.instance_count for j in done] == [len(sent), len(sent_second)]
            stored = at_pacs(pacs[1])
            assert len(stored) == 6 and len(set(stored)) == 6
            reliability(case="PostgreSQL unreachable: 1 job queued, 1 arriving", sent=len(sent) + len(sent_second),
                        stored=sum(j.instance_count for j in done), jobs=2, lost=0, duplicates=0,
                        note="both made and run once after the network came back")
        finally:
            store.dispose()
            for process in [*workers, listener]:
                stop_group(process)
            proxy.cut()


def test_a_slow_job_with_its_heartbeat_is_not_taken_for_a_lost_one(tmp_path):
    """Only a worker that stopped beating is presumed dead: a job running for longer than
    JOB_TIMEOUT_S is left alone while its heartbeat goes on, and queued again once it stops."""
    from datetime import UTC, datetime

    from worker.bookkeeper import Bookkeeper
    from worker.jobs import heartbeat

    settings = Settings(data_dir=tmp_path / "node", job_timeout_s=0.6)
    store = JobStore(settings.database_url, create=True)
    sent: list[int] = []
    bookkeeper = Bookkeeper(store, settings, sent.append, sent.append)
    now = datetime.now(UTC)
    series_id = store.series_received(study_instance_uid="1.2.3", series_instance_uid="1.2.3.4", instance_count=1,
                                      first_received_at=now, last_received_at=now)
    job = store.create_job(series_id, ["1.2.3.4.5"])
    store.set_status(job.id, "queued")
    assert store.claim_job(job.id).status == "running"
    try:
        with heartbeat(store, job.id, every_s=settings.job_timeout_s / 3):
            watch_until = time.monotonic() + 3 * settings.job_timeout_s  # a job three timeouts long
            while time.monotonic() < watch_until:
                assert bookkeeper.sweep() == 0
                time.sleep(0.05)
        assert sent == [] and store.get_job(job.id).status == "running"
        wait_until(lambda: bookkeeper.sweep() == 1, 10, "the silent job to be queued")
        assert sent == [job.id] and store.get_job(job.id).status == "queued"
    finally:
        store.dispose()
