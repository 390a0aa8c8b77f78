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

The metrics are in worker/admin/metrics.py, the server in worker/admin/server.py.
"""

from __future__ import annotations

import logging
import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from fastapi import FastAPI, HTTPException, Query, Request
from fastapi.responses import FileResponse, HTMLResponse, PlainTextResponse, Response
from jinja2 import Environment, FileSystemLoader, StrictUndefined
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from db import STATUSES, JobStore, JobView
from dicom_io.codes import flag_meaning
from worker.admin.metrics import STAGES, JobMetrics, stage_name
from worker.retention import disk_usage
from worker.settings import Settings

log = logging.getLogger(__name__)

TEMPLATES = Path(__file__).resolve().parent / "templates"
OVERLAY = "overlay.png"
LIST_LIMIT = 100  # rows of the HTML list
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
