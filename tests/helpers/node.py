"""Running the node as a site does: `lumbarnode serve` in its own process group, stopped
whole, and waiting for the job of a series to end."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

from db import JobStore
from db.lifecycle import FINISHED
from dicom_io.scu import echo
from tests.helpers.tools import free_port, wait_until
from worker.settings import Settings

LUMBARNODE = Path(sys.executable).with_name("lumbarnode")


def start(settings: Settings, log: Path, *command: str) -> subprocess.Popen:
    """`lumbarnode COMMAND...` in its own process group, so that the test can kill it whole."""
    return subprocess.Popen([sys.executable, "-m", "worker.cli", *command], env={**os.environ, **settings.environment()},
                            stdout=open(log, "a"), stderr=subprocess.STDOUT, start_new_session=True)


def final_job(store: JobStore, series_uid: str, version: int = 1, timeout_s: float = 240):
    def done():
        job = store.latest_job(series_uid)
        return job if job is not None and job.version >= version and job.status in FINISHED else None
    return wait_until(done, timeout_s, f"job version {version} of series {series_uid} to finish")


def start_serve(settings: Settings, log: Path, command: str = "serve") -> subprocess.Popen:
    """`lumbarnode serve` (or `listen`), answering C-ECHO."""
    process = start(settings, log, command)
    wait_until(lambda: echo(settings.ae_title, "127.0.0.1", settings.port, calling_ae="SCU"), 60, "the node", process)
    return process


def stop_group(process: subprocess.Popen) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        # longer than the node's own bound on its workers' warm shutdown (stop_workers, 120 s),
        # so that a worker still finishing a job under load is the node's to end, not a timeout here
        process.wait(timeout=180)
    try:
        os.killpg(process.pid, signal.SIGKILL)  # anything left of the group
    except ProcessLookupError:
        pass


class NodesInThreads:
    """Nodes (`worker.node.Node`) run in this process, each loop in a thread, their Celery
    queue a list of job ids (a stand-in: the queue itself is tested in test_node.py)."""

    def __init__(self, data_dir: Path, **defaults):
        self.data_dir = data_dir
        self.defaults = {"host": "127.0.0.1", "allowed_callers": "PACS,STORESCU", "min_free_spool_mb": 0, **defaults}
        self.running: list = []

    def start(self, **changes):
        from worker.node import Node

        settings = Settings(data_dir=self.data_dir, port=free_port(), **{**self.defaults, **changes})
        queued: list[int] = []
        node = Node(settings, enqueue=queued.append)
        node.start()
        loop = threading.Thread(target=node.run, daemon=True)
        loop.start()
        self.running.append((node, loop))
        return settings, node, queued

    def stop_all(self) -> None:
        for node, loop in self.running:
            node.stop()
            loop.join(timeout=10)
