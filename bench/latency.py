"""End-to-end latency of one 15-slice sagittal series: from the last instance's C-STORE
response to the SEG and SR being stored at the receiving PACS (DCMTK storescp), split into
the node's stages (from the job row), on the embedded defaults and on Redis + PostgreSQL.
Also throughput: series per minute with 1 and 2 inference worker processes, and the
workers' peak memory."""

from __future__ import annotations

import statistics
import subprocess
import tempfile
import time
import uuid
from pathlib import Path

from bench.common import (DCMTK_ENV, command_line, descendants, free_port, peak_rss_mib, start_node, stop, summary,
                          tool, wait_for, wait_for_port)
from db import JobStore
from dicom_io.scu import send_files
from tests.helpers.services import postgres_url, redis_url
from pipeline.synthetic.phantom import PhantomParams
from worker.phantom_study import write_phantom_study
from worker.settings import Settings

POSTGRES_URL = postgres_url()  # what scripts/start-services.sh set up
REDIS_URL = redis_url(8)


class Site:
    """storescp as the PACS and `lumbarnode serve` sending to it."""

    def __init__(self, work: Path, backend: str, inference_workers: int = 1):
        self.work = work
        self.pacs_port, self.pacs_dir = free_port(), work / "pacs"
        self.pacs_dir.mkdir()
        self.pacs = subprocess.Popen([tool("storescp"), "-aet", "PACS", "-od", str(self.pacs_dir), "--fork",
                                      str(self.pacs_port)], env=DCMTK_ENV, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL)
        self.schema = None
        extra = {}
        if backend == "postgresql+redis":
            import redis
            import sqlalchemy as sa

            self.schema = f"lumbarnode_bench_{uuid.uuid4().hex[:8]}"
            engine = sa.create_engine(POSTGRES_URL)
            with engine.begin() as conn:
                conn.execute(sa.text(f'create schema "{self.schema}"'))
            engine.dispose()
            redis.Redis.from_url(REDIS_URL).flushdb()
            extra = {"database_url": f"{POSTGRES_URL}?options=-csearch_path%3D{self.schema}", "broker_url": REDIS_URL}
        self.settings = Settings(data_dir=work / "node", host="127.0.0.1", port=free_port(),
                                 allowed_callers=f"BENCH=PACS@127.0.0.1:{self.pacs_port}",
                                 inference_workers=inference_workers, **extra)
        self.node = start_node("serve", self.settings.environment(), work / "node.log")
        wait_for_port(self.settings.port)
        wait_for_port(self.pacs_port)
        self.store = JobStore(self.settings.database_url)

    def received(self) -> int:
        return sum(1 for p in self.pacs_dir.iterdir() if p.name.startswith(("SG.", "SR")))  # storescp: SEG -> SG.*

    def workers_ready(self) -> None:
        """Wait until the inference worker has loaded the networks (its log says so)."""
        wait_for(lambda: "ready" in (self.work / "node.log").read_text(), 120, "the workers", 0.1)

    def worker_peak_rss_mib(self) -> float:
        pids = [p for p in descendants(self.node.pid) if "worker" in command_line(p) and "inference" in command_line(p)]
        return max((peak_rss_mib(p) for p in pids), default=0.0)

    def close(self) -> None:
        self.store.dispose()
        stop(self.node)
        stop(self.pacs)
        if self.schema:
            import sqlalchemy as sa

            engine = sa.create_engine(POSTGRES_URL)
            with engine.begin() as conn:
                conn.execute(sa.text(f'drop schema "{self.schema}" cascade'))
            engine.dispose()


def series(work: Path, seed: int) -> tuple[list[Path], str]:
    study = write_phantom_study(PhantomParams(seed=seed, slices=15, rows=320, cols=320), work / f"study-{seed}")
    return sorted(study.dicom_dir.glob("*.dcm")), study.truth["series_instance_uid"]


def latency(backend: str, repeats: int) -> dict:
    with tempfile.TemporaryDirectory(prefix="lumbarnode-bench-") as folder:
        work = Path(folder)
        site = Site(work, backend)
        try:
            site.workers_ready()
            totals, stages = [], {}
            for k in range(repeats + 1):  # the first series warms the worker up and is not counted
                files, series_uid = series(work, 500 + k)
                before = site.received()
                send_files(files, site.settings.ae_title, "127.0.0.1", site.settings.port, calling_ae="BENCH")
                sent = time.perf_counter()
                wait_for(lambda: site.received() >= before + 2, 300, "SEG and SR at the PACS", 0.01)
                elapsed = time.perf_counter() - sent
                job = wait_for(lambda: (lambda j: j if j and j.status == "done" else None)(site.store.latest_job(series_uid)),
                               60, "the job row")
                if k == 0:
                    continue
                totals.append(elapsed)
                for stage, seconds in job.timings.items():
                    stages.setdefault(stage, []).append(seconds)
        finally:
            site.close()
    quiet = statistics.median(stages["quiet_period_s"])
    return {"backend": backend, "series": "15 slices 320x320 (synthetic phantom)", "seconds": summary(totals),
            "after_quiet_period_s": statistics.median(totals) - quiet,
            "stages_median_s": {k.removesuffix("_s"): statistics.median(v) for k, v in stages.items()}}


def throughput(inference_workers: int, count: int = 6) -> dict:
    with tempfile.TemporaryDirectory(prefix="lumbarnode-bench-") as folder:
        work = Path(folder)
        site = Site(work, "embedded", inference_workers)
        try:
            site.workers_ready()
            studies = [series(work, 900 + k) for k in range(count)]
            started = time.perf_counter()
            for files, _ in studies:
                send_files(files, site.settings.ae_title, "127.0.0.1", site.settings.port, calling_ae="BENCH")
            for _, series_uid in studies:
                wait_for(lambda: (lambda j: j if j and j.status == "done" else None)(site.store.latest_job(series_uid)),
                         600, "every job", 0.05)
            minutes = (time.perf_counter() - started) / 60
            peak = site.worker_peak_rss_mib()
        finally:
            site.close()
    return {"inference_workers": inference_workers, "series": count, "series_per_minute": count / minutes,
            "worker_peak_rss_mib": peak}
