"""`lumbarnode admin`: the web view of the job database, and the operator's retry.

- `/`                        the job list (HTML): filters by status, age and UID/accession number
- `/jobs/{id}`               one job: stages and timings, result, flags, exports, events, overlay
- `/jobs/{id}/overlay.png`   the picture of the measurement from the job's results folder
- `/jobs/{id}/retry|resend`  POST (operator): run the job again / send its results again
- `/api/jobs`, `/api/jobs/{id}`, `/api/status`, `/api/me`   the same as JSON;
  POST `/api/jobs/{id}/retry|resend`
- `/login`, `/logout`, `/users`, `/audit`, `/api/audit`    worker/admin/accounts.py
- `/metrics`                 Prometheus text format, read from the database at scrape time
- `/healthz`                 "ok"

Every route but /healthz, /metrics and the login needs a user (worker/admin/auth.py: who
may do what); /metrics and /healthz carry counts only, nothing about patients. Nothing here
writes to the results folders. The database holds no patient names and nothing here reads
DICOM files.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

from fastapi import Depends, FastAPI, HTTPException, Query, Request
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, PlainTextResponse, RedirectResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from db import STATUSES, JobStore, JobView
from db.access import AccessStore
from db.lifecycle import Status
from worker.admin import accounts
from worker.admin.auth import Forbidden, Guard, LoginRequired, Permission, Principal
from worker.admin.metrics import STAGES, JobMetrics
from worker.admin.web import Web, parse_since
from worker.bookkeeper import Bookkeeper, NothingToRetry
from worker.retention import disk_usage
from worker.settings import Settings

log = logging.getLogger(__name__)

OVERLAY = "overlay.png"
LIST_LIMIT = 100  # rows of the HTML list
_SECURITY_HEADERS = {
    # Server-rendered pages with inline CSS, images from here only, no scripts at all.
    "Content-Security-Policy": "default-src 'none'; img-src 'self'; style-src 'unsafe-inline'; "
                               "form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
    "X-Content-Type-Options": "nosniff",
    # same-origin, not no-referrer: with no-referrer a browser sends "Origin: null" on our own forms,
    # and the CSRF check needs their true origin; nothing leaves for other sites either way.
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
}


# -- helpers shared by the pages, the API and the metrics ------------------------------


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


# What the job page offers an operator, by the job's status (Bookkeeper.retry decides what it means).
RETRYABLE = frozenset({Status.FAILED, Status.DONE, Status.RUNNING, Status.QUEUED, Status.EXPORT_FAILED})
RESENDABLE = frozenset({Status.DONE, Status.EXPORTING, Status.EXPORT_FAILED})
NOTICES = {"retry": "Retry requested: the job's events below say what was done.",
           "resend": "Sending the results again: the export attempts below show how it goes."}


def _bookkeeper(store: JobStore, settings: Settings) -> Bookkeeper:
    from worker import tasks  # the Celery app: only when an operator retries

    tasks.configure(settings)
    return Bookkeeper(store, settings, tasks.enqueue_process, tasks.enqueue_export)


# -- the application ------------------------------------------------------------------


def create_app(settings: Settings, bookkeeper: Bookkeeper | None = None) -> FastAPI:
    """The admin application over the job database at `settings.database_url`. `bookkeeper`
    sends the operators' retries (default: the node's queue, made at the first retry)."""
    store = JobStore(settings.database_url)
    access = AccessStore(store)
    guard = Guard(access, settings)
    web = Web(settings, store, access, guard)
    registry = CollectorRegistry(auto_describe=False)
    registry.register(JobMetrics(store, settings))
    sender: list[Bookkeeper] = [bookkeeper] if bookkeeper else []

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        yield
        store.dispose()

    # No interactive docs: they load scripts from a CDN (and the CSP forbids scripts).
    app = FastAPI(title="lumbarnode admin", docs_url=None, redoc_url=None, openapi_url=None, lifespan=lifespan)
    app.state.store = store
    app.state.access = access
    app.state.settings = settings

    @app.middleware("http")
    async def security_headers(request: Request, call_next: Any) -> Response:
        response = await call_next(request)
        for name, value in _SECURITY_HEADERS.items():
            response.headers.setdefault(name, value)
        if settings.admin_tls_cert is not None:
            response.headers.setdefault("Strict-Transport-Security", "max-age=31536000")
        return response

    @app.exception_handler(LoginRequired)
    async def login_required(request: Request, exc: LoginRequired) -> Response:
        if _is_api(request):
            return JSONResponse({"detail": "authentication required: a session, or Authorization: Bearer TOKEN"},
                                status_code=401, headers={"WWW-Authenticate": 'Bearer realm="lumbarnode"'})
        target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        return RedirectResponse(f"/login?{urlencode({'next': target})}", status_code=303)

    @app.exception_handler(Forbidden)
    async def forbidden(request: Request, exc: Forbidden) -> Response:
        if _is_api(request):
            return JSONResponse({"detail": str(exc)}, status_code=403)
        return web.error_page(request, 403, str(exc))

    viewer = Depends(guard.need(Permission.VIEW_JOBS))
    operator = Depends(guard.need_to_change(Permission.RETRY))

    # -- HTML

    @app.get("/", response_class=HTMLResponse)
    def job_list(request: Request, status: str | None = None, q: str | None = None, since: str | None = None,
                 _: Principal = viewer) -> HTMLResponse:
        try:
            wanted, after = _status(status), parse_since(since)
        except ValueError as exc:
            return web.error_page(request, 400, str(exc))
        jobs = store.list_jobs(status=wanted, since=after, search=q, limit=LIST_LIMIT)
        counts = store.count_by_status()
        return web.page(request, "jobs.html", jobs=jobs, counts=counts, total=sum(counts.values()), limit=LIST_LIMIT,
                        disk=disk_usage(settings),
                        retention=(settings.retention_done_days, settings.retention_failed_days),
                        status=wanted or "", q=(q or "").strip(), since=(since or "all").strip() or "all")

    @app.get("/jobs/{job_id:int}", response_class=HTMLResponse)
    def job_page(request: Request, job_id: int, notice: str = "", _: Principal = viewer) -> HTMLResponse:
        job = store.get_job(job_id)
        if job is None:
            return web.error_page(request, 404, f"No job {job_id}.")
        guard.audit(request, "view_job", job_id=job_id)
        return web.page(request, "job.html", job=job, timings=ordered_timings(job.timings),
                        exports=store.exports(job_id), events=store.events(job_id),
                        has_overlay=overlay_path(job) is not None, notice=NOTICES.get(notice, ""),
                        retryable=Status(job.status) in RETRYABLE, resendable=Status(job.status) in RESENDABLE)

    @app.get("/jobs/{job_id:int}/overlay.png")
    def overlay(job_id: int, _: Principal = viewer) -> FileResponse:
        job = store.get_job(job_id)
        path = None if job is None else overlay_path(job)
        if path is None:
            raise HTTPException(404, f"no overlay for job {job_id}")
        return FileResponse(path, media_type="image/png")

    def retry(request: Request, job_id: int, export_only: bool) -> str:
        """Bookkeeper.retry for the operator of `request`, with its audit row. KeyError for an
        unknown job, NothingToRetry when its status has nothing to retry."""
        job = store.get_job(job_id)
        if job is None:
            raise KeyError(job_id)
        action = "resend" if export_only else "retry"
        if not sender:
            sender.append(_bookkeeper(store, settings))
        try:
            done = sender[0].retry(job, export_only=export_only)
        except NothingToRetry as exc:
            guard.audit(request, action, outcome="failed", job_id=job_id, detail=str(exc))
            raise
        except Exception as exc:  # the queue is not reachable: say so, record it
            guard.audit(request, action, outcome="failed", job_id=job_id, detail=f"{type(exc).__name__}: {exc}")
            raise HTTPException(503, f"the queue is not reachable ({type(exc).__name__}); try again") from None
        guard.audit(request, action, job_id=job_id, detail=done)
        return done

    def retry_page(request: Request, job_id: int, export_only: bool) -> Response:
        try:
            retry(request, job_id, export_only)
        except KeyError:
            return web.error_page(request, 404, f"No job {job_id}.")
        except NothingToRetry as exc:
            return web.error_page(request, 409, str(exc))
        notice = "resend" if export_only else "retry"
        return RedirectResponse(f"/jobs/{job_id}?notice={notice}", status_code=303)

    @app.post("/jobs/{job_id:int}/retry")
    def retry_form(request: Request, job_id: int, _: Principal = operator) -> Response:
        return retry_page(request, job_id, export_only=False)

    @app.post("/jobs/{job_id:int}/resend")
    def resend_form(request: Request, job_id: int, _: Principal = operator) -> Response:
        return retry_page(request, job_id, export_only=True)

    # -- JSON

    @app.get("/api/jobs")
    def api_jobs(status: str | None = None, q: str | None = None, since: str | None = None,
                 limit: int = Query(100, ge=1, le=1000), _: Principal = viewer) -> dict[str, Any]:
        try:
            wanted, after = _status(status), parse_since(since)
        except ValueError as exc:
            raise HTTPException(400, str(exc)) from None
        return {"jobs": [j.as_dict() for j in store.list_jobs(status=wanted, since=after, search=q, limit=limit)]}

    @app.get("/api/jobs/{job_id:int}")
    def api_job(request: Request, job_id: int, _: Principal = viewer) -> dict[str, Any]:
        job = store.get_job(job_id)
        if job is None:
            raise HTTPException(404, f"no job {job_id}")
        guard.audit(request, "view_job", job_id=job_id, detail="API")
        return {**job.as_dict(), "exports": [e.as_dict() for e in store.exports(job_id)],
                "events": [e.as_dict() for e in store.events(job_id)]}

    def api_retry(request: Request, job_id: int, export_only: bool) -> dict[str, Any]:
        try:
            done = retry(request, job_id, export_only)
        except KeyError:
            raise HTTPException(404, f"no job {job_id}") from None
        except NothingToRetry as exc:
            raise HTTPException(409, str(exc)) from None
        return {"job": store.get_job(job_id).as_dict(), "done": done}

    @app.post("/api/jobs/{job_id:int}/retry")
    def api_retry_job(request: Request, job_id: int, _: Principal = operator) -> dict[str, Any]:
        return api_retry(request, job_id, export_only=False)

    @app.post("/api/jobs/{job_id:int}/resend")
    def api_resend_job(request: Request, job_id: int, _: Principal = operator) -> dict[str, Any]:
        return api_retry(request, job_id, export_only=True)

    @app.get("/api/status")
    def api_status(_: Principal = viewer) -> dict[str, int]:
        return store.count_by_status()

    accounts.add_routes(app, web)

    # -- operations: no login (monitoring), nothing about patients

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


def _is_api(request: Request) -> bool:
    return request.url.path.startswith("/api/")
