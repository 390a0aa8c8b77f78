"""The job database (`db/`) on the two real backends: an SQLite file and the PostgreSQL
that `make test` starts. Each PostgreSQL test runs in a fresh schema of its own (the
search_path of every connection, so Alembic's version table lands there too), dropped
afterwards."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy.orm import Session

from db import STATUSES, JobStore, JobView, redact
from db.lifecycle import CREATED_IN, TRANSITIONS, Status, TransitionRefused
from db.migrate import current_revision, head_revision, upgrade
from db.models import Base, Series
from tests.helpers.tools import POSTGRES_URL, postgres_schema

T0 = datetime(2025, 3, 1, 8, 0, 0, tzinfo=UTC)


@dataclass
class Database:
    url: str
    engine_options: dict[str, Any] = field(default_factory=dict)
    schema: str | None = None  # PostgreSQL only

    def store(self, *, create: bool = True) -> JobStore:
        return JobStore(self.url, create=create, engine_options=self.engine_options)


@pytest.fixture(params=["sqlite", "postgresql"])
def database(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Database]:
    if request.param == "sqlite":
        # A folder that does not exist yet: JobStore must create it.
        yield Database(f"sqlite:///{tmp_path / 'var' / 'lumbarnode.db'}")
        return
    with postgres_schema("lumbarnode_test") as schema:
        yield Database(POSTGRES_URL, {"connect_args": {"options": f"-csearch_path={schema}"}}, schema)


@pytest.fixture
def store(database: Database) -> Iterator[JobStore]:
    s = database.store()
    yield s
    s.dispose()


def add_series(store: JobStore, uid: str = "1.2.3.4.1", *, count: int = 3, at: datetime = T0) -> int:
    return store.series_received(
        study_instance_uid="1.2.3.4",
        series_instance_uid=uid,
        modality="MR",
        series_description="T2 SAG",
        body_part_examined="LSPINE",
        accession_number="ACC1",
        calling_ae="PACS",
        instance_count=count,
        first_received_at=at,
        last_received_at=at,
    )


def walk(store: JobStore, job_id: int, *statuses: str) -> JobView:
    """Move a job along a path of the lifecycle, one allowed move at a time."""
    job = store.get_job(job_id)
    for status in statuses:
        job = store.set_status(job_id, status)
    return job


def uids(n: int, prefix: str = "1.2.3.4.1.") -> list[str]:
    return [f"{prefix}{i}" for i in range(1, n + 1)]


def run_together(workers: list[Callable[[], Any]]) -> list[Any]:
    """Run the callables in threads released at the same instant; re-raise any error."""
    barrier = threading.Barrier(len(workers))
    results: list[Any] = [None] * len(workers)
    errors: list[BaseException] = []

    def run(i: int) -> None:
        try:
            barrier.wait(timeout=30)
            results[i] = workers[i]()
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(workers))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not any(t.is_alive() for t in threads), "a worker thread hung"
    if errors:
        raise errors[0]
    return results


# -- migrations -----------------------------------------------------------------------


def schema_differences(database: Database, metadata: sa.MetaData = Base.metadata) -> list[Any]:
    engine = sa.create_engine(database.url, **database.engine_options)
    try:
        with engine.connect() as conn:
            return compare_metadata(MigrationContext.configure(conn, opts={"compare_type": True}), metadata)
    finally:
        engine.dispose()


def test_upgrade_is_idempotent_and_the_schema_equals_the_models(database: Database) -> None:
    assert current_revision(database.url, engine_options=database.engine_options) is None
    upgrade(database.url, engine_options=database.engine_options)
    assert head_revision() == "0006"
    assert current_revision(database.url, engine_options=database.engine_options) == "0006"
    assert schema_differences(database) == []

    store = database.store(create=False)
    job = store.create_job(add_series(store), uids(2))
    upgrade(database.url, engine_options=database.engine_options)  # again: nothing happens
    store.upgrade()
    assert current_revision(database.url, engine_options=database.engine_options) == "0006"
    assert store.get_job(job.id) == job
    store.dispose()

    # The comparison itself can fail: a model the migrations lack is reported.
    other = sa.MetaData()
    for table in Base.metadata.tables.values():
        table.to_metadata(other)
    sa.Table("jobs", other, sa.Column("priority", sa.Integer), extend_existing=True)
    diffs = schema_differences(database, other)
    assert [d[0] for d in diffs] == ["add_column"] and diffs[0][3].name == "priority"

    if database.schema is not None:  # everything, Alembic's table too, is in the test schema
        engine = sa.create_engine(POSTGRES_URL)
        try:
            names = set(sa.inspect(engine).get_table_names(schema=database.schema))
        finally:
            engine.dispose()
        assert names == {"alembic_version", "series", "jobs", "exports", "events", "users", "credentials", "audit"}


def test_migrate_command_works_from_any_directory(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'cli' / 'lumbarnode.db'}"
    (tmp_path / "cli").mkdir()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    for args in (["upgrade"], ["current"]):
        result = subprocess.run(
            [sys.executable, "-m", "db.migrate", *args, "--url", url],
            cwd=elsewhere, capture_output=True, text=True, timeout=120,
        )
        assert result.returncode == 0, result.stderr
        assert "Warning" not in result.stderr, result.stderr
    assert result.stdout.strip() == "0006"
    assert current_revision(url) == "0006"


def test_sqlite_connections_get_the_pragmas_and_the_folder_is_created(tmp_path: Path) -> None:
    path = tmp_path / "new" / "deeper" / "lumbarnode.db"
    store = JobStore(f"sqlite:///{path}", create=True)
    try:
        assert path.is_file()
        with store.engine.connect() as first, store.engine.connect() as second:  # two pooled connections
            for conn in (first, second):
                pragmas = {p: conn.exec_driver_sql(f"PRAGMA {p}").scalar() for p in
                           ("journal_mode", "busy_timeout", "foreign_keys", "synchronous")}
                assert pragmas == {"journal_mode": "wal", "busy_timeout": 30000, "foreign_keys": 1, "synchronous": 1}
        with pytest.raises(KeyError):  # foreign keys are enforced (checked before the insert, too)
            store.add_event("received", "x", job_id=999)
        with pytest.raises(sa.exc.IntegrityError), store.engine.begin() as conn:
            conn.execute(sa.text("INSERT INTO events (at, job_id, kind, message) VALUES ('2025-01-01', 999, 'k', 'm')"))
    finally:
        store.dispose()


# -- series and jobs ------------------------------------------------------------------


def series_row(store: JobStore, uid: str) -> Series:
    with Session(store.engine) as session:
        rows = session.scalars(sa.select(Series).where(Series.series_instance_uid == uid)).all()
        session.expunge_all()
    assert len(rows) == 1
    return rows[0]


def test_series_upsert_keeps_one_row_and_the_earliest_first_receipt(store: JobStore) -> None:
    first = add_series(store, count=3, at=T0)
    later = T0 + timedelta(minutes=5)
    again = store.series_received(
        study_instance_uid="1.2.3.4", series_instance_uid="1.2.3.4.1", modality="MR",
        series_description="T2 SAG new", instance_count=20, first_received_at=later, last_received_at=later,
    )
    assert again == first
    row = series_row(store, "1.2.3.4.1")
    assert (row.instance_count, row.series_description) == (20, "T2 SAG new")
    assert (row.first_received_at, row.last_received_at) == (T0, later)

    earlier = T0 - timedelta(minutes=1)  # out of order: first moves back, last stays
    add_series(store, count=21, at=earlier)
    row = series_row(store, "1.2.3.4.1")
    assert (row.instance_count, row.first_received_at, row.last_received_at) == (21, earlier, later)

    other = add_series(store, "1.2.3.4.2")
    assert other != first
    with Session(store.engine) as session:
        assert session.scalar(sa.select(sa.func.count()).select_from(Series)) == 2


def test_job_versions_count_up_per_series(store: JobStore) -> None:
    series_id = add_series(store)
    jobs = [store.create_job(series_id, uids(3), destination="PACS@10.0.0.5:104") for _ in range(3)]
    assert [j.version for j in jobs] == [1, 2, 3]
    assert len({j.id for j in jobs}) == 3
    assert store.create_job(add_series(store, "1.2.3.4.2"), uids(1)).version == 1

    latest = store.latest_job("1.2.3.4.1")
    assert latest is not None and latest.id == jobs[2].id and latest.version == 3
    assert store.latest_job("9.9.9") is None

    job = jobs[0]
    assert (job.status, job.attempts, job.instance_count) == ("received", 0, 3)
    assert job.instance_uids == tuple(uids(3))
    assert (job.series_instance_uid, job.modality, job.calling_ae, job.destination) == (
        "1.2.3.4.1", "MR", "PACS", "PACS@10.0.0.5:104")
    assert (job.timings, job.flags, job.queued_at, job.started_at, job.finished_at) == ({}, (), None, None, None)
    assert store.get_job(job.id) == job
    assert store.get_job(10_000) is None
    with pytest.raises(KeyError):
        store.create_job(10_000, uids(1))


def test_status_changes_stamp_their_times(store: JobStore) -> None:
    job = store.create_job(add_series(store), uids(2))
    queued = store.set_status(job.id, "queued")
    assert queued.status == "queued" and queued.queued_at is not None
    assert queued.started_at is None and queued.finished_at is None
    assert queued.updated_at >= job.updated_at and queued.queued_at >= job.created_at

    running = store.set_status(job.id, "running")
    assert running.started_at is not None and running.started_at >= queued.queued_at
    store.set_status(job.id, "queued", error="worker lost")
    rerun = store.set_status(job.id, "running")
    assert rerun.started_at == running.started_at  # the first start is kept

    exporting = store.set_status(job.id, "exporting", lla_deg=47.5, lla_class="normal", reason=None)
    assert exporting.finished_at is None  # measured, not yet delivered
    done = store.set_status(job.id, "done")
    assert done.finished_at is not None and done.finished_at >= rerun.started_at
    assert (done.status, done.lla_deg, done.lla_class, done.error) == ("done", 47.5, "normal", "worker lost")
    assert done.updated_at >= done.finished_at

    explicit = T0 + timedelta(hours=1)
    skipped = walk(store, store.create_job(job.series_id, uids(1)).id, "queued", "running")
    skipped = store.set_status(skipped.id, "skipped", reason="not_sagittal", finished_at=explicit)
    assert (skipped.finished_at, skipped.reason) == (explicit, "not_sagittal")

    created_skipped = store.create_job(job.series_id, uids(1), status="skipped", reason="not_mr")
    assert created_skipped.finished_at == created_skipped.created_at


def test_update_job_merges_timings_and_sets_columns(store: JobStore) -> None:
    job = store.create_job(add_series(store), uids(2))
    store.update_job(job.id, timings={"load": 1.0, "segment": 2.0})
    merged = store.update_job(job.id, timings={"segment": 2.5, "export": 0.5}, flags=["l1_uncertain"])
    assert merged.timings == {"load": 1.0, "segment": 2.5, "export": 0.5}
    assert merged.flags == ("l1_uncertain",)

    updated = store.update_job(
        job.id, results_dir="/var/lib/lumbarnode/results/1", cnn_class="hyper", model_name="unet",
        model_version="1.0", model_sha256="ab" * 32, seg_sop_instance_uid="2.25.1",
        sr_sop_instance_uid="2.25.2", key_sop_instance_uid="2.25.3", instance_uids=uids(5),
    )
    assert store.get_job(job.id) == updated
    assert (updated.results_dir, updated.cnn_class, updated.model_sha256) == (
        "/var/lib/lumbarnode/results/1", "hyper", "ab" * 32)
    assert (updated.seg_sop_instance_uid, updated.sr_sop_instance_uid, updated.key_sop_instance_uid) == (
        "2.25.1", "2.25.2", "2.25.3")
    assert (updated.instance_uids, updated.instance_count) == (tuple(uids(5)), 5)
    assert updated.timings == merged.timings and updated.status == "received"


def test_invalid_updates_are_refused_and_change_nothing(store: JobStore) -> None:
    job = store.create_job(add_series(store), uids(2))
    with pytest.raises(ValueError, match="status"):
        store.set_status(job.id, "finished")
    with pytest.raises(ValueError, match="status"):
        store.update_job(job.id, status="bogus")
    with pytest.raises(ValueError, match="status"):
        store.create_job(job.series_id, uids(1), status="bogus")
    with pytest.raises(ValueError, match="created received or skipped"):
        store.create_job(job.series_id, uids(1), status="done")
    with pytest.raises(TransitionRefused, match="from received to done"):
        store.set_status(job.id, "done", lla_deg=47.0)
    with pytest.raises(ValueError, match="status"):
        store.claim_job(job.id, from_statuses=("received",), to_status="bogus")
    with pytest.raises(ValueError, match="status"):
        store.list_jobs(status="bogus")
    with pytest.raises(ValueError, match="no_such_column"):
        store.update_job(job.id, no_such_column=1)
    with pytest.raises(ValueError, match="version"):
        store.update_job(job.id, version=7)
    with pytest.raises(ValueError, match="timezone"):
        store.update_job(job.id, finished_at=datetime(2025, 1, 1))  # naive
    with pytest.raises(ValueError, match="attempts"):
        store.update_job(job.id, attempts=None)
    with pytest.raises(ValueError, match="export status"):
        store.add_export(job.id, destination="PACS", attempt=1, status="ok", started_at=T0, finished_at=T0)
    with pytest.raises(KeyError):
        store.update_job(10_000, error="x")
    with pytest.raises(KeyError):
        store.set_status(10_000, "done")
    assert store.get_job(job.id) == job
    assert [j.id for j in store.list_jobs()] == [job.id]  # the refused create_job left nothing


def test_claim_job_is_a_compare_and_set(store: JobStore) -> None:
    job = store.create_job(add_series(store), uids(2))
    assert store.claim_job(job.id) is None  # "received" is not claimable by default
    store.set_status(job.id, "queued")
    claimed = store.claim_job(job.id)
    assert claimed is not None
    assert (claimed.status, claimed.attempts) == ("running", 1) and claimed.started_at is not None
    assert store.claim_job(job.id) is None  # the second claim loses
    assert store.get_job(job.id) == claimed  # and changed nothing
    assert store.claim_job(10_000) is None

    # A worker resuming its own claim (the job database was away): a second from-status.
    again = store.claim_job(job.id, from_statuses=("queued", "running"), to_status="running")
    assert again is not None and again.attempts == 2 and again.started_at == claimed.started_at
    # A claim the lifecycle does not allow is refused before it runs.
    with pytest.raises(ValueError, match="cannot move from done"):
        store.claim_job(job.id, from_statuses=("done",), to_status="running")


def test_concurrent_claims_have_exactly_one_winner(database: Database, store: JobStore) -> None:
    series_id = add_series(store)
    jobs = [store.set_status(store.create_job(series_id, uids(1)).id, "queued") for _ in range(8)]
    others = [database.store(create=False) for _ in range(2)]  # separate engines, like two workers
    try:
        for job in jobs:
            results = run_together([lambda s=s, j=job.id: s.claim_job(j) for s in others])
            assert sum(r is not None for r in results) == 1
            assert store.get_job(job.id).attempts == 1  # type: ignore[union-attr]
    finally:
        for s in others:
            s.dispose()


def test_concurrent_job_creation_gets_distinct_versions(database: Database, store: JobStore) -> None:
    series_id = add_series(store)
    others = [database.store(create=False) for _ in range(2)]
    per_thread = 10
    try:
        results = run_together([
            lambda s=s: [s.create_job(series_id, uids(1)).version for _ in range(per_thread)] for s in others
        ])
    finally:
        for s in others:
            s.dispose()
    versions = [v for r in results for v in r]
    assert sorted(versions) == list(range(1, 2 * per_thread + 1))
    assert store.latest_job("1.2.3.4.1").version == 2 * per_thread  # type: ignore[union-attr]


def test_list_jobs_filters_and_orders_newest_first(store: JobStore) -> None:
    a, b = add_series(store, "1.2.3.4.1"), add_series(store, "1.2.3.4.2")
    j1 = store.create_job(a, uids(1))
    j2 = store.create_job(b, uids(1))
    j3 = store.create_job(a, uids(1))
    j4 = store.create_job(b, uids(1))
    store.set_status(j2.id, "queued")
    store.set_status(j4.id, "queued")

    assert [j.id for j in store.list_jobs()] == [j4.id, j3.id, j2.id, j1.id]
    assert [j.id for j in store.list_jobs(limit=2)] == [j4.id, j3.id]
    assert [j.id for j in store.list_jobs(status="queued")] == [j4.id, j2.id]
    assert [j.id for j in store.list_jobs(series_instance_uid="1.2.3.4.1")] == [j3.id, j1.id]
    assert [j.id for j in store.list_jobs(since=j3.created_at)] == [j4.id, j3.id]
    assert [j.id for j in store.list_jobs(status="queued", since=j3.created_at, series_instance_uid="1.2.3.4.2")] == [j4.id]
    assert store.list_jobs(since=j4.created_at + timedelta(seconds=1)) == []
    # The same instant in another zone filters the same way.
    assert [j.id for j in store.list_jobs(since=j3.created_at.astimezone(timezone(timedelta(hours=-5))))] == [j4.id, j3.id]


def test_jobs_in_status_finds_stuck_jobs(store: JobStore) -> None:
    series_id = add_series(store)
    running = walk(store, store.create_job(series_id, uids(1)).id, "queued", "running")
    queued = store.set_status(store.create_job(series_id, uids(1)).id, "queued")
    walk(store, store.create_job(series_id, uids(1)).id, "queued", "running", "exporting", "done")

    assert [j.id for j in store.jobs_in_status(("running", "queued"))] == [running.id, queued.id]
    assert [j.id for j in store.jobs_in_status("running")] == [running.id]
    assert store.jobs_in_status(("running", "queued"), older_than=running.updated_at) == []
    assert [j.id for j in store.jobs_in_status(("running", "queued"), older_than=queued.updated_at)] == [running.id]
    with pytest.raises(ValueError):
        store.jobs_in_status(("stuck",))


def test_count_by_status(store: JobStore) -> None:
    assert store.count_by_status() == dict.fromkeys(STATUSES, 0)
    series_id = add_series(store)
    for path in (("queued",), ("queued",), ("queued", "running", "exporting", "done"), ("queued", "running", "failed")):
        walk(store, store.create_job(series_id, uids(1)).id, *path)
    store.create_job(series_id, uids(1))
    assert store.count_by_status() == {**dict.fromkeys(STATUSES, 0), "received": 1, "queued": 2, "done": 1, "failed": 1}


def test_events_and_exports_round_trip(store: JobStore) -> None:
    series_id = add_series(store)
    job = store.create_job(series_id, uids(2))
    other = store.create_job(series_id, uids(1))
    store.add_event("received", "series 1.2.3.4.1: 2 instances", job_id=job.id, series_id=series_id)
    store.add_event("queued", "job queued", job_id=job.id)
    store.add_event("received", "other job", job_id=other.id)
    store.add_event("listener", "no job at all")
    events = store.events(job.id)
    assert [(e.kind, e.message, e.job_id) for e in events] == [
        ("received", "series 1.2.3.4.1: 2 instances", job.id), ("queued", "job queued", job.id)]
    assert events[0].series_id == series_id and events[1].series_id is None
    assert events[0].at <= events[1].at
    with pytest.raises(KeyError):
        store.add_event("x", "y", series_id=10_000)

    paris = timezone(timedelta(hours=2))
    start = datetime(2025, 3, 1, 10, 0, 0, 123456, tzinfo=paris)
    store.add_export(job.id, destination="PACS@10.0.0.5:104", attempt=1, status="failed",
                     error="association rejected", started_at=start, finished_at=start + timedelta(seconds=3))
    store.add_export(job.id, destination="PACS@10.0.0.5:104", attempt=2, status="sent",
                     dimse_status="0x0000 0x0000 0x0000", started_at=start + timedelta(minutes=1),
                     finished_at=start + timedelta(minutes=1, seconds=2))
    exports = store.exports(job.id)
    assert [(x.attempt, x.status, x.dimse_status, x.error) for x in exports] == [
        (1, "failed", None, "association rejected"), (2, "sent", "0x0000 0x0000 0x0000", None)]
    assert exports[0].started_at == start and exports[0].started_at.utcoffset() == timedelta(0)
    assert exports[0].started_at.hour == 8  # 10:00+02:00 is 08:00 UTC
    assert store.exports(other.id) == []
    with pytest.raises(KeyError):
        store.add_export(10_000, destination="PACS", attempt=1, status="sent", started_at=T0, finished_at=T0)

    for view in (exports[0], events[0], store.get_job(job.id)):
        as_json = json.loads(json.dumps(view.as_dict()))
        assert as_json["id"] == view.id
    exported = exports[0].as_dict()
    assert exported["started_at"] == "2025-03-01T08:00:00.123456+00:00"
    job_dict = store.update_job(job.id, flags=["a"], timings={"load": 1.5}).as_dict()
    assert job_dict["flags"] == ["a"] and job_dict["instance_uids"] == uids(2) and job_dict["timings"] == {"load": 1.5}
    assert datetime.fromisoformat(job_dict["created_at"]) == job.created_at and job_dict["queued_at"] is None


def test_datetimes_come_back_timezone_aware_utc(store: JobStore) -> None:
    series_id = add_series(store)
    job = store.set_status(store.create_job(series_id, uids(1)).id, "queued")
    store.claim_job(job.id)
    store.set_status(job.id, "exporting")
    done = store.set_status(job.id, "done")
    store.add_event("done", "finished", job_id=job.id)
    fresh = store.get_job(job.id)  # read back from the database, not the session's objects
    assert isinstance(fresh, JobView)
    stamps = [fresh.created_at, fresh.updated_at, fresh.queued_at, fresh.started_at, fresh.finished_at,
              store.events(job.id)[0].at, series_row(store, "1.2.3.4.1").first_received_at]
    for stamp in stamps:
        assert stamp is not None and stamp.tzinfo is not None and stamp.utcoffset() == timedelta(0)
    assert fresh == done
    assert abs(fresh.created_at - datetime.now(UTC)) < timedelta(minutes=5)  # UTC, not local time read as UTC


# -- URLs -----------------------------------------------------------------------------


@pytest.mark.parametrize(("url", "expected"), [
    ("postgresql+psycopg://user:s3cret@db.local:5432/lumbarnode", "postgresql+psycopg://user:***@db.local:5432/lumbarnode"),
    ("redis://:s3cret@127.0.0.1:6379/0", "redis://:***@127.0.0.1:6379/0"),
    ("redis://default:p%40ss@cache:6379/1", "redis://default:***@cache:6379/1"),
    ("amqp://guest:guest@rabbit//", "amqp://guest:***@rabbit//"),
    ("redis://cache:6379/0?password=s3cret&db=1", "redis://cache:6379/0?password=***&db=1"),
    ("postgresql+psycopg://postgres@127.0.0.1:5432/test", "postgresql+psycopg://postgres@127.0.0.1:5432/test"),
    ("sqlite:////var/lib/lumbarnode/lumbarnode.db", "sqlite:////var/lib/lumbarnode/lumbarnode.db"),
])
def test_redact_hides_passwords(url: str, expected: str) -> None:
    assert redact(url) == expected
    assert "s3cret" not in redact(url)


def test_a_database_of_the_first_schema_upgrades_keeping_its_jobs(tmp_path: Path) -> None:
    """0002 adds jobs.lla_spread_deg: a node's database at revision 0001, with jobs, upgrades in
    place, every job kept, the new column empty (the 0001 database is made by migrating down)."""
    from alembic import command

    from db import migrate

    url = f"sqlite:///{tmp_path / 'old.db'}"
    store = JobStore(url, create=True)
    try:
        job = store.create_job(add_series(store), uids(2))
        store.update_job(job.id, lla_deg=47.5, lla_spread_deg=1.0)
    finally:
        store.dispose()
    migrate._run(url, None, command.downgrade, "0001")
    assert current_revision(url) == "0001"
    engine = sa.create_engine(url)
    with engine.connect() as conn:
        assert "lla_spread_deg" not in {c["name"] for c in sa.inspect(conn).get_columns("jobs")}
        assert conn.execute(sa.text("SELECT lla_deg FROM jobs")).scalars().all() == [47.5]
    engine.dispose()
    upgrade(url)
    assert current_revision(url) == head_revision() == "0006"
    store = JobStore(url, create=False)
    try:
        kept = store.get_job(job.id)
        assert kept.lla_deg == 47.5 and kept.lla_spread_deg is None
        assert store.update_job(job.id, lla_spread_deg=3.25).lla_spread_deg == 3.25
    finally:
        store.dispose()


def _job_in(store: JobStore, series_id: int, status: Status) -> JobView:
    """A job brought to `status` by a shortest path of allowed moves."""
    paths = {Status.RECEIVED: (), Status.QUEUED: ("queued",), Status.RUNNING: ("queued", "running"),
             Status.EXPORTING: ("queued", "running", "exporting"),
             Status.DONE: ("queued", "running", "exporting", "done"),
             Status.FAILED: ("queued", "running", "failed"),
             Status.EXPORT_FAILED: ("queued", "running", "exporting", "export_failed")}
    if status is Status.SKIPPED:
        return store.create_job(series_id, uids(1), status="skipped", reason="not_mr")
    return walk(store, store.create_job(series_id, uids(1)).id, *paths[status])


def test_every_move_the_lifecycle_does_not_name_is_refused_and_changes_nothing(store: JobStore) -> None:
    """db/lifecycle.py is the one table of moves: each pair of states is tried on a real job."""
    series_id = add_series(store)
    allowed = refused = 0
    for current in Status:
        for new in Status:
            job = _job_in(store, series_id, current)
            assert job.status == current
            if (current, new) in TRANSITIONS:
                assert store.set_status(job.id, new).status == new
                allowed += 1
            else:
                with pytest.raises(TransitionRefused):
                    store.set_status(job.id, new, error="must not be written")
                assert store.get_job(job.id) == job
                refused += 1
    assert allowed == len(TRANSITIONS) and refused == len(Status) ** 2 - len(TRANSITIONS)
    assert CREATED_IN == {Status.RECEIVED, Status.SKIPPED}
    # a finished job is never taken back by a late message: only an operator's retry or resend moves it
    assert {b for (a, b) in TRANSITIONS if a is Status.DONE} == {Status.QUEUED, Status.EXPORTING}


def test_a_running_job_with_its_results_written_becomes_exporting_on_upgrade(tmp_path: Path) -> None:
    """0003: before it, a job measured and waiting for its export stayed `running`. A database at
    0002 with such a job, and one whose method is still running, upgrades with the first moved."""
    from alembic import command

    from db import migrate

    url = f"sqlite:///{tmp_path / 'old.db'}"
    store = JobStore(url, create=True)
    try:
        series_id = add_series(store)
        waiting = walk(store, store.create_job(series_id, uids(1)).id, "queued", "running")
        store.update_job(waiting.id, sr_sop_instance_uid="2.25.7", results_dir="/results/job-1")
        measuring = walk(store, store.create_job(series_id, uids(1)).id, "queued", "running")
    finally:
        store.dispose()
    migrate._run(url, None, command.downgrade, "0002")
    assert current_revision(url) == "0002"
    upgrade(url)
    store = JobStore(url, create=False)
    try:
        assert store.get_job(waiting.id).status == "exporting"
        assert store.get_job(measuring.id).status == "running"
    finally:
        store.dispose()
