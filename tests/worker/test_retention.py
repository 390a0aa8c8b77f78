"""The retention cleaner on a small spool that fills up: old delivered series go, the node
keeps receiving, nothing undelivered (or unfinished) is lost.

The spool is a real 8 MiB file system (tmpfs) where this machine lets the tests mount one.
Where it does not (no privilege), the listener's free-space figure is the one stand-in: it
is computed from the spool's real size against the same 8 MiB; the instances are still
received, written and deleted for real."""

from __future__ import annotations

import os
import shutil
import subprocess
import threading
import time
import zlib
from collections import namedtuple
from pathlib import Path

import numpy as np
import pydicom
import pytest

from dicom_io.mr_writer import MRSeriesInfo, write_mr_series
from dicom_io.scu import send_files
from tests.helpers.tools import free_port, wait_until
from worker import retention
from worker.node import Node
from worker.settings import Settings

SPOOL_MB = 8
OUT_OF_RESOURCES = 0xA700


@pytest.fixture
def small_spool(tmp_path, monkeypatch):
    mount = tmp_path / "spool"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={SPOOL_MB}m", "tmpfs", str(mount)],
                          capture_output=True)
    if done.returncode != 0:  # the stand-in (see the module docstring)
        Usage = namedtuple("Usage", "total used free")

        def disk_usage(path):
            used = sum(f.stat().st_size for f in mount.rglob("*") if f.is_file())
            return Usage(SPOOL_MB << 20, used, (SPOOL_MB << 20) - used)

        monkeypatch.setattr("dicom_io.scp.shutil.disk_usage", disk_usage)
    yield mount
    if done.returncode == 0:
        subprocess.run(["umount", "-l", str(mount)], check=False)


@pytest.fixture
def node(tmp_path, small_spool):
    settings = Settings(data_dir=tmp_path / "node", spool_dir=small_spool, host="127.0.0.1", port=free_port(),
                        quiet_period_s=0.2, allowed_callers="PACS=PACS@127.0.0.1:104", min_free_spool_mb=1,
                        retention_done_days=0.0, retention_failed_days=0.0)
    queued: list[int] = []
    node = Node(settings, enqueue=queued.append)
    node.start()
    loop = threading.Thread(target=node.run, daemon=True)
    loop.start()
    yield settings, node.store
    node.stop()
    loop.join(timeout=10)


def series(folder: Path, key: str) -> list[Path]:
    """About 1 MiB: 8 slices of 256 x 256 16-bit noise (incompressible)."""
    volume = np.random.default_rng(zlib.crc32(key.encode())).integers(0, 4000, (8, 256, 256), dtype=np.uint16)
    write_mr_series(volume, (1.0, 1.0), [4.0 * i for i in range(8)], MRSeriesInfo(key=key), folder)
    return sorted(folder.glob("*.dcm"))


def send(settings: Settings, files: list[Path]):
    return send_files(files, settings.ae_title, "127.0.0.1", settings.port, calling_ae="PACS")


def job_of(store, files: list[Path]):
    uid = pydicom.dcmread(files[0], stop_before_pixels=True).SeriesInstanceUID
    return wait_until(lambda: (j := store.latest_job(uid)) and j.status == "queued" and j, 30, f"the job of {uid}")


def walk(store, job, *statuses, results: Path | None = None):
    for status in statuses:
        store.set_status(job.id, status)
    if results is not None:
        results.mkdir(parents=True)
        (results / "sr.dcm").write_bytes(b"\0" * 4096)
        store.update_job(job.id, results_dir=str(results))
    return store.get_job(job.id)


def spooled(settings: Settings, job) -> set[str]:
    folder = settings.spool_dir / job.study_instance_uid / job.series_instance_uid
    return {p.stem for p in folder.glob("*.dcm")} if folder.is_dir() else set()


def test_a_full_spool_is_freed_of_delivered_series_and_the_node_receives_again(node, tmp_path):
    settings, store = node
    jobs, sent = [], 0
    while True:  # fill the spool until the listener refuses
        files = series(tmp_path / "studies" / f"s{sent}", f"retention-{sent}")
        result = send(settings, files)
        sent += 1
        if not result.ok:
            refused = files
            break
        jobs.append(job_of(store, files))
        assert sent < 20, "the spool never filled up"
    assert OUT_OF_RESOURCES in {f.status for f in result.files}
    assert len(jobs) >= 4
    delivered = [walk(store, j, "running", "exporting", "done", results=tmp_path / f"results/{j.id}")
                 for j in jobs[:-2]]
    undelivered = walk(store, jobs[-2], "running", "exporting", "export_failed", results=tmp_path / "results/u")
    waiting = jobs[-1]  # still queued: not finished

    assert not send(settings, refused).ok  # full, and stays full without the cleaner
    # delivered a while ago, as retention sees them: the cleaner keeps a file touched within
    # TOUCH_MARGIN_S of its rename (a duplicate acknowledged then; tested on its own below),
    # which a fast run's last series was
    long_ago = time.time() - 10 * retention.TOUCH_MARGIN_S
    for path in settings.spool_dir.rglob("*.dcm"):
        os.utime(path, (long_ago, long_ago))
    cleaned = retention.clean(store, settings)
    assert (cleaned.jobs, cleaned.series_folders, cleaned.results_folders) == (len(delivered),) * 3
    assert cleaned.bytes_freed > len(delivered) * (1 << 20)
    for job in delivered:
        after = store.get_job(job.id)
        assert spooled(settings, job) == set() and not Path(job.results_dir).exists()
        assert after.cleaned_at is not None and after.status == "done"
        assert any(e.kind == "cleaned" for e in store.events(job.id))
    for job in (undelivered, waiting):
        assert spooled(settings, job) == set(job.instance_uids)  # every instance kept
        assert store.get_job(job.id).cleaned_at is None
    assert Path(undelivered.results_dir).is_dir()

    assert send(settings, refused).ok  # the node receives again
    uid = pydicom.dcmread(refused[0], stop_before_pixels=True).SeriesInstanceUID
    wait_until(lambda: (j := store.latest_job(uid)) and j.instance_count == 8, 30, "the whole series' job")
    assert retention.clean(store, settings).jobs == 0  # nothing cleaned twice
    usage = retention.disk_usage(settings)
    assert 0 < usage.spool_bytes < usage.total_bytes


def test_an_instance_acknowledged_again_while_its_series_is_deleted_is_put_back(tmp_path):
    """The listener touches an instance it already has before it answers success (a PACS
    re-sending the series): one touched at the moment of the cleaner's rename is kept."""
    folder = tmp_path / "spool" / "1.2.3" / "1.2.3.4"
    files = series(folder, "resent")
    old = time.time() - 3600
    for path in files:
        os.utime(path, (old, old))
    os.utime(files[3])  # acknowledged again just now
    freed = retention._remove_series(folder, frozenset(p.stem for p in files), tmp_path / "spool")
    assert freed is not None and freed > 0
    assert [p.name for p in folder.glob("*.dcm")] == [files[3].name]
    assert not any((tmp_path / "spool" / retention.TRASH).iterdir())


def test_a_series_with_instances_no_job_covers_yet_is_kept(tmp_path):
    folder = tmp_path / "spool" / "1.2.3" / "1.2.3.5"
    files = series(folder, "growing")
    covered = frozenset(p.stem for p in files[:-1])  # the last instance arrived after the job was made
    assert retention._remove_series(folder, covered, tmp_path / "spool") is None
    assert sorted(folder.glob("*.dcm")) == files
    shutil.rmtree(folder)
