"""The Celery app and its two tasks, following Celery's advice: small messages (a job id),
idempotent tasks (worker/jobs.py), late acknowledgement so that a job whose worker dies is
delivered again, one message at a time per worker process.

Two queues: `inference` (GPU workers run the method) and `export` (C-STORE to the PACS, with
retries and exponential backoff), so that a slow or absent PACS never holds a GPU.

A job database that cannot be reached does not lose the message: the task is sent again a
little later, as often as it takes (the job is still in the database, untouched or claimed
by this very message).
"""

from __future__ import annotations

import functools
import logging

import sqlalchemy.exc
from celery import Celery

from db import JobStore
from worker import jobs
from worker.settings import Settings

log = logging.getLogger("lumbarnode.tasks")
INFERENCE_QUEUE, EXPORT_QUEUE = "inference", "export"
DATABASE_RETRY_S = 5.0
DATABASE_AWAY = (sqlalchemy.exc.OperationalError, sqlalchemy.exc.InterfaceError)  # not reached, locked, cut

app = Celery("lumbarnode")
_settings: Settings | None = None
_store: JobStore | None = None


def configure(settings: Settings) -> Celery:
    """Point the app at the broker of `settings` (called by every process that sends or runs tasks)."""
    global _settings, _store
    _settings, _store = settings, None
    if settings.broker_url.startswith("sqla+"):
        from kombu.transport import sqlalchemy as embedded

        settings.data_dir.mkdir(parents=True, exist_ok=True)
        # The embedded broker is polled (default every second); its transport passes every
        # transport option on to create_engine, so the interval is set on the transport class.
        embedded.Transport.polling_interval = 0.2
    app.conf.update(
        broker_url=settings.broker_url,
        broker_connection_retry_on_startup=True,
        task_ignore_result=True,
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        task_default_queue=INFERENCE_QUEUE,
        task_routes={"lumbarnode.process": {"queue": INFERENCE_QUEUE}, "lumbarnode.export": {"queue": EXPORT_QUEUE}},
        worker_hijack_root_logger=False,
        worker_send_task_events=False,
        task_serializer="json",
        accept_content=["json"],
    )
    return app


def _context() -> tuple[Settings, JobStore]:
    global _store
    if _settings is None:
        configure(Settings.from_env())
    if _store is None:
        _store = JobStore(_settings.database_url)
    return _settings, _store


def _when_the_database_is_back(task, job_id: int, exc: Exception, **kwargs) -> None:
    """Send this task's message again in a few seconds; the retry count is kept as it is."""
    log.warning("job %d: the job database is not reachable (%s); %s again in %.0f s", job_id, type(exc).__name__,
                task.name, DATABASE_RETRY_S)
    task.apply_async((job_id,), kwargs, countdown=DATABASE_RETRY_S, retries=task.request.retries)


@app.task(name="lumbarnode.process", bind=True, acks_late=True, reject_on_worker_lost=True)
def process_job(self, job_id: int, resume: bool = False) -> None:
    settings, store = _context()
    try:
        job = jobs.run_job(settings, store, job_id, resume=resume)
    except DATABASE_AWAY as exc:
        # Whether or not this message had claimed the job, it is the one to carry it on.
        _when_the_database_is_back(self, job_id, exc, resume=True)
        return
    if job is not None:
        export_job.apply_async((job_id,), queue=EXPORT_QUEUE)


@app.task(name="lumbarnode.export", bind=True, acks_late=True, reject_on_worker_lost=True)
def export_job(self, job_id: int) -> None:
    settings, store = _context()
    last = self.request.retries >= settings.export_retries
    try:
        jobs.export_job(settings, store, job_id, last)
    except DATABASE_AWAY as exc:
        _when_the_database_is_back(self, job_id, exc)
    except jobs.ExportFailed as exc:
        delay = settings.export_backoff_s * 2 ** self.request.retries
        log.warning("job %d: export failed (%s); retry %d in %.1f s", job_id, exc, self.request.retries + 1, delay)
        raise self.retry(countdown=delay, max_retries=settings.export_retries, exc=exc)


def enqueue_process(job_id: int) -> None:
    process_job.apply_async((job_id,), queue=INFERENCE_QUEUE)


def enqueue_export(job_id: int) -> None:
    export_job.apply_async((job_id,), queue=EXPORT_QUEUE)


def broker_instance() -> str | None:
    """Which broker server is running now: Redis's run_id, new at every start. A change means
    that the messages it held may be gone (a Redis without persistence loses them all).
    None for brokers that keep their messages in a file (the embedded default) or when the
    broker cannot be asked right now."""
    url = app.conf.broker_url or ""
    if not url.startswith(("redis://", "rediss://")):
        return None
    import redis

    try:
        return str(_redis_client(url).info("server")["run_id"])
    except (redis.RedisError, OSError, KeyError):
        return None


@functools.cache
def _redis_client(url: str):
    """One client per broker for the node's sweep (it reconnects by itself after a restart)."""
    import redis

    return redis.Redis.from_url(url, socket_timeout=2, socket_connect_timeout=2)
