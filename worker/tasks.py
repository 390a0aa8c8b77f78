"""The Celery app and its two tasks, following Celery's advice: small messages (a job id),
idempotent tasks (worker/jobs.py), late acknowledgement so that a job whose worker dies is
delivered again, one message at a time per worker process.

Two queues: `inference` (GPU workers run the method) and `export` (C-STORE to the PACS, with
retries and exponential backoff), so that a slow or absent PACS never holds a GPU.
"""

from __future__ import annotations

import logging

from celery import Celery

from db import JobStore
from worker import jobs
from worker.settings import Settings

log = logging.getLogger("lumbarnode.tasks")
INFERENCE_QUEUE, EXPORT_QUEUE = "inference", "export"

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


@app.task(name="lumbarnode.process", acks_late=True, reject_on_worker_lost=True)
def process_job(job_id: int) -> None:
    settings, store = _context()
    if jobs.run_job(settings, store, job_id) is not None:
        export_job.apply_async((job_id,), queue=EXPORT_QUEUE)


@app.task(name="lumbarnode.export", bind=True, acks_late=True, reject_on_worker_lost=True)
def export_job(self, job_id: int) -> None:
    settings, store = _context()
    last = self.request.retries >= settings.export_retries
    try:
        jobs.export_job(settings, store, job_id, last)
    except jobs.ExportFailed as exc:
        delay = settings.export_backoff_s * 2 ** self.request.retries
        log.warning("job %d: export failed (%s); retry %d in %.1f s", job_id, exc, self.request.retries + 1, delay)
        raise self.retry(countdown=delay, max_retries=settings.export_retries, exc=exc)


def enqueue_process(job_id: int) -> None:
    process_job.apply_async((job_id,), queue=INFERENCE_QUEUE)


def enqueue_export(job_id: int) -> None:
    export_job.apply_async((job_id,), queue=EXPORT_QUEUE)
