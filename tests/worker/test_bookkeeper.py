"""The bookkeeper's decisions on a real job database (SQLite): which messages it sends again,
and which job states it leaves alone. The two queues are lists here (what would be sent);
the same paths run against real brokers in test_faults.py (a worker killed mid-job, a
Redis restart)."""

from __future__ import annotations

import time
from datetime import UTC, datetime

import pytest

from db import JobStore
from tests.helpers.tools import wait_until
from worker.bookkeeper import Bookkeeper, NothingToRetry
from worker.settings import Settings


@pytest.fixture
def node(tmp_path):
    settings = Settings(data_dir=tmp_path / "node", job_timeout_s=0.5, export_backoff_s=1.0, export_retries=2)
    store = JobStore(settings.database_url, create=True)
    processed: list[int] = []
    exported: list[int] = []
    yield store, Bookkeeper(store, settings, processed.append, exported.append), processed, exported
    store.dispose()


def new_job(store: JobStore, *path: str):
    now = datetime.now(UTC)
    series_id = store.series_received(study_instance_uid="1.2.3", series_instance_uid=f"1.2.3.{time.monotonic_ns()}",
                                      instance_count=1, first_received_at=now, last_received_at=now)
    job = store.create_job(series_id, ["1.2.3.4.5"], destination="PACS@127.0.0.1:104")
    for status in path:
        job = store.set_status(job.id, status)
    return job


def test_a_long_export_is_never_taken_for_a_lost_worker(node):
    """A PACS down for longer than JOB_TIMEOUT_S: the job is `exporting`, so the sweep does not
    run the method again; only once the export's own retries would have spoken is its message
    sent again, as an export."""
    store, bookkeeper, processed, exported = node
    job = new_job(store, "queued", "running", "exporting")
    wait_until(lambda: (datetime.now(UTC) - job.updated_at).total_seconds() > 0.6, 5, "JOB_TIMEOUT_S to pass")
    assert bookkeeper.export_silence_s == 0.5 + 1.0 * 2**2
    assert bookkeeper.sweep() == 0 and processed == [] and exported == []
    assert store.get_job(job.id).status == "exporting"
    wait_until(lambda: bookkeeper.sweep() == 1, 10, "the export message to be presumed lost")
    assert exported == [job.id] and processed == [] and store.get_job(job.id).status == "exporting"
    assert bookkeeper.sweep() == 0  # sent once: its update time moved on


def test_a_broker_restart_resends_queued_and_exporting_jobs_to_their_own_queues(node):
    store, bookkeeper, processed, exported = node
    queued, exporting = new_job(store, "queued"), new_job(store, "queued", "running", "exporting")
    running, done = new_job(store, "queued", "running"), new_job(store, "queued", "running", "exporting", "done")
    assert bookkeeper.resend_all("the broker restarted") == 2
    assert processed == [queued.id] and exported == [exporting.id]
    assert [store.get_job(j.id).status for j in (queued, exporting, running, done)] == [
        "queued", "exporting", "running", "done"]


def test_a_new_job_whose_message_cannot_be_sent_goes_back_to_received_and_is_sent_by_the_sweep(tmp_path):
    settings = Settings(data_dir=tmp_path / "node")
    store = JobStore(settings.database_url, create=True)
    sent: list[int] = []

    def broker_away(job_id: int) -> None:
        raise ConnectionError("broker away")

    try:
        job = new_job(store)
        assert Bookkeeper(store, settings, broker_away, sent.append).queue(job.id).status == "received"
        bookkeeper = Bookkeeper(store, settings, sent.append, sent.append)
        wait_until(lambda: bookkeeper.sweep() == 1, 10, "the never-sent job to be sent")
        assert sent == [job.id] and store.get_job(job.id).status == "queued"
    finally:
        store.dispose()


def test_an_operators_retry_moves_each_state_where_the_lifecycle_allows(node):
    store, bookkeeper, processed, exported = node
    failed = new_job(store, "queued", "running", "failed")
    assert "queued again" in bookkeeper.retry(failed) and store.get_job(failed.id).status == "queued"
    export_failed = new_job(store, "queued", "running", "exporting", "export_failed")
    assert "export queued again" in bookkeeper.retry(export_failed)
    assert store.get_job(export_failed.id).status == "exporting"
    done = new_job(store, "queued", "running", "exporting", "done")
    bookkeeper.retry(done, export_only=True)
    assert store.get_job(done.id).status == "exporting"
    assert processed == [failed.id] and exported == [export_failed.id, done.id]
    skipped = store.create_job(failed.series_id, ["1.2.3.4.6"], status="skipped", reason="not_mr")
    with pytest.raises(NothingToRetry, match="skipped"):
        bookkeeper.retry(skipped)
    assert store.get_job(skipped.id).status == "skipped"
