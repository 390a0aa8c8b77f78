"""Nothing half sent is measured: a transfer cut short, or a series with gaps, waits for the
rest and is then skipped with the reason `incomplete_series` (the default), or measured with
that flag, which the SR carries (INCOMPLETE_SERIES=measure).

The real node (`worker.node.Node`: storage SCP, assembly, job database) runs in this
process and instances arrive over real associations (DCMTK's storescu, pynetdicom); the
Celery queue is a list of job ids (a stand-in: the queue is tested in test_node.py), and the
measured case runs the worker's own job function on the queued job with the shipped networks.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pydicom
import pytest

from dicom_io.scu import send_files
from dicom_io.triage import missing_instances
from tests.helpers.dicom_files import write_series
from tests.helpers.node import NodesInThreads
from tests.helpers.tools import DCMTK_ENV, require_tool, wait_until
from worker import jobs
from worker.settings import Settings

WAIT_S = 1.5  # INCOMPLETE_WAIT_S here; the default is 120 s


@pytest.fixture
def node_factory(tmp_path):
    nodes = NodesInThreads(tmp_path / "node", quiet_period_s=0.3, incomplete_wait_s=WAIT_S)
    yield nodes.start
    nodes.stop_all()


def series_uid(path: Path) -> str:
    return str(pydicom.dcmread(path, stop_before_pixels=True).SeriesInstanceUID)


def final_job(store, uid: str, timeout_s: float = 30):
    return wait_until(lambda: (j := store.latest_job(uid)) and j.status not in ("received",) and j, timeout_s,
                      f"a job for series {uid}")


def test_a_transfer_aborted_by_storescu_is_skipped_after_waiting_then_sent_whole_is_measured(node_factory, tmp_path):
    settings, node, queued = node_factory()
    files = write_series(tmp_path / "src", "cut", slices=15)
    truncated = tmp_path / "broken.dcm"
    truncated.write_bytes(files[7].read_bytes()[:600])  # storescu stops at it and aborts
    storescu = [require_tool("storescu"), "-aet", "STORESCU", "-aec", settings.ae_title, "127.0.0.1",
                str(settings.port)]
    cut = subprocess.run([*storescu, *map(str, files[:7]), str(truncated), *map(str, files[8:])],
                         capture_output=True, text=True, env=DCMTK_ENV, timeout=60)
    assert cut.returncode != 0  # storescu itself says the transfer failed
    job = final_job(node.store, series_uid(files[0]))
    assert job.status == "skipped" and job.reason == "incomplete_series", job
    assert job.instance_count == 7 and not queued
    assert "the transfer was cut short" in job.error and "send the whole series again" in job.error
    waited = float(job.error.split("after waiting ")[1].split(" s")[0])
    assert waited >= WAIT_S - 0.5  # it waited for the rest, not only the quiet period (0.3 s)

    # The PACS sends the series again, whole: a new version, complete, queued without a flag.
    again = subprocess.run([*storescu, *map(str, files)], capture_output=True, text=True, env=DCMTK_ENV, timeout=60)
    assert again.returncode == 0, again.stderr
    job = wait_until(lambda: (j := node.store.latest_job(series_uid(files[0]))) and j.version == 2
                     and j.status != "received" and j, 30, "the second version")
    assert job.status == "queued" and job.instance_count == 15 and not job.flags and queued == [job.id]


def test_gaps_in_instance_numbers_skip_the_series_with_the_missing_numbers(node_factory, tmp_path):
    settings, node, queued = node_factory()
    files = write_series(tmp_path / "src", "gap", slices=8)
    assert send_files(files[:3] + files[4:], settings.ae_title, "127.0.0.1", settings.port, calling_ae="PACS").ok
    job = final_job(node.store, series_uid(files[0]))
    assert job.status == "skipped" and job.reason == "incomplete_series" and not queued
    assert "instance numbers 4 missing (between 1 and 8)" in job.error


def test_measure_setting_runs_an_incomplete_series_with_the_flag_in_the_sr(node_factory, tmp_path):
    from tests.helpers.node import LUMBARNODE

    settings, node, queued = node_factory(incomplete_series="measure")
    study = tmp_path / "phantom"
    subprocess.run([str(LUMBARNODE), "phantom", "--out", str(study), "--slices", "9", "--seed", "5"], check=True,
                   capture_output=True, timeout=120)
    files = sorted((study / "dicom").glob("*.dcm"))
    dropped = files[:2] + files[3:]  # one lateral slice missing: its position leaves a gap
    assert send_files(dropped, settings.ae_title, "127.0.0.1", settings.port, calling_ae="PACS").ok
    job = final_job(node.store, series_uid(files[0]))
    assert job.status == "queued" and queued == [job.id] and list(job.flags) == ["incomplete_series"]
    assert job.timings["quiet_period_s"] >= WAIT_S - 0.1  # waited for the rest first

    ran = jobs.run_job(settings, node.store, job.id)
    assert ran is not None and "incomplete_series" in ran.flags
    report = subprocess.run([require_tool("dsrdump"), str(Path(ran.results_dir) / "sr.dcm")], capture_output=True,
                            text=True, timeout=60)
    assert "Series received incomplete; measured on the slices received" in report.stdout


def test_complete_series_show_no_gaps(tmp_path):
    files = write_series(tmp_path / "whole", "whole", slices=6)
    headers = [pydicom.dcmread(f, stop_before_pixels=True) for f in files]
    assert missing_instances(headers) is None
    assert missing_instances(headers[::2]) is None  # numbered 1, 3, 5 and 8 mm apart: a regular series
    gap = missing_instances(headers[:2] + headers[3:])
    assert gap == "instance numbers 3 missing (between 1 and 6)"
    for index, header in enumerate(headers):
        header.InstanceNumber = 1  # numbers unusable: the positions still show the gap
    assert missing_instances(headers[:2] + headers[3:]) == "a gap of 8.0 mm between slices 4.0 mm apart"


def test_a_series_whose_association_was_open_when_the_node_died_is_cut_short_after_restart(tmp_path):
    """The spool keeps a marker while an association delivers to a series: a node killed
    mid-transfer (no end of association ever reported) finds it again on restart."""
    from db import JobStore
    from dicom_io.scp import StoredInstance, spool_path
    from worker.assembly import SeriesAssembler

    settings = Settings(data_dir=tmp_path / "node", quiet_period_s=0.0, incomplete_wait_s=0.0)
    store = JobStore(settings.database_url, create=True)
    files = write_series(tmp_path / "src", "killed", slices=5)
    before = SeriesAssembler(store, settings, queue=store.get_job)
    for path in files[:3]:  # three instances stored; then the node is SIGKILLed, the association never ends
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        target = spool_path(settings.spool_dir, ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(path.read_bytes())
        before.instance_stored(StoredInstance(ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID,
                                              ds.SOPClassUID, target, "PACS", 1, False, 0.0))
    after = SeriesAssembler(store, settings, queue=store.get_job)  # the restarted node
    assert after.recover() == 1
    (job,) = after.poll()
    assert job.status == "skipped" and job.reason == "incomplete_series" and "cut short" in job.error
    store.dispose()


def test_a_temporary_file_left_by_a_crash_mid_write_is_removed_at_restart(tmp_path):
    """A listener killed between creating its temporary file and the rename leaves a `.part`
    (never acknowledged: success comes after the rename). The restarted node removes the old
    ones and never one young enough to be a write in progress; neither counts as an instance."""
    import os
    import time

    from db import JobStore
    from dicom_io.scp import spool_path, write_atomically
    from worker.assembly import STALE_PART_S, SeriesAssembler

    settings = Settings(data_dir=tmp_path / "node", quiet_period_s=0.0, incomplete_wait_s=0.0)
    store = JobStore(settings.database_url, create=True)
    (path,) = write_series(tmp_path / "src", "crashed", slices=1)
    ds = pydicom.dcmread(path, stop_before_pixels=True)
    target = spool_path(settings.spool_dir, ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID)
    write_atomically(target, path.read_bytes())
    old = target.parent / f".{target.name}.x1.part"
    young = target.parent / f".{target.name}.x2.part"
    for part in (old, young):
        part.write_bytes(b"half an instance")
    os.utime(old, (time.time() - STALE_PART_S - 60,) * 2)
    assert SeriesAssembler(store, settings, queue=store.get_job).recover() == 1  # the one whole instance
    assert not old.exists() and young.exists() and target.exists()
    store.dispose()
