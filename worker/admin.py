"""`lumbarnode admin`: a read-only web view of the job database.

- `/`                       the job list (HTML): filters by status, age and UID/accession number
- `/jobs/{id}`              one job: stages and timings, result, flags, exports, events, overlay
- `/jobs/{id}/overlay.png`  the picture of the measurement from the job's results folder
- `/api/jobs`, `/api/jobs/{id}`, `/api/status`   the same as JSON
- `/metrics`                Prometheus text format, read from the database at scrape time
- `/healthz`                "ok"

Only GET routes; nothing here writes to the database or the results folders. There is no
authentication, so the server binds to loopback (`ADMIN_HOST=127.0.0.1`) unless configured
otherwise. The database holds no patient names and nothing here reads DICOM files.

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

import logging
import math
import re
from collections.abc import AsyncIterator, Iterator, Sequence
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from fastapi import FastAPI, HTTPException, Query, Request
from fastapi.responses import FileResponse, HTMLResponse, PlainTextResponse, Response
from jinja2 import Environment, FileSystemLoader, StrictUndefined
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from db import STATUSES, JobStore, JobView
from dicom_io.codes import flag_meaning
from worker.retention import disk_usage
from worker.settings import Settings, SettingsError

log = logging.getLogger(__name__)

TEMPLATES = Path(__file__).resolve().parent / "templates"
OVERLAY = "overlay.png"
STAGE_WINDOW = 200  # done jobs the stage quantiles are computed over
QUANTILES = (0.5, 0.95)
LIST_LIMIT = 100  # rows of the HTML list
# Stages in the order a job goes through them (JobView.timings keys); others follow sorted.
STAGES = ("quiet_period_s", "queue_wait_s", "load_s", "model_load_s", "inference_s", "measurement_s",
          "build_s", "export_s")
SINCE_CHOICES = (("all", "any time"), ("1h", "last hour"), ("24h", "last 24 h"), ("7d", "last 7 days"),
                 ("30d", "last 30 days"))
_DURATION = re.compile(r"(\d{1,6})([smhd])")
_UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": 86400}
_SECURITY_HEADERS = {
    # Server-rendered pages with inline CSS, images from here only, no scripts at all.
    "Content-Security-Policy": "default-src 'none'; img-src 'self'; style-src 'unsafe-inline'; "
                               "form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}


# -- helpers shared by the pages, the API and the metrics ------------------------------


def parse_since(text: str | None, now: datetime | None = None) -> datetime | None:
    """'' or 'all' -> None; '30m', '24h', '7d' -> that long before now; else an ISO date or
    date-time (UTC unless it says otherwise). ValueError for anything else."""
    text = (text or "").strip()
    if text in ("", "all"):
        return None
    match = _DURATION.fullmatch(text)
    if match:
        return (now or datetime.now(UTC)) - timedelta(seconds=int(match[1]) * _UNIT_S[match[2]])
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(f"since={text!r}: expected all, a duration (30m, 24h, 7d) or an ISO date") from None
    return when if when.tzinfo else when.replace(tzinfo=UTC)


def _status(text: str | None) -> str | None:
    text = (text or "").strip()
    if not text:
        return None
    if text not in STATUSES:
        raise ValueError(f"unknown status {text!r}; one of {', '.join(STATUSES)}")
    return text


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


def ordered_timings(timings: dict[str, float]) -> list[tuple[str, float]]:
    known = [(k, timings[k]) for k in STAGES if k in timings]
    return known + sorted((k, v) for k, v in timings.items() if k not in STAGES)


def overlay_path(job: JobView) -> Path | None:
    """The job's overlay.png: only that name, only in the job's own results folder, and only
    a regular file (a symbolic link there could point anywhere). None when there is none."""
    if not job.results_dir:
        return None
    path = Path(job.results_dir) / OVERLAY
    if path.is_symlink() or not path.is_file():
        return None
    return path


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


# -- rendering ------------------------------------------------------------------------


def _utc(value: datetime | None) -> str:
    return "" if value is None else value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S")


def _short(value: str | None, width: int = 60) -> str:
    value = value or ""
    return value if len(value) <= width else value[: width - 1] + "\u2026"


def _environment() -> Environment:
    env = Environment(loader=FileSystemLoader(TEMPLATES), autoescape=True, undefined=StrictUndefined,
                      trim_blocks=True, lstrip_blocks=True)
    env.filters.update(utc=_utc, short=_short, meaning=flag_meaning, stage=lambda k: stage_name(k).replace("_", " "))
    env.globals.update(STATUSES=STATUSES, SINCE_CHOICES=SINCE_CHOICES)
    return env


# -- the application ------------------------------------------------------------------


def create_app(settings: Settings) -> FastAPI:
    """The admin application over the job database at `settings.database_url`."""
    store = JobStore(settings.database_url)
    registry = CollectorRegistry(auto_describe=False)
    registry.register(JobMetrics(store, settings))
    env = _environment()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        yield
        store.dispose()

    # No interactive docs: they load scripts from a CDN (and the CSP forbids scripts).
    app = FastAPI(title="lumbarnode admin", docs_url=None, redoc_url=None, lifespan=lifespan)
    app.state.store = store
    app.state.settings = settings

    @app.middleware("http")
    async def security_headers(request: Request, call_next: Any) -> Response:
        response = await call_next(request)
        for name, value in _SECURITY_HEADERS.items():
            response.headers.setdefault(name, value)
        return response

    def page(name: str, status_code: int = 200, **context: Any) -> HTMLResponse:
        return HTMLResponse(env.get_template(name).render(**context), status_code=status_code)

    def error_page(status_code: int, message: str) -> HTMLResponse:
        return page("error.html", status_code, code=status_code, message=message)

    # -- HTML

    @app.get("/", response_class=HTMLResponse)
    def job_list(status: str | None = None, q: str | None = None, since: str | None = None) -> HTMLResponse:
        try:
            wanted, after = _status(status), parse_since(since)
        except ValueError as exc:
            return error_page(400, str(exc))
        jobs = store.list_jobs(status=wanted, since=after, search=q, limit=LIST_LIMIT)
        counts = store.count_by_status()
        return page("jobs.html", jobs=jobs, counts=counts, total=sum(counts.values()), limit=LIST_LIMIT,
                    disk=disk_usage(settings), retention=(settings.retention_done_days, settings.retention_failed_days),
                    status=wanted or "", q=(q or "").strip(), since=(since or "all").strip() or "all")

    @app.get("/jobs/{job_id:int}", response_class=HTMLResponse)
    def job_page(job_id: int) -> HTMLResponse:
        job = store.get_job(job_id)
        if job is None:
            return error_page(404, f"No job {job_id}.")
        return page("job.html", job=job, timings=ordered_timings(job.timings), exports=store.exports(job_id),
                    events=store.events(job_id), has_overlay=overlay_path(job) is not None)

    @app.get("/jobs/{job_id:int}/overlay.png")
    def overlay(job_id: int) -> FileResponse:
        job = store.get_job(job_id)
        path = None if job is None else overlay_path(job)
        if path is None:
            raise HTTPException(404, f"no overlay for job {job_id}")
        return FileResponse(path, media_type="image/png")

    # -- JSON

    @app.get("/api/jobs")
    def api_jobs(status: str | None = None, q: str | None = None, since: str | None = None,
                 limit: int = Query(100, ge=1, le=1000)) -> dict[str, Any]:
        try:
            wanted, after = _status(status), parse_since(since)
        except ValueError as exc:
            raise HTTPException(400, str(exc)) from None
        return {"jobs": [j.as_dict() for j in store.list_jobs(status=wanted, since=after, search=q, limit=limit)]}

    @app.get("/api/jobs/{job_id:int}")
    def api_job(job_id: int) -> dict[str, Any]:
        job = store.get_job(job_id)
        if job is None:
            raise HTTPException(404, f"no job {job_id}")
        return {**job.as_dict(), "exports": [e.as_dict() for e in store.exports(job_id)],
                "events": [e.as_dict() for e in store.events(job_id)]}

    @app.get("/api/status")
    def api_status() -> dict[str, int]:
        return store.count_by_status()

    # -- operations

    @app.get("/metrics")
    def metrics() -> Response:
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    @app.get("/healthz", response_class=PlainTextResponse)
    def healthz() -> PlainTextResponse:
        """ok only when the job database answers with the node's tables (every page needs it)."""
        try:
            store.count_by_status()
        except Exception as exc:
            return PlainTextResponse(f"job database unavailable ({type(exc).__name__})", status_code=503)
        return PlainTextResponse("ok")

    return app


def run_admin(settings: Settings, host: str | None = None, port: int | None = None) -> int:
    """Serve the admin application until interrupted (uvicorn). Binds to
    `settings.admin_host` (127.0.0.1 by default) and `settings.admin_port`."""
    import uvicorn

    host = host or settings.admin_host
    port = settings.admin_port if port is None else port
    if not 0 < port < 65536:
        raise SettingsError(f"--port {port}: expected a TCP port, 1 to 65535")
    _check_bindable(host, port)
    if host not in ("127.0.0.1", "::1", "localhost"):
        log.warning("admin page on %s:%d has no authentication: anyone who can reach it sees the job list",
                    host, port)
    # No access log: its query strings would carry the accession numbers people search for.
    uvicorn.run(create_app(settings), host=host, port=port, access_log=False, log_level="info")
    return 0


def _check_bindable(host: str, port: int) -> None:
    """A port in use is one line naming it, before uvicorn starts (it would log and exit 1)."""
    import socket

    try:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        with socket.socket(family) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            probe.bind((host, port))
    except OSError as exc:
        raise SettingsError(f"cannot listen on {host}:{port} ({exc.strerror}): another program has the port; "
                            "set LUMBARNODE_ADMIN_PORT or --port") from None
