"""The admin site for tests: a job database seeded with five jobs through JobStore, three
users (one per role) with passwords and API tokens, the app served by uvicorn on a free
loopback port, and signing in with headless Chromium (the Debian package, through
Playwright; no downloaded browser). tests/worker/conftest.py makes fixtures of it."""

from __future__ import annotations

import os
import shutil
import socket
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import cv2
import httpx
import numpy as np
import pytest
import uvicorn
from fastapi import FastAPI
from playwright.sync_api import Page

from db import JobStore, JobView
from db.access import AccessStore
from worker.admin import users

ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"
UID = "1.2.826.0.1.3680043.8.498"  # test UIDs: <UID>.<n>.1 series in study <UID>.<n>
OVERLAY_SIZE = (96, 128)  # rows, cols of the overlay written for the done job
DONE_TIMINGS = {"quiet_period_s": 2.0, "queue_wait_s": 0.05, "load_s": 0.412, "model_load_s": 3.2,
                "inference_s": 1.234, "measurement_s": 0.087, "build_s": 0.5, "export_s": 0.9}
DONE_FLAGS = ["possible_transitional_vertebra:L5", "neighbour_slices_disagree"]
# One user per role; the passwords are the tests' own, made up here.
USERS = {"vera": ("viewer", "vera-views-jobs-1"), "otto": ("operator", "otto-retries-jobs-2"),
         "ada": ("admin", "ada-manages-users-3"), "sid": ("sender", "sid-sends-studies-9")}
SETUP = users.Actor("cli:test-setup", "cli")


@dataclass
class Admin:
    """A seeded job database and the admin app serving it."""

    backend: str
    base: str
    app: FastAPI
    store: JobStore
    ids: dict[str, int]  # done, skipped, export_failed, failed, queued
    overlay: Path  # the done job's overlay.png
    secret: Path  # what the failed job's overlay.png links to

    tokens: dict[str, str] = field(default_factory=dict)  # user name -> API token
    access: AccessStore | None = None

    def get(self, route: str, as_user: str = "vera", **params: object) -> httpx.Response:
        """GET with the user's API token (the viewer by default: the least that may read)."""
        return httpx.get(self.base + route, params=params, timeout=30, headers=self.auth(as_user))

    def auth(self, as_user: str | None) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.tokens[as_user]}"} if as_user else {}


# -- the database ---------------------------------------------------------------------


def _claimed(store: JobStore, job: JobView) -> JobView:
    """A new job queued and taken by a worker, as the node moves it (db/lifecycle.py)."""
    store.set_status(job.id, "queued")
    return store.claim_job(job.id)


def _series(store: JobStore, n: int, accession: str, description: str, ae: str = "ORTHANC") -> int:
    now = datetime.now(UTC)
    return store.series_received(
        study_instance_uid=f"{UID}.{n}", series_instance_uid=f"{UID}.{n}.1", modality="MR",
        series_description=description, body_part_examined="LSPINE", accession_number=accession,
        calling_ae=ae, instance_count=15, first_received_at=now - timedelta(seconds=5), last_received_at=now)


def _instances(n: int) -> list[str]:
    return [f"{UID}.{n}.1.{i}" for i in range(1, 16)]


def seed(store: JobStore, root: Path) -> tuple[dict[str, int], Path, Path]:
    """Five jobs, oldest first: done, skipped, export_failed, failed, queued."""
    ids: dict[str, int] = {}
    now = datetime.now(UTC)
    destination = "ORTHANC@127.0.0.1:4242"

    # done: measured, exported, with an overlay picture (and a SEG next to it)
    job = _claimed(store, store.create_job(_series(store, 1, "ACC-1001", "T2 SAG LSPINE"), _instances(1),
                                           destination=destination))
    folder = root / f"job-{job.id}"
    folder.mkdir(parents=True)
    picture = np.full((*OVERLAY_SIZE, 3), 40, np.uint8)
    cv2.line(picture, (10, 20), (110, 70), (0, 255, 255), 2)
    overlay = folder / "overlay.png"
    assert cv2.imwrite(str(overlay), picture)
    (folder / "seg.dcm").write_bytes(b"SEG-BYTES-NOT-FOR-THE-BROWSER")
    store.set_status(job.id, "exporting", lla_deg=47.3, lla_spread_deg=2.4, lla_class="normal", cnn_class="normal",
                     flags=DONE_FLAGS,
                     timings=DONE_TIMINGS, results_dir=str(folder), model_name="unet_4class",
                     model_version="1.0.0", model_sha256="ab" * 32, seg_sop_instance_uid=f"{UID}.1.501.1",
                     sr_sop_instance_uid=f"{UID}.1.502.1", key_sop_instance_uid=f"{UID}.1.503.1")
    store.set_status(job.id, "done")
    store.add_export(job.id, destination=destination, attempt=1, status="sent", dimse_status="0x0000 0x0000 0x0000",
                     started_at=now, finished_at=now + timedelta(seconds=1))
    store.add_event("queued", f"series {UID}.1.1 complete: 15 instances", job_id=job.id)
    store.add_event("exported", f"SEG, SR and key image sent to {destination}", job_id=job.id)
    ids["done"] = job.id

    # skipped: an axial series
    job = store.create_job(_series(store, 2, "ACC-1002", "T2 TRA"), _instances(2), status="skipped",
                           reason="not_sagittal:axial")
    ids["skipped"] = job.id

    # export_failed: measured, but the PACS refused twice; no overlay file
    job = _claimed(store, store.create_job(_series(store, 3, "ACC-1003", "T1 SAG LSPINE", ae="PACS2"), _instances(3),
                                           destination="PACS@10.0.0.9:104"))
    folder = root / f"job-{job.id}"
    folder.mkdir()
    store.set_status(job.id, "exporting", lla_deg=58.1, lla_class="hyperlordosis", cnn_class="hyperlordosis",
                     timings={"inference_s": 9.0, "load_s": 0.3}, results_dir=str(folder))
    for attempt in (1, 2):
        store.add_export(job.id, destination="PACS@10.0.0.9:104", attempt=attempt, status="failed",
                         error="association rejected by PACS@10.0.0.9:104", started_at=now, finished_at=now)
    store.set_status(job.id, "export_failed", error="export failed after 2 attempts")
    ids["export_failed"] = job.id

    # failed: an error, and an overlay.png that is a link to a file elsewhere
    job = _claimed(store, store.create_job(_series(store, 4, "ACC-1004", "T2 SAG LSPINE"), _instances(4)))
    folder = root / f"job-{job.id}"
    folder.mkdir()
    secret = root.parent / "secret.png"
    assert cv2.imwrite(str(secret), picture)
    (folder / "overlay.png").symlink_to(secret)
    store.set_status(job.id, "failed", error="RuntimeError: CUDA out of memory", results_dir=str(folder))
    ids["failed"] = job.id

    # queued: waiting for a worker
    ids["queued"] = store.set_status(store.create_job(_series(store, 5, "ACC-1005", "T2 SAG LSPINE"),
                                                      _instances(5)).id, "queued").id
    return ids, overlay, secret


# -- the server -----------------------------------------------------------------------


def serve(app: FastAPI) -> tuple[uvicorn.Server, threading.Thread, str]:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:  # polling for the server to come up
        if not thread.is_alive() or time.monotonic() > deadline:
            pytest.fail("the admin server did not start")
        time.sleep(0.02)
    return server, thread, f"http://127.0.0.1:{sock.getsockname()[1]}"


def open_site(backend: str, tmp: Path, url: str, **settings: object) -> tuple[Admin, uvicorn.Server, threading.Thread]:
    """A seeded database at `url` and the admin app serving it; stop with `close_site`."""
    from worker.admin import create_app
    from worker.settings import Settings

    store = JobStore(url, create=True)
    access = AccessStore(store)
    ids, overlay, secret = seed(store, tmp / "var" / "results")
    tokens = seed_users(access)
    app = create_app(Settings(data_dir=tmp / "var", database_url=url, **settings))
    server, thread, base = serve(app)
    return Admin(backend, base, app, store, ids, overlay, secret, tokens, access), server, thread


def close_site(admin: Admin, server: uvicorn.Server, thread: threading.Thread) -> None:
    server.should_exit = True
    thread.join(timeout=15)
    admin.store.dispose()


def seed_users(access: AccessStore) -> dict[str, str]:
    """The three users of USERS, each with an API token; returns name -> token."""
    tokens = {}
    for name, (role, password) in USERS.items():
        users.add(access, name, role, password, SETUP)
        tokens[name] = users.issue_token(access, name, "tests", 1, SETUP)
    return tokens


def chromium() -> str:
    """The system Chromium (Debian package `chromium`); LUMBARNODE_TEST_CHROMIUM overrides."""
    candidates = [os.environ.get("LUMBARNODE_TEST_CHROMIUM"), "/usr/bin/chromium", shutil.which("chromium")]
    for path in candidates:
        if path and Path(path).is_file():
            return path
    pytest.fail("chromium is not installed: run `make test`, which installs the Debian package chromium")


def sign_in(page: Page, base: str, username: str, password: str | None = None, then: str = "/") -> None:
    """Through the login form, as a person does."""
    page.goto(f"{base}{then}")
    assert "/login" in page.url
    page.get_by_label("User name").fill(username)
    page.get_by_label("Password").fill(password or USERS[username][1])
    with page.expect_navigation():
        page.get_by_role("button", name="Sign in").click()


def screenshot(page: Page, name: str, backend: str = "sqlite") -> Path:
    ARTIFACTS.mkdir(exist_ok=True)
    suffix = "" if backend == "sqlite" else f"-{backend}"
    path = ARTIFACTS / f"{name}{suffix}.png"
    path.unlink(missing_ok=True)
    page.screenshot(path=str(path), full_page=True)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    return path
