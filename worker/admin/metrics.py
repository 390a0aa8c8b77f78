"""Prometheus metrics of the admin application, read from the job database at scrape time.

Metrics (all computed from the database when scraped, so any number of admin processes
report the same values):
- `lumbarnode_jobs{status}`: jobs in each status (every status, 0 included);
- `lumbarnode_queue_depth`: jobs in status `queued`: the database's view of the queue
  (a job whose message is still in the broker), not a count read from the broker;
- `lumbarnode_stage_seconds{stage,quantile}`: p50 and p95 of each stage's duration over the
  last `STAGE_WINDOW` (200) `done` jobs, newest by creation; `lumbarnode_stage_samples{stage}`
  is how many of those jobs recorded the stage. Gauges over a window, not a cumulative
  summary: do not rate() them;
- `lumbarnode_export_attempts_total{status}` and `lumbarnode_export_failures_total`:
  export attempts recorded (sent / failed), all time;
- `lumbarnode_disk_bytes{area}`: what the spool and the results folders hold (`spool`,
  `results`) and the spool's file system (`free`, `total`); zeros where this process does not
  see the spool. The retention cleaner (worker/retention.py) keeps them from growing.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from db import STATUSES, JobStore
from worker.retention import disk_usage
from worker.settings import Settings

STAGE_WINDOW = 200  # done jobs the stage quantiles are computed over
QUANTILES = (0.5, 0.95)
# Stages in the order a job goes through them (JobView.timings keys); others follow sorted.
STAGES = ("quiet_period_s", "queue_wait_s", "load_s", "model_load_s", "inference_s", "measurement_s",
          "build_s", "export_s")


def quantile(values: Sequence[float], q: float) -> float:
    """Linear interpolation between the closest ranks (numpy's default method)."""
    ordered = sorted(values)
    position = (len(ordered) - 1) * q
    low = math.floor(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)



def stage_name(key: str) -> str:
    """'inference_s' -> 'inference'."""
    return key.removesuffix("_s")



class JobMetrics(Collector):
    """Reads the job database at every scrape (see the module docstring for the names)."""

    def __init__(self, store: JobStore, settings: Settings, window: int = STAGE_WINDOW):
        self.store = store
        self.settings = settings
        self.window = window

    def describe(self) -> list[Metric]:
        return []  # registering must not query the database

    def collect(self) -> Iterator[Metric]:
        counts = self.store.count_by_status()
        jobs = GaugeMetricFamily("lumbarnode_jobs", "Jobs in the database by status", labels=["status"])
        for status in STATUSES:
            jobs.add_metric([status], counts.get(status, 0))
        yield jobs
        yield GaugeMetricFamily("lumbarnode_queue_depth",
                                "Jobs in status queued (the database's view of the queue)", value=counts["queued"])

        per_stage: dict[str, list[float]] = {}
        for job in self.store.list_jobs(status="done", limit=self.window):
            for key, seconds in job.timings.items():
                per_stage.setdefault(stage_name(key), []).append(seconds)
        stages = GaugeMetricFamily(
            "lumbarnode_stage_seconds",
            f"Stage duration quantiles over the last {self.window} done jobs", labels=["stage", "quantile"])
        samples = GaugeMetricFamily(
            "lumbarnode_stage_samples",
            f"Done jobs (of the last {self.window}) that recorded the stage", labels=["stage"])
        for stage, values in sorted(per_stage.items()):
            for q in QUANTILES:
                stages.add_metric([stage, str(q)], quantile(values, q))
            samples.add_metric([stage], len(values))
        yield stages
        yield samples

        attempts = self.store.count_exports_by_status()
        by_status = CounterMetricFamily("lumbarnode_export_attempts", "Export attempts recorded, by outcome",
                                        labels=["status"])
        for status, count in sorted(attempts.items()):
            by_status.add_metric([status], count)
        yield by_status
        yield CounterMetricFamily("lumbarnode_export_failures", "Export attempts that failed",
                                  value=attempts.get("failed", 0))

        usage = disk_usage(self.settings)
        disk = GaugeMetricFamily("lumbarnode_disk_bytes", "The spool and the results folders, and the spool's file "
                                 "system (free, total)", labels=["area"])
        for area in ("spool", "results", "free", "total"):
            disk.add_metric([area], getattr(usage, f"{area}_bytes"))
        yield disk
