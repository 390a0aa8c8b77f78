"""`JobStore`: the only way the rest of lumbarnode reads and writes the job database.

Every method runs one short transaction and returns plain frozen snapshots
(`JobView`, `ExportView`, `EventView`) that stay valid after the session is gone, so
callers never hold ORM objects or sessions across a DICOM association or a Celery task.

Concurrency (listener and workers share one database):
- transactions that write take the write lock up front on SQLite (BEGIN IMMEDIATE, see
  `db.engine`) and lock the job row on PostgreSQL (SELECT ... FOR UPDATE);
- `claim_job` is a single compare-and-set UPDATE, which makes Celery tasks idempotent;
- `create_job` numbers versions under a lock on the series row and retries should
  another process still take the same version (unique series_id, version).

Unknown job or series ids raise KeyError; invalid values (unknown status or field,
naive datetimes) raise ValueError. All datetimes are timezone-aware UTC.
Supported backends: SQLite and PostgreSQL (the series upsert uses ON CONFLICT).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from db.engine import make_engine
from db.lifecycle import CREATED_IN, FINISHED, Status, check_move, may_move, status as _status
from db.models import Event, Export, Job, Series, UTCDateTime

STATUSES = tuple(Status)  # db/lifecycle.py: the states and who may move a job between them
FINISHED_STATUSES = FINISHED
EXPORT_STATUSES = ("sent", "failed")

# Columns update_job may set. Identity and history columns are not among them:
# updated_at is bumped by every update and created_at never changes.
_FIXED = frozenset({"id", "series_id", "version", "created_at", "updated_at"})
UPDATABLE_FIELDS = frozenset(c.key for c in Job.__table__.columns) - _FIXED
_NOT_NULL = frozenset(c.key for c in Job.__table__.columns if not c.nullable)
_DATETIME_FIELDS = frozenset({"queued_at", "started_at", "finished_at", "cleaned_at"})

# Two processes creating a job for one series at once collide on (series_id, version);
# the loser reads the new maximum and tries again.
_VERSION_RETRIES = 5


def utcnow() -> datetime:
    return datetime.now(UTC)


def _jsonable(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    return value


class _View:
    def as_dict(self) -> dict[str, Any]:
        """JSON-ready: datetimes as ISO 8601 strings, tuples as lists."""
        return _jsonable(asdict(self))  # type: ignore[call-overload]


@dataclass(frozen=True)
class JobView(_View):
    id: int
    version: int
    status: str
    reason: str | None
    error: str | None
    attempts: int
    series_id: int
    study_instance_uid: str
    series_instance_uid: str
    modality: str
    series_description: str
    body_part_examined: str
    accession_number: str
    calling_ae: str
    instance_uids: tuple[str, ...]
    instance_count: int
    destination: str | None
    results_dir: str | None
    created_at: datetime
    updated_at: datetime
    queued_at: datetime | None
    started_at: datetime | None
    finished_at: datetime | None
    cleaned_at: datetime | None
    timings: dict[str, float]
    lla_deg: float | None
    lla_spread_deg: float | None
    lla_class: str | None
    cnn_class: str | None
    flags: tuple[str, ...]
    model_name: str | None
    model_version: str | None
    model_sha256: str | None
    seg_sop_instance_uid: str | None
    sr_sop_instance_uid: str | None
    key_sop_instance_uid: str | None


@dataclass(frozen=True)
class ExportView(_View):
    id: int
    job_id: int
    destination: str
    attempt: int
    status: str
    dimse_status: str | None
    error: str | None
    started_at: datetime
    finished_at: datetime
    http_status: int | None = None
    failed_sops: tuple[dict[str, str], ...] = ()


@dataclass(frozen=True)
class EventView(_View):
    id: int
    at: datetime
    job_id: int | None
    series_id: int | None
    kind: str
    message: str


def _job_view(job: Job, series: Series) -> JobView:
    return JobView(
        id=job.id,
        version=job.version,
        status=job.status,
        reason=job.reason,
        error=job.error,
        attempts=job.attempts,
        series_id=series.id,
        study_instance_uid=series.study_instance_uid,
        series_instance_uid=series.series_instance_uid,
        modality=series.modality,
        series_description=series.series_description,
        body_part_examined=series.body_part_examined,
        accession_number=series.accession_number,
        calling_ae=series.calling_ae,
        instance_uids=tuple(job.instance_uids),
        instance_count=job.instance_count,
        destination=job.destination,
        results_dir=job.results_dir,
        created_at=job.created_at,
        updated_at=job.updated_at,
        queued_at=job.queued_at,
        started_at=job.started_at,
        finished_at=job.finished_at,
        cleaned_at=job.cleaned_at,
        timings=dict(job.timings),
        lla_deg=job.lla_deg,
        lla_spread_deg=job.lla_spread_deg,
        lla_class=job.lla_class,
        cnn_class=job.cnn_class,
        flags=tuple(job.flags),
        model_name=job.model_name,
        model_version=job.model_version,
        model_sha256=job.model_sha256,
        seg_sop_instance_uid=job.seg_sop_instance_uid,
        sr_sop_instance_uid=job.sr_sop_instance_uid,
        key_sop_instance_uid=job.key_sop_instance_uid,
    )


def _export_view(row: Export) -> ExportView:
    return ExportView(
        id=row.id,
        job_id=row.job_id,
        destination=row.destination,
        attempt=row.attempt,
        status=row.status,
        dimse_status=row.dimse_status,
        error=row.error,
        started_at=row.started_at,
        finished_at=row.finished_at,
        http_status=row.http_status,
        failed_sops=tuple(row.failed_sops or ()),
    )


def _event_view(row: Event) -> EventView:
    return EventView(id=row.id, at=row.at, job_id=row.job_id, series_id=row.series_id, kind=row.kind, message=row.message)


def _check_status(status: str) -> str:
    _status(status)
    return status


def _check_statuses(statuses: str | Iterable[str]) -> tuple[str, ...]:
    # A bare string is one status, not a sequence of one-letter statuses.
    items = (statuses,) if isinstance(statuses, str) else tuple(statuses)
    return tuple(_check_status(s) for s in items)


def _aware(name: str, value: Any) -> datetime:
    if not isinstance(value, datetime) or value.tzinfo is None or value.utcoffset() is None:
        raise ValueError(f"{name} must be a timezone-aware datetime, not {value!r}")
    return value


def _str_list(name: str, values: Any) -> list[str]:
    if isinstance(values, str) or not isinstance(values, Iterable):
        raise ValueError(f"{name} must be a sequence of strings, not {values!r}")
    items = list(values)
    if not all(isinstance(v, str) for v in items):
        raise ValueError(f"{name} must hold strings only")
    return items


def _stamp(status: str) -> tuple[str, bool] | None:
    """The timestamp column a status change sets, and whether only when still unset."""
    if status == "queued":
        return "queued_at", False
    if status == "running":
        return "started_at", True  # a retried job keeps its first start
    if status in FINISHED_STATUSES:
        return "finished_at", False
    return None


def _clean_fields(fields: Mapping[str, Any]) -> dict[str, Any]:
    """Validate and normalise update_job's fields (before any database work)."""
    unknown = set(fields) - UPDATABLE_FIELDS
    if unknown:
        raise ValueError(f"cannot set job field(s) {', '.join(sorted(unknown))}")
    clean: dict[str, Any] = {}
    for name, value in fields.items():
        if value is None:
            if name in _NOT_NULL:
                raise ValueError(f"job field {name} cannot be None")
        elif name == "status":
            _check_status(value)
        elif name in _DATETIME_FIELDS:
            _aware(name, value)
        elif name in ("instance_uids", "flags"):
            value = _str_list(name, value)
        elif name == "timings":
            if not isinstance(value, Mapping):
                raise ValueError(f"timings must be a mapping of stage name to seconds, not {value!r}")
            value = {str(k): float(v) for k, v in value.items()}
        clean[name] = value
    if "instance_uids" in clean and "instance_count" not in clean:
        clean["instance_count"] = len(clean["instance_uids"])
    return clean


class JobStore:
    """The job database. `url` is an SQLAlchemy URL: ``sqlite:////abs/path/lumbarnode.db``
    or ``postgresql+psycopg://user@host:5432/name``.

    `create=True` migrates the database to the newest schema first (see `db.migrate`);
    the parent folder of an SQLite file is created. `engine_options` go to
    `sqlalchemy.create_engine` for both the store and the migrations, e.g.
    ``{"connect_args": {"options": "-csearch_path=myschema"}}`` to use one PostgreSQL
    schema (the tests isolate themselves this way).
    """

    def __init__(self, url: str, *, create: bool = False, engine_options: Mapping[str, Any] | None = None):
        self.url = url
        self._engine_options = dict(engine_options or {})
        self.engine = make_engine(url, self._engine_options)
        if self.engine.dialect.name not in ("sqlite", "postgresql"):
            self.engine.dispose()
            raise ValueError(f"unsupported database {self.engine.dialect.name!r}: use SQLite or PostgreSQL")
        self._session = sessionmaker(self.engine, expire_on_commit=False)
        self._write_session = sessionmaker(
            self.engine.execution_options(sqlite_begin="IMMEDIATE"), expire_on_commit=False
        )
        if create:
            self.upgrade()

    def upgrade(self) -> None:
        # Imported here so that `python -m db.migrate` does not find itself pre-imported.
        from db import migrate

        migrate.upgrade(self.url, engine_options=self._engine_options)

    def dispose(self) -> None:
        self.engine.dispose()

    # -- series and jobs ------------------------------------------------------------

    def series_received(
        self,
        *,
        study_instance_uid: str,
        series_instance_uid: str,
        modality: str = "",
        series_description: str = "",
        body_part_examined: str = "",
        accession_number: str = "",
        calling_ae: str = "",
        instance_count: int,
        first_received_at: datetime,
        last_received_at: datetime,
    ) -> int:
        """Insert or update the series by its UID and return its id. An update takes
        the new descriptive values and count, keeps the earliest first_received_at and
        the latest last_received_at (two associations may report out of order)."""
        _aware("first_received_at", first_received_at)
        _aware("last_received_at", last_received_at)
        insert = postgresql.insert if self.engine.dialect.name == "postgresql" else sqlite.insert
        stmt = insert(Series).values(
            study_instance_uid=study_instance_uid,
            series_instance_uid=series_instance_uid,
            modality=modality,
            series_description=series_description,
            body_part_examined=body_part_examined,
            accession_number=accession_number,
            calling_ae=calling_ae,
            instance_count=instance_count,
            first_received_at=first_received_at,
            last_received_at=last_received_at,
        )
        new = stmt.excluded
        stmt = stmt.on_conflict_do_update(
            index_elements=[Series.series_instance_uid],
            set_={
                "study_instance_uid": new.study_instance_uid,
                "modality": new.modality,
                "series_description": new.series_description,
                "body_part_examined": new.body_part_examined,
                "accession_number": new.accession_number,
                "calling_ae": new.calling_ae,
                "instance_count": new.instance_count,
                "first_received_at": sa.case(
                    (new.first_received_at < Series.first_received_at, new.first_received_at),
                    else_=Series.first_received_at,
                ),
                "last_received_at": sa.case(
                    (new.last_received_at > Series.last_received_at, new.last_received_at),
                    else_=Series.last_received_at,
                ),
            },
        ).returning(Series.id)
        with self._write_session.begin() as session:
            return int(session.execute(stmt).scalar_one())

    def create_job(
        self,
        series_id: int,
        instance_uids: Sequence[str],
        *,
        destination: str | None = None,
        status: str = "received",
        reason: str | None = None,
        error: str | None = None,
    ) -> JobView:
        """A new job for the series, with version = the series' highest version + 1."""
        uids = _str_list("instance_uids", instance_uids)
        if _status(status) not in CREATED_IN:
            raise ValueError(f"a job is created {' or '.join(sorted(CREATED_IN))}, not {status}")
        for attempt in range(_VERSION_RETRIES):
            try:
                with self._write_session.begin() as session:
                    # Locking the series row queues concurrent creators on PostgreSQL
                    # (SQLite: BEGIN IMMEDIATE); the retry is the backstop.
                    series = session.get(Series, series_id, with_for_update=True)
                    if series is None:
                        raise KeyError(f"no series with id {series_id}")
                    latest = session.scalar(sa.select(sa.func.max(Job.version)).where(Job.series_id == series_id))
                    now = utcnow()
                    job = Job(
                        series_id=series_id,
                        version=(latest or 0) + 1,
                        status=status,
                        reason=reason,
                        error=error,
                        attempts=0,
                        instance_uids=uids,
                        instance_count=len(uids),
                        destination=destination,
                        created_at=now,
                        updated_at=now,
                        timings={},
                        flags=[],
                    )
                    stamp = _stamp(status)
                    if stamp is not None:
                        setattr(job, stamp[0], now)
                    session.add(job)
                    session.flush()  # the unique (series_id, version) fires here
                    return _job_view(job, series)
            except IntegrityError:
                if attempt == _VERSION_RETRIES - 1:
                    raise
        raise AssertionError("unreachable")

    def update_job(self, job_id: int, **fields: Any) -> JobView:
        """Set columns of the job (any of UPDATABLE_FIELDS) and bump updated_at.
        `timings` is merged into the stored timings; `instance_uids` also sets
        `instance_count` unless that is given too."""
        return self._update(job_id, _clean_fields(fields), status=None)

    def set_status(self, job_id: int, status: str, **fields: Any) -> JobView:
        """update_job with a new status, stamping queued_at (queued), started_at
        (running, only the first time) or finished_at (done, skipped, failed,
        export_failed) unless the caller passes that column. A move the lifecycle does not
        allow from the job's current status raises TransitionRefused (nothing changes)."""
        clean = _clean_fields({**fields, "status": status})
        return self._update(job_id, clean, status=status)

    def _update(self, job_id: int, fields: dict[str, Any], *, status: str | None) -> JobView:
        with self._write_session.begin() as session:
            # Row lock on PostgreSQL: a concurrent timings merge must not be lost.
            job = session.get(Job, job_id, with_for_update=True)
            if job is None:
                raise KeyError(f"no job with id {job_id}")
            if status is not None:
                check_move(job.status, status)  # under the row lock: a compare-and-set
            now = utcnow()
            stamp = _stamp(status) if status is not None else None
            if stamp is not None:
                column, only_if_unset = stamp
                if column not in fields and not (only_if_unset and getattr(job, column) is not None):
                    setattr(job, column, now)
            for name, value in fields.items():
                if name == "timings":
                    value = {**job.timings, **value}  # a new dict, so the change is seen
                setattr(job, name, value)
            job.updated_at = now
            session.flush()
            return _job_view(job, job.series)

    def claim_job(
        self, job_id: int, from_statuses: str | Sequence[str] = ("queued",), to_status: str = "running"
    ) -> JobView | None:
        """Atomically move the job from one of `from_statuses` to `to_status` and count
        the attempt. None when the job is not in one of `from_statuses` (or does not
        exist): another worker has it, or it is finished."""
        allowed = _check_statuses(from_statuses)
        check = [s for s in allowed if not may_move(s, to_status)]
        if check:
            raise ValueError(f"a job cannot move from {', '.join(check)} to {to_status}")
        now = utcnow()
        values: dict[str, Any] = {"status": to_status, "attempts": Job.attempts + 1, "updated_at": now}
        stamp = _stamp(to_status)
        if stamp is not None:
            column, only_if_unset = stamp
            now_sql = sa.literal(now, UTCDateTime())
            values[column] = sa.func.coalesce(getattr(Job, column), now_sql) if only_if_unset else now
        stmt = (
            sa.update(Job)
            .where(Job.id == job_id, Job.status.in_(allowed))
            .values(values)
            .execution_options(synchronize_session=False)
        )
        with self._write_session.begin() as session:
            if session.execute(stmt).rowcount != 1:
                return None
            return self._one_job(session, Job.id == job_id)

    # -- queries --------------------------------------------------------------------

    @staticmethod
    def _jobs_select() -> sa.Select[Any]:
        return sa.select(Job, Series).join(Series, Job.series_id == Series.id)

    def _one_job(self, session: Session, *where: sa.ColumnElement[bool]) -> JobView | None:
        row = session.execute(self._jobs_select().where(*where)).one_or_none()
        return None if row is None else _job_view(*row)

    def get_job(self, job_id: int) -> JobView | None:
        with self._session.begin() as session:
            return self._one_job(session, Job.id == job_id)

    def list_jobs(
        self,
        *,
        status: str | None = None,
        since: datetime | None = None,
        series_instance_uid: str | None = None,
        search: str | None = None,
        limit: int = 100,
    ) -> list[JobView]:
        """Newest first (by created_at). `since`: created_at >= since. `search`: jobs
        whose accession number equals the text, or whose series or study instance UID
        equals it or starts with it (surrounding blanks ignored; empty means no filter)."""
        stmt = self._jobs_select()
        text = (search or "").strip()
        if text:
            stmt = stmt.where(
                sa.or_(
                    Series.accession_number == text,
                    # autoescape: % and _ in the text are literal characters, not wildcards
                    Series.series_instance_uid.startswith(text, autoescape=True),
                    Series.study_instance_uid.startswith(text, autoescape=True),
                )
            )
        if status is not None:
            stmt = stmt.where(Job.status == _check_status(status))
        if since is not None:
            stmt = stmt.where(Job.created_at >= _aware("since", since))
        if series_instance_uid is not None:
            stmt = stmt.where(Series.series_instance_uid == series_instance_uid)
        stmt = stmt.order_by(Job.created_at.desc(), Job.id.desc()).limit(limit)
        with self._session.begin() as session:
            return [_job_view(*row) for row in session.execute(stmt)]

    def latest_job(self, series_instance_uid: str) -> JobView | None:
        """The series' job with the highest version."""
        stmt = (
            self._jobs_select()
            .where(Series.series_instance_uid == series_instance_uid)
            .order_by(Job.version.desc())
            .limit(1)
        )
        with self._session.begin() as session:
            row = session.execute(stmt).one_or_none()
            return None if row is None else _job_view(*row)

    def jobs_to_clean(self, delivered_before: datetime, failed_before: datetime, limit: int = 200) -> list[JobView]:
        """Finished jobs not cleaned yet whose input and results may go: delivered (`done`)
        before `delivered_before`, or `failed` / `skipped` before `failed_before`. Never a job
        whose results were not delivered (`export_failed`) or one not finished. Oldest first."""
        due = sa.or_(
            sa.and_(Job.status == Status.DONE, Job.finished_at < _aware("delivered_before", delivered_before)),
            sa.and_(Job.status.in_((Status.FAILED, Status.SKIPPED)),
                    Job.finished_at < _aware("failed_before", failed_before)),
        )
        stmt = self._jobs_select().where(Job.cleaned_at.is_(None), due).order_by(Job.finished_at, Job.id).limit(limit)
        with self._session.begin() as session:
            return [_job_view(*row) for row in session.execute(stmt)]

    def latest_instances(self) -> dict[str, frozenset[str]]:
        """Per series UID, the instances its newest job covers (one query for every series)."""
        newest = sa.select(Job.series_id, sa.func.max(Job.version).label("version")).group_by(Job.series_id).subquery()
        stmt = (sa.select(Series.series_instance_uid, Job.instance_uids)
                .join(Job, Job.series_id == Series.id)
                .join(newest, sa.and_(newest.c.series_id == Job.series_id, newest.c.version == Job.version)))
        with self._session.begin() as session:
            return {uid: frozenset(uids) for uid, uids in session.execute(stmt)}

    def jobs_in_status(
        self, statuses: str | Sequence[str], older_than: datetime | None = None
    ) -> list[JobView]:
        """Jobs in any of `statuses`, least recently updated first; with `older_than`
        only those with updated_at < older_than (stuck jobs)."""
        wanted = _check_statuses(statuses)
        stmt = self._jobs_select().where(Job.status.in_(wanted))
        if older_than is not None:
            stmt = stmt.where(Job.updated_at < _aware("older_than", older_than))
        stmt = stmt.order_by(Job.updated_at, Job.id)
        with self._session.begin() as session:
            return [_job_view(*row) for row in session.execute(stmt)]

    def count_by_status(self) -> dict[str, int]:
        """Every status in STATUSES, with 0 for those without jobs."""
        stmt = sa.select(Job.status, sa.func.count()).group_by(Job.status)
        counts = dict.fromkeys(STATUSES, 0)
        with self._session.begin() as session:
            for status, count in session.execute(stmt):
                counts[status] = int(count)
        return counts

    def count_exports_by_status(self) -> dict[str, int]:
        """Export attempts over all jobs by outcome, every EXPORT_STATUSES key present."""
        stmt = sa.select(Export.status, sa.func.count()).group_by(Export.status)
        counts = dict.fromkeys(EXPORT_STATUSES, 0)
        with self._session.begin() as session:
            for status, count in session.execute(stmt):
                counts[status] = int(count)
        return counts

    # -- events and exports ---------------------------------------------------------

    def add_event(self, kind: str, message: str, *, job_id: int | None = None, series_id: int | None = None) -> None:
        """Append to the audit trail. `message` must hold UIDs only, never patient
        names or IDs."""
        with self._write_session.begin() as session:
            if job_id is not None and session.get(Job, job_id) is None:
                raise KeyError(f"no job with id {job_id}")
            if series_id is not None and session.get(Series, series_id) is None:
                raise KeyError(f"no series with id {series_id}")
            session.add(Event(at=utcnow(), job_id=job_id, series_id=series_id, kind=kind, message=message))

    def events(self, job_id: int | None = None, *, kind: str | None = None) -> list[EventView]:
        """The job's events (or, with job_id None, the node's own: worker_ready, association_rejected,
        ...), oldest first; `kind` keeps one kind."""
        stmt = sa.select(Event).where(Event.job_id == job_id if job_id is not None else Event.job_id.is_(None))
        if kind is not None:
            stmt = stmt.where(Event.kind == kind)
        stmt = stmt.order_by(Event.at, Event.id)
        with self._session.begin() as session:
            return [_event_view(row) for row in session.scalars(stmt)]

    def add_export(
        self,
        job_id: int,
        *,
        destination: str,
        attempt: int,
        status: str,
        dimse_status: str | None = None,
        error: str | None = None,
        started_at: datetime,
        finished_at: datetime,
        http_status: int | None = None,
        failed_sops: Sequence[Mapping[str, str]] | None = None,
    ) -> None:
        """Record one attempt to send the job's results to `destination` (DIMSE statuses for
        C-STORE; the HTTP status and the refused instances for STOW-RS)."""
        if status not in EXPORT_STATUSES:
            raise ValueError(f"export status must be one of {', '.join(EXPORT_STATUSES)}, not {status!r}")
        _aware("started_at", started_at)
        _aware("finished_at", finished_at)
        with self._write_session.begin() as session:
            if session.get(Job, job_id) is None:
                raise KeyError(f"no job with id {job_id}")
            session.add(
                Export(
                    job_id=job_id,
                    destination=destination,
                    attempt=attempt,
                    status=status,
                    dimse_status=dimse_status,
                    error=error,
                    started_at=started_at,
                    finished_at=finished_at,
                    http_status=http_status,
                    failed_sops=[dict(item) for item in failed_sops] if failed_sops else None,
                )
            )

    def exports(self, job_id: int) -> list[ExportView]:
        """The job's export attempts in order."""
        stmt = sa.select(Export).where(Export.job_id == job_id).order_by(Export.attempt, Export.id)
        with self._session.begin() as session:
            return [_export_view(row) for row in session.scalars(stmt)]
