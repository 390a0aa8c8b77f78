"""Series assembly: from instances landing in the spool to one job per complete series.

A series is complete when every association that delivered to it has ended and no instance
has arrived for the quiet period. Its job covers every instance in its spool folder; an
instance that arrives after a job was made starts a new job version (the series folder now
holds more instances), duplicates alone start nothing. The spool is the source of truth:
on start, `recover` picks up series whose instances no job covers yet (a node stopped or
killed in the middle of a study).

A series that looks cut short (an association that delivered to it ended without a
release, or gaps in its instance numbers or slice positions) waits `INCOMPLETE_WAIT_S` for
the rest; then it is skipped with the reason `incomplete_series` (the default: nothing half
sent is measured), or, with `INCOMPLETE_SERIES=measure`, measured with that flag.

Usable series (dicom_io.triage) are queued; the rest get a `skipped` job with the reason.
The per-instance path touches no database: the listener keeps receiving while the job
database is slow or briefly away, and a series whose job could not be written is retried.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pydicom

from db import JobStore, JobView
from db.lifecycle import Status
from dicom_io.reasons import Reason, sentence
from dicom_io.scp import StoredInstance, is_uid, remove_stale_temporaries
from dicom_io.triage import SeriesRules, frame_count, missing_instances, triage
from worker.settings import Settings

log = logging.getLogger("lumbarnode.assembly")
CALLER_FILE = ".calling_ae"  # in each series folder: who sent it, for the return address after a restart
STALE_PART_S = 3600  # a temporary file of the listener this old was left by a crash mid-write (a write takes ms)
RECEIVING_FILE = ".receiving"  # in a series folder while an association delivering to it is open: a node
# killed then finds, on restart, the series that were cut short
INCOMPLETE = Reason.INCOMPLETE_SERIES.coded()  # the reason of a skipped job, or the flag of a measured one
INTAKE_FLAGS = frozenset({INCOMPLETE})  # flags set here, before the method runs
CUT_SHORT = "the transfer was cut short (an association ended without a release)"


@dataclass
class _Pending:
    study_uid: str
    series_uid: str
    calling_ae: str
    first_received: datetime
    last_received: float  # monotonic
    associations: set[int] = field(default_factory=set)
    cut_short: bool = False  # the last association that delivered to it ended without a release
    incomplete: str | None = None  # why it looked incomplete when it was due: it waits longer

    def wait_s(self, settings: Settings) -> float:
        return settings.incomplete_wait_s if self.cut_short or self.incomplete else settings.quiet_period_s


class SeriesAssembler:
    def __init__(self, store: JobStore, settings: Settings, queue: Callable[[int], JobView],
                 clock: Callable[[], float] = time.monotonic):
        """`queue`: puts a new job on the queue (the bookkeeper's, worker/bookkeeper.py)."""
        self.store = store
        self.settings = settings
        self.queue = queue
        self.clock = clock
        self.rules = SeriesRules.from_text(settings.lumbar_body_parts, settings.lumbar_description_pattern,
                                           settings.max_obliquity_deg)
        self._pending: dict[str, _Pending] = {}
        self._open: set[int] = set()
        self._lock = threading.Lock()

    # --- called from the listener's threads -------------------------------------------------

    def instance_stored(self, instance: StoredInstance) -> None:
        with self._lock:
            pending = self._pending.get(instance.series_uid)
            if pending is None:
                pending = self._pending[instance.series_uid] = _Pending(
                    instance.study_uid, instance.series_uid, instance.calling_ae, datetime.now(UTC),
                    instance.received_at)
                caller = instance.path.parent / CALLER_FILE
                if not caller.exists():
                    caller.write_text(instance.calling_ae)
            pending.last_received = max(pending.last_received, instance.received_at)
            if instance.association not in pending.associations:
                (instance.path.parent / RECEIVING_FILE).touch()
            pending.associations.add(instance.association)
            pending.incomplete = None  # judged again when it is due
            self._open.add(instance.association)

    def association_ended(self, association: int, released: bool = True) -> None:
        with self._lock:
            self._open.discard(association)
            for pending in self._pending.values():
                if association in pending.associations:
                    pending.cut_short = not released
                    if released and not pending.associations & self._open:
                        self._folder(pending).joinpath(RECEIVING_FILE).unlink(missing_ok=True)

    # --- called by the node's loop ---------------------------------------------------------

    def poll(self) -> list[JobView]:
        """Make the jobs of every series that is complete now."""
        now = self.clock()
        with self._lock:
            due = [p for p in self._pending.values()
                   if not (p.associations & self._open) and now - p.last_received >= p.wait_s(self.settings)]
            for p in due:
                del self._pending[p.series_uid]
        jobs = []
        for pending in due:
            try:
                job = self.complete(pending, quiet_s=now - pending.last_received)
            except Exception:  # the database away, a file gone: try again after the next quiet period
                log.exception("series %s: could not make its job; will retry", pending.series_uid)
                with self._lock:
                    pending.last_received = self.clock()
                    self._pending.setdefault(pending.series_uid, pending)
                continue
            if job is not None:
                jobs.append(job)
        return jobs

    def _folder(self, pending: _Pending) -> Path:
        return self.settings.spool_dir / pending.study_uid / pending.series_uid

    def complete(self, pending: _Pending, quiet_s: float = 0.0) -> JobView | None:
        folder = self._folder(pending)
        files = sorted(folder.glob("*.dcm"))
        if not files:
            return None
        uids = [f.stem for f in files]
        latest = self.store.latest_job(pending.series_uid)
        if latest is not None and set(latest.instance_uids) == set(uids):
            return None  # only duplicates arrived: the job made before covers them
        incomplete = None
        try:
            header = pydicom.dcmread(files[0], stop_before_pixels=True)
            slices = len(files) if len(files) > 1 else frame_count(header)
            reason = triage(header, slices, self.rules)
            if reason is None:
                incomplete = CUT_SHORT if pending.cut_short else missing_instances(
                    [pydicom.dcmread(f, stop_before_pixels=True) for f in files])
        except Exception as exc:  # stored as received, but not even its header can be read
            header, reason = pydicom.Dataset(), Reason.MALFORMED_FILE.coded(type(exc).__name__)
        if incomplete and quiet_s < self.settings.incomplete_wait_s:
            log.warning("series %s looks incomplete (%s): waiting up to %.0f s for the rest", pending.series_uid,
                        incomplete, self.settings.incomplete_wait_s)
            with self._lock:
                pending.incomplete = incomplete
                self._pending.setdefault(pending.series_uid, pending)
            return None
        if incomplete and self.settings.incomplete_series == "skip":
            reason = INCOMPLETE
        series_id = self.store.series_received(
            study_instance_uid=pending.study_uid, series_instance_uid=pending.series_uid,
            modality=str(header.get("Modality", "")), series_description=str(header.get("SeriesDescription", ""))[:64],
            body_part_examined=str(header.get("BodyPartExamined", ""))[:64],
            accession_number=str(header.get("AccessionNumber", ""))[:64], calling_ae=pending.calling_ae,
            instance_count=len(files), first_received_at=pending.first_received, last_received_at=datetime.now(UTC),
        )
        destination = self.settings.return_address(pending.calling_ae)
        if reason is not None:
            error = f"series not processed: {sentence(reason)}"
            if reason == INCOMPLETE:
                error += (f": {incomplete}, after waiting {quiet_s:.0f} s; send the whole series again "
                          "(or set LUMBARNODE_INCOMPLETE_SERIES=measure to measure it with a flag)")
            job = self.store.create_job(series_id, uids, destination=str(destination) if destination else None,
                                        status=Status.SKIPPED, reason=reason, error=error)
            self.store.add_event("skipped", f"series {pending.series_uid}: {reason}", job_id=job.id,
                                 series_id=series_id)
            log.info("job %d: series %s skipped (%s)", job.id, pending.series_uid, reason)
            return self.store.get_job(job.id)
        job = self.store.create_job(series_id, uids, destination=str(destination) if destination else None)
        self.store.add_event("received", f"series {pending.series_uid}: {len(files)} instances from "
                             f"{pending.calling_ae or 'unknown caller'}", job_id=job.id, series_id=series_id)
        self.store.update_job(job.id, timings={"quiet_period_s": round(quiet_s, 3)},
                              **({"flags": [INCOMPLETE]} if incomplete else {}))
        if incomplete:
            self.store.add_event("incomplete", f"series {pending.series_uid}: {incomplete}; measured with the flag "
                                 f"{INCOMPLETE}", job_id=job.id, series_id=series_id)
        log.info("job %d: series %s complete (%d instances, version %d)", job.id, pending.series_uid, len(files),
                 job.version)
        return self.queue(job.id)

    def recover(self) -> int:
        """Queue again, after a quiet period, every spooled series no job covers yet."""
        count = 0
        spool = self.settings.spool_dir
        if not spool.is_dir():
            return 0
        covered = self.store.latest_instances()  # one query for every series, not one per folder
        stale = 0
        for folder in sorted(p for p in spool.glob("*/*") if p.is_dir()):
            study_uid, series_uid = folder.parent.name, folder.name
            if not (is_uid(study_uid) and is_uid(series_uid)):
                continue  # the retention cleaner's .trash among them
            stale += remove_stale_temporaries(folder, STALE_PART_S)
            uids = {f.stem for f in folder.glob("*.dcm")}
            if not uids or covered.get(series_uid) == uids:
                continue
            caller = folder / CALLER_FILE
            with self._lock:
                self._pending.setdefault(series_uid, _Pending(
                    study_uid, series_uid, caller.read_text().strip() if caller.exists() else "",
                    datetime.now(UTC) - timedelta(seconds=0), self.clock(),
                    cut_short=(folder / RECEIVING_FILE).exists()))  # the node died mid-association
            count += 1
        if count:
            log.info("recovered %d spooled series that no job covers yet", count)
        if stale:
            log.info("removed %d temporary files that a listener stopped mid-write left in the spool", stale)
        return count


def instance_files(settings: Settings, job: JobView) -> list[Path]:
    folder = settings.spool_dir / job.study_instance_uid / job.series_instance_uid
    return [folder / f"{uid}.dcm" for uid in job.instance_uids]
