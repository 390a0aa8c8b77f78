"""The bookkeeper: every message sent again, from one place.

Celery's messages can be lost (a broker restarted without persistence, a worker killed
before it acknowledged); the job database is the record of what should happen. The
bookkeeper turns that record into messages: a new job's first message, the sweep for lost
ones, everything again after a broker restart, and an operator's retry. A message sent
twice is harmless (the worker's claim is a compare-and-set, an export sends the same SOP
instances again), so when in doubt it sends.

The node runs it (the sweep every few seconds); `lumbarnode jobs retry` uses it too.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

from db import JobStore, JobView
from db.lifecycle import Status
from worker.settings import Settings

log = logging.getLogger("lumbarnode.bookkeeper")
NEVER_SENT_AFTER_S = 2.0  # a `received` job older than this had its first message fail


class NothingToRetry(Exception):
    """The job is in a state an operator's retry does not apply to."""


class Bookkeeper:
    def __init__(self, store: JobStore, settings: Settings, enqueue_process: Callable[[int], None],
                 enqueue_export: Callable[[int], None]):
        self.store = store
        self.settings = settings
        self.enqueue_process = enqueue_process
        self.enqueue_export = enqueue_export

    @property
    def export_silence_s(self) -> float:
        """How long an `exporting` job may go without news before its message counts as lost:
        longer than the longest wait between two attempts of the export's own retries."""
        s = self.settings
        return s.job_timeout_s + s.export_backoff_s * 2 ** s.export_retries

    def queue(self, job_id: int) -> JobView:
        """received -> queued, and the message to the workers; back to received if the broker
        is away (the sweep sends it later)."""
        job = self.store.set_status(job_id, Status.QUEUED)
        try:
            self.enqueue_process(job_id)
        except Exception as exc:
            log.warning("job %d: the queue is not reachable (%s); will send it again", job_id, type(exc).__name__)
            self.store.set_status(job_id, Status.RECEIVED)  # no message was sent: no worker can hold it
            self.store.add_event("queue_unreachable", f"{type(exc).__name__}: {exc}"[:300], job_id=job_id)
            return self.store.get_job(job_id)
        return job

    def sweep(self) -> int:
        """Send again what was lost: messages never sent (`received`), jobs whose worker died
        (`running` without news for JOB_TIMEOUT_S: queued again), messages gone from the broker
        (`queued` for JOB_TIMEOUT_S; `exporting` past its retries' longest wait)."""
        now = datetime.now(UTC)
        timeout = self.settings.job_timeout_s
        never_sent = self.store.jobs_in_status([Status.RECEIVED], older_than=now - timedelta(seconds=NEVER_SENT_AFTER_S))
        silent = self.store.jobs_in_status([Status.RUNNING], older_than=now - timedelta(seconds=timeout))
        waiting = self.store.jobs_in_status([Status.QUEUED], older_than=now - timedelta(seconds=timeout))
        unsent = self.store.jobs_in_status([Status.EXPORTING],
                                           older_than=now - timedelta(seconds=self.export_silence_s))
        for job in silent:
            log.warning("job %d: running without news for %.0f s; its worker is presumed dead, queueing it again",
                        job.id, (now - job.updated_at).total_seconds())
            self.store.add_event("requeued", f"no progress for {timeout:.0f} s: worker presumed lost", job_id=job.id)
        for job in [*never_sent, *silent]:
            self.queue(job.id)
        for job in waiting:
            self._send_again(job.id, Status.QUEUED, f"queued for {timeout:.0f} s: message presumed lost")
        for job in unsent:
            self._send_again(job.id, Status.EXPORTING,
                             f"exporting without news for {self.export_silence_s:.0f} s: message presumed lost")
        return len(never_sent) + len(silent) + len(waiting) + len(unsent)

    def resend_all(self, why: str) -> int:
        """Send the message of every queued and exporting job again: the broker may have lost
        what it held (the node started, or Redis restarted)."""
        jobs = [(job, Status.QUEUED) for job in self.store.jobs_in_status([Status.QUEUED])]
        jobs += [(job, Status.EXPORTING) for job in self.store.jobs_in_status([Status.EXPORTING])]
        sent = sum(self._send_again(job.id, status, why) for job, status in jobs)
        if jobs:
            log.warning("%s: sent the messages of %d of %d queued or exporting jobs again", why, sent, len(jobs))
        return sent

    def retry(self, job: JobView, export_only: bool = False) -> str:
        """An operator's retry: send the results again (export_failed; done with `export_only`),
        or run the method again (failed, done). Returns what was done, for the operator."""
        status = Status(job.status)
        if status is Status.EXPORT_FAILED or (export_only and status in (Status.DONE, Status.EXPORTING)):
            if status is not Status.EXPORTING:
                self.store.set_status(job.id, Status.EXPORTING, error=None)
            self.enqueue_export(job.id)
            self.store.add_event("retry", "export queued again by an operator", job_id=job.id)
            return f"export queued again (to {job.destination})"
        if status is Status.QUEUED:
            self._send_again(job.id, Status.QUEUED, "message sent again by an operator")
            return "its message sent again (it was queued)"
        if status in (Status.FAILED, Status.DONE, Status.RUNNING):
            self.store.set_status(job.id, Status.QUEUED, error=None)
            self.enqueue_process(job.id)
            self.store.add_event("retry", f"queued again by an operator (was {status})", job_id=job.id)
            return f"queued again (was {status})"
        raise NothingToRetry(f"job {job.id} is {status}: nothing to retry ({job.reason or ''})")

    def _send_again(self, job_id: int, status: Status, why: str) -> bool:
        """One more message for a queued (process) or exporting (export) job. Its status is left
        alone (a worker may be taking it this instant); its update time moves on, so the next
        sweep does not send it again."""
        enqueue = self.enqueue_process if status is Status.QUEUED else self.enqueue_export
        try:
            enqueue(job_id)
        except Exception as exc:
            log.warning("job %d: the queue is not reachable (%s); will send it again", job_id, type(exc).__name__)
            return False
        self.store.update_job(job_id)
        self.store.add_event("requeued", why, job_id=job_id)
        return True
