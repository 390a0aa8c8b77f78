"""What a job does, independent of Celery: run the method on a job's series, and export
its results. The Celery tasks in worker/tasks.py are thin wrappers around these.

Both are idempotent. `run_job` claims the job (queued -> running, a compare-and-set), so of
two messages for one job only the first runs it: a message sent again by the bookkeeper
(its first was lost with a restarted broker, or its worker died) is harmless, and a job
that is running, exporting, done, skipped or failed is left alone. A job whose worker died
is queued again by the bookkeeper's sweep; running it again gives results with the same
UIDs. With its results written the job is `exporting` (db/lifecycle.py); export sends the
files of its results folder, so a retried export sends the same instances.
"""

from __future__ import annotations

import logging
import shutil
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

from db import JobStore, JobView
from db.lifecycle import Status
from dicom_io.errors import SeriesRefused
from dicom_io.reasons import Reason, parse
from dicom_io.scu import SendError, send_files
from dicom_io.series import load_series
from dicom_io.stow import StowError, stow
from worker.assembly import INTAKE_FLAGS, instance_files
from worker.settings import Destination, Settings, WebDestination, parse_destination

if TYPE_CHECKING:
    from worker.method import SeriesResult  # imports TensorFlow: inference workers only

log = logging.getLogger("lumbarnode.jobs")
RESULT_FILES = ("seg.dcm", "sr.dcm", "key.dcm")  # what export sends, in this order (worker/rendering.py writes them)
_models = None  # loaded once per worker process


def models(settings: Settings):
    global _models
    if _models is None:
        from worker.method import Models  # TensorFlow: imported by inference workers only

        _models = Models.load(settings)
    return _models


def results_dir(settings: Settings, job_id: int) -> Path:
    return settings.results_dir / f"job-{job_id}"


@contextmanager
def heartbeat(store: JobStore, job_id: int, every_s: float) -> Iterator[None]:
    """While the method runs, the job's update time moves on, so that a `running` job silent
    for JOB_TIMEOUT_S has truly lost its worker (a slow one is not queued a second time)."""
    stop = threading.Event()

    def beat() -> None:
        while not stop.wait(every_s):
            try:
                store.update_job(job_id)
            except Exception as exc:  # the database away for a moment: the next beat tries again
                log.warning("job %d: heartbeat not recorded (%s)", job_id, type(exc).__name__)

    thread = threading.Thread(target=beat, name=f"heartbeat-job-{job_id}", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


def run_job(settings: Settings, store: JobStore, job_id: int, resume: bool = False) -> JobView | None:
    """Run the method; on success the job is `exporting`.

    Returns the job when its export should follow, None when there is nothing to export.
    `resume`: this message already claimed the job before the job database went away, so
    a `running` job is its own.
    """
    job = store.claim_job(job_id, from_statuses=(Status.QUEUED, Status.RUNNING) if resume else (Status.QUEUED,),
                          to_status=Status.RUNNING)
    if job is None:
        current = store.get_job(job_id)
        log.info("job %d: not run, status is %s", job_id, current.status if current else "unknown")
        return None
    timings = {}
    if job.queued_at is not None:
        timings["queue_wait_s"] = (datetime.now(UTC) - job.queued_at).total_seconds()
    store.add_event("started", f"attempt {job.attempts}", job_id=job_id)
    with heartbeat(store, job_id, every_s=settings.job_timeout_s / 3):
        result = _run_method(settings, store, job, timings)
    if result is None:
        return None
    folder = results_dir(settings, job_id)
    if result.refusal is not None:
        store.set_status(job_id, Status.FAILED, reason=result.refusal.reason, error=result.refusal.message,
                         timings=timings, results_dir=str(folder), flags=list(result.flags))
        store.add_event("failed", result.refusal.message, job_id=job_id)
        return None
    analysis, model = result.analysis, result.models.segmentation
    job = store.set_status(
        job_id, Status.EXPORTING, timings=timings, results_dir=str(folder), lla_deg=analysis.lla_deg,
        lla_spread_deg=analysis.lla_spread_deg, lla_class=analysis.lla_class,
        cnn_class=analysis.cnn_class, flags=list(result.flags), model_name=model.name,
        model_version=model.version, model_sha256=model.sha256,
        **{f"{kind}_sop_instance_uid": getattr(result.datasets.get(kind), "SOPInstanceUID", None)
           for kind in ("seg", "sr", "key")},
    )
    lla = "not measured" if analysis.lla_deg is None else f"LLA {analysis.lla_deg:.1f} deg ({analysis.lla_class})"
    store.add_event("measured", f"{lla}; flags: {', '.join(result.flags) or 'none'}", job_id=job_id)
    return job


def _run_method(settings: Settings, store: JobStore, job: JobView, timings: dict) -> SeriesResult | None:
    """Load the series, run the method and write the results folder; the job's timings are
    added to `timings`. None when the job ended here (skipped, failed), with its reason stored."""
    from worker import method, rendering

    job_id = job.id
    try:
        started = time.perf_counter()
        try:
            series = load_series(instance_files(settings, job), max_obliquity_deg=settings.max_obliquity_deg)
        except SeriesRefused as exc:
            # found only once the pixels are read (mixed sizes, one slice): skipped like triage's,
            # while files that should have decoded and did not fail (dicom_io/reasons.py decides)
            status = Status.SKIPPED if parse(exc.reason)[0].skips else Status.FAILED
            store.set_status(job_id, status, reason=exc.reason, error=str(exc)[:2000],
                             timings={**timings, "load_s": time.perf_counter() - started})
            store.add_event(status, f"{exc.reason}: {exc}", job_id=job_id)
            return None
        timings["load_s"] = time.perf_counter() - started
        loaded_models = models(settings)
        timings["model_load_s"] = time.perf_counter() - started - timings["load_s"]
        intake = tuple(flag for flag in job.flags if flag in INTAKE_FLAGS)
        result = method.run_series(series, loaded_models, settings, intake)
        timings.update(result.timings)
        folder = results_dir(settings, job_id)
        if folder.exists():
            shutil.rmtree(folder)  # a re-run writes the same objects again
        rendering.write_results(result, folder)
        return result
    except Exception as exc:
        log.exception("job %d: the method failed", job_id)
        store.set_status(job_id, Status.FAILED, reason=Reason.METHOD_ERROR, error=f"{type(exc).__name__}: {exc}"[:2000],
                         timings=timings)
        store.add_event("failed", f"{type(exc).__name__}: {exc}"[:500], job_id=job_id)
        return None


class ExportFailed(Exception):
    """This export attempt failed; the caller retries or gives up."""


def export_job(settings: Settings, store: JobStore, job_id: int, last_attempt: bool) -> str:
    """Send the job's SEG, SR and key image. Returns the job's status afterwards.

    Raises ExportFailed when this attempt failed and another may follow. Attempts are
    numbered over the job's whole life (an operator's retry continues the count).
    """
    job = store.get_job(job_id)
    if job is None or job.status != Status.EXPORTING:
        return job.status if job else "unknown"
    if not job.destination:
        error = "no destination: the calling AE has no return address and LUMBARNODE_DESTINATION is not set"
        store.set_status(job_id, Status.EXPORT_FAILED, error=error)
        store.add_event("export_failed", error, job_id=job_id)
        return Status.EXPORT_FAILED
    files = [Path(job.results_dir) / name for name in RESULT_FILES if (Path(job.results_dir) / name).is_file()]
    destination = parse_destination(job.destination)
    attempt = len(store.exports(job_id)) + 1
    started, clock = datetime.now(UTC), time.perf_counter()
    if isinstance(destination, WebDestination):
        error, statuses, http_status, failed = _stow(settings, files, destination)
    else:
        error, statuses, http_status, failed = _c_store(settings, files, destination)
    store.add_export(job_id, destination=job.destination, attempt=attempt, status="failed" if error else "sent",
                     dimse_status=statuses, error=error, started_at=started, finished_at=datetime.now(UTC),
                     http_status=http_status, failed_sops=failed)
    if error is None:
        store.set_status(job_id, Status.DONE, error=None, timings={"export_s": time.perf_counter() - clock})
        store.add_event("exported", f"{len(files)} objects to {job.destination} ({statuses})", job_id=job_id)
        return Status.DONE
    store.add_event("export_attempt_failed", f"attempt {attempt}: {error}", job_id=job_id)
    if last_attempt:
        store.set_status(job_id, Status.EXPORT_FAILED, error=error)
        store.add_event("export_failed", f"gave up after {attempt} attempts", job_id=job_id)
        return Status.EXPORT_FAILED
    store.update_job(job_id, error=error)  # news for the bookkeeper: this export is alive and retrying
    raise ExportFailed(error)


Attempt = tuple[str | None, str | None, int | None, list[dict[str, str]] | None]  # error, DIMSE, HTTP, refused


def _c_store(settings: Settings, files: list[Path], destination: Destination) -> Attempt:
    try:
        result = send_files(files, destination.ae_title, destination.host, destination.port,
                            calling_ae=settings.ae_title, tls=settings.export_tls_context(),
                            server_hostname=destination.host)
    except SendError as exc:
        return str(exc), None, None, None
    except (OSError, ValueError) as exc:  # ValueError: unreadable TLS files (a recorded, retried failure)
        return f"{type(exc).__name__}: {exc}", None, None, None
    error = None if result.ok else f"the destination refused some objects (statuses {result.statuses})"
    return error, result.statuses, None, None


def _stow(settings: Settings, files: list[Path], destination: WebDestination) -> Attempt:
    try:
        auth, verify = settings.dicomweb_auth_and_verify(destination.url)
        result = stow(files, destination.url, auth, verify)
    except StowError as exc:
        return str(exc), None, exc.http_status, _refused(exc.failed)
    except OSError as exc:  # an unreadable secret file: recorded and retried like any failure
        return f"{type(exc).__name__}: {exc}", None, None, None
    if result.failed:
        return (f"the destination refused {len(result.failed)} of {len(files)} objects (HTTP {result.http_status})",
                None, result.http_status, _refused(result.failed))
    return None, None, result.http_status, None


def _refused(failed: tuple[tuple[str, str], ...]) -> list[dict[str, str]] | None:
    return [{"sop_instance_uid": uid, "reason": reason} for uid, reason in failed] or None
