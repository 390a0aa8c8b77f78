"""The retention cleaner: a finished job's input (its series in the spool) and its results
folder are deleted once they are no longer needed, so that a node left alone for months
keeps receiving instead of answering every instance 0xA700 (spool full).

What goes, and when (settings `RETENTION_DONE_DAYS`, `RETENTION_FAILED_DAYS`):
- a `done` job (results delivered): input and results, RETENTION_DONE_DAYS after delivery;
- a `failed` or `skipped` job: RETENTION_FAILED_DAYS after it ended (longer: someone may
  want to look at what went wrong);
- never: a job whose results were not delivered (`export_failed`), or one not finished.
The job's row stays, with `cleaned_at` set and an event: the record is the database's.

A series folder is deleted only with its newest job, only when that job covers every
instance in it (no newer instances waiting for a job), and without racing the listener: the
folder is first renamed into `<spool>/.trash/` (one atomic step), so an instance arriving
meanwhile lands in a fresh folder, a duplicate that the listener acknowledged because the
file was there (it touches the file, `dicom_io.scp`) is put back, and a write caught
half-way fails before its success status goes out. Nothing acknowledged is lost.
"""

from __future__ import annotations

import logging
import os
import shutil
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from db import JobStore
from worker.assembly import RECEIVING_FILE
from worker.settings import Settings

log = logging.getLogger("lumbarnode.retention")
TRASH = ".trash"
TOUCH_MARGIN_S = 2.0  # a file touched this close to the rename counts as touched after it


@dataclass(frozen=True)
class Cleaned:
    jobs: int
    series_folders: int
    results_folders: int
    bytes_freed: int


@dataclass(frozen=True)
class DiskUsage:
    spool_bytes: int
    results_bytes: int
    free_bytes: int  # on the spool's file system
    total_bytes: int


def clean(store: JobStore, settings: Settings, now: datetime | None = None) -> Cleaned:
    """One pass: every job due, oldest first."""
    now = now or datetime.now(UTC)
    _empty_trash(settings.spool_dir)
    due = store.jobs_to_clean(delivered_before=_before(now, settings.retention_done_days),
                              failed_before=_before(now, settings.retention_failed_days))
    latest = store.latest_instances() if due else {}
    series = results = freed = 0
    for job in due:
        if job.results_dir and Path(job.results_dir).is_dir():
            freed += _remove(Path(job.results_dir))
            results += 1
        folder = settings.spool_dir / job.study_instance_uid / job.series_instance_uid
        if latest.get(job.series_instance_uid) == frozenset(job.instance_uids) and folder.is_dir():
            gone = _remove_series(folder, frozenset(job.instance_uids), settings.spool_dir)
            if gone is not None:
                freed += gone
                series += 1
        store.update_job(job.id, cleaned_at=now)
        store.add_event("cleaned", f"input and results deleted after retention ({job.status})", job_id=job.id)
    if due:
        log.info("retention: cleaned %d jobs (%d series folders, %d results folders, %.1f MiB)", len(due), series,
                 results, freed / 2**20)
    return Cleaned(len(due), series, results, freed)


def _before(now: datetime, days: float) -> datetime:
    """The cutoff `days` back from now; `inf` (or anything past a century): nothing is due."""
    if days > 36_500:
        return datetime(1970, 1, 1, tzinfo=UTC)
    return now - timedelta(days=days)


def _remove_series(folder: Path, covered: frozenset[str], spool: Path) -> int | None:
    """Delete a series folder whose every instance its job covers; None when it must stay."""
    if (folder / RECEIVING_FILE).exists():
        return None  # an association is delivering to it now
    if any(p.suffix == ".dcm" and p.stem not in covered for p in folder.iterdir()):
        return None  # newer instances: a new job version will cover them
    trash = spool / TRASH / uuid.uuid4().hex
    trash.parent.mkdir(exist_ok=True)
    started = time.time()
    os.rename(folder, trash)  # from here on the listener writes into a fresh folder
    for path in trash.glob("*.dcm"):
        if path.stat().st_mtime >= started - TOUCH_MARGIN_S:  # acknowledged again meanwhile: keep
            folder.mkdir(parents=True, exist_ok=True)
            os.replace(path, folder / path.name)
    freed = _remove(trash)
    _remove_empty(folder.parent)  # the study folder, once its last series is gone
    return freed


def _empty_trash(spool: Path) -> None:
    """What an earlier pass renamed but did not finish deleting (the node stopped meanwhile)."""
    trash = spool / TRASH
    if trash.is_dir():
        for leftover in trash.iterdir():
            _remove(leftover)


def _remove(path: Path) -> int:
    size = _size(path)
    shutil.rmtree(path, ignore_errors=True)
    return size


def _remove_empty(folder: Path) -> None:
    try:
        folder.rmdir()
    except OSError:
        pass  # not empty, or already gone


def _size(path: Path) -> int:
    total = 0
    for root, _, files in os.walk(path):
        for name in files:
            try:
                total += os.lstat(os.path.join(root, name)).st_size
            except OSError:
                pass
    return total


def disk_usage(settings: Settings) -> DiskUsage:
    """What the spool and the results take, and what the spool's file system has left (zeros
    where this process does not see the spool: an admin page on another machine)."""
    spool = settings.spool_dir
    disk = shutil.disk_usage(spool) if spool.is_dir() else None
    results = _size(settings.results_dir) if settings.results_dir.is_dir() else 0
    return DiskUsage(_size(spool) if disk else 0, results, disk.free if disk else 0, disk.total if disk else 0)
