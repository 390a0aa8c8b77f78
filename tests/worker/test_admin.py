"""`lumbarnode admin` (worker/admin/) for real: a job database filled through JobStore
(an SQLite file, and a fresh schema of the PostgreSQL that `make test` starts), the app
served by uvicorn on a free loopback port (tests/helpers/admin_site.py), the pages driven by
headless Chromium (the Debian package, through Playwright; no downloaded browser) signed in
as a viewer, the JSON API and /metrics read over plain HTTP with a viewer's API token.
Screenshots go to test-artifacts/admin-list.png and admin-job.png (the PostgreSQL run adds
"-postgresql" to the names). Who may do what: test_admin_access.py."""

from __future__ import annotations

import http.client
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
import uvicorn
from playwright.sync_api import Page
from prometheus_client.parser import text_string_to_metric_families

from db import STATUSES, JobStore
from dicom_io.codes import flag_meaning
from tests.helpers.admin_site import DONE_FLAGS, DONE_TIMINGS, OVERLAY_SIZE, UID, Admin, screenshot
from tests.helpers.tools import free_port
from worker import admin as admin_module
from worker import cli
from worker.admin import quantile, run_admin
from worker.settings import Settings


def _row_ids(page: Page) -> list[int]:
    return [int(text) for text in page.locator("#jobs tbody tr td:first-child").all_inner_texts()]


def _submit(page: Page) -> None:
    with page.expect_navigation():
        page.get_by_role("button", name="Filter").click()


# -- what a person sees ---------------------------------------------------------------


def test_the_list_shows_every_job_newest_first_with_status_and_lla(admin: Admin, page: Page) -> None:
    page.goto(admin.base + "/")
    assert page.get_by_role("heading", level=1).inner_text() == "Jobs"
    ids = admin.ids
    assert _row_ids(page) == [ids["queued"], ids["failed"], ids["export_failed"], ids["skipped"], ids["done"]]

    done = page.locator(f"#job-{ids['done']}")
    assert "47.3° (spread 2.4°) normal" in done.locator("td.lla").inner_text()
    assert done.locator(".status").inner_text() == "done"
    assert "T2 SAG LSPINE" in done.inner_text() and "ORTHANC" in done.inner_text()
    assert "not_sagittal:axial" in page.locator(f"#job-{ids['skipped']}").inner_text()
    assert "RuntimeError: CUDA out of memory" in page.locator(f"#job-{ids['failed']}").inner_text()
    assert "58.1° hyperlordosis" in page.locator(f"#job-{ids['export_failed']}").inner_text()
    statuses = page.locator("#jobs tbody .status").all_inner_texts()
    assert statuses == ["queued", "failed", "export_failed", "skipped", "done"]

    # each status looks different, not only reads different
    colours = page.locator("#jobs tbody .status").evaluate_all(
        "els => els.map(e => getComputedStyle(e).backgroundColor)")
    assert len(set(colours)) == 5, colours

    # counts at the top
    for status in STATUSES:
        expected = 1 if status in ids else 0
        assert page.locator(f'#counts a[data-status="{status}"] strong').inner_text() == str(expected)
    assert page.locator("#counts a").first.inner_text().split() == ["all", "5"]
    disk = page.locator("#disk").inner_text()
    assert "MiB" in disk and "deleted 7.0 days after delivery" in disk and "never while undelivered" in disk
    screenshot(page, "admin-list", admin.backend)


def test_filtering_by_status_shows_only_those_jobs(admin: Admin, page: Page) -> None:
    page.goto(admin.base + "/")
    page.get_by_label("Status").select_option("skipped")
    _submit(page)
    assert "status=skipped" in page.url
    assert _row_ids(page) == [admin.ids["skipped"]]
    assert "not_sagittal:axial" in page.locator("#jobs").inner_text()
    assert page.get_by_label("Status").input_value() == "skipped"  # the form keeps the filter

    # the counts link to the same filter
    page.locator('#counts a[data-status="export_failed"]').click()
    page.wait_for_url("**status=export_failed")
    assert _row_ids(page) == [admin.ids["export_failed"]]


def test_searching_by_accession_number_or_uid_finds_the_job(admin: Admin, page: Page) -> None:
    page.goto(admin.base + "/")
    page.get_by_label("Series / study UID or accession number").fill("ACC-1003")
    _submit(page)
    assert _row_ids(page) == [admin.ids["export_failed"]]
    assert page.get_by_label("Series / study UID or accession number").input_value() == "ACC-1003"

    page.get_by_label("Series / study UID or accession number").fill(f"{UID}.2.1")  # a series UID
    _submit(page)
    assert _row_ids(page) == [admin.ids["skipped"]]

    page.get_by_label("Series / study UID or accession number").fill("ACC-9999")
    _submit(page)
    assert page.locator("#jobs").count() == 0
    assert page.locator("#no-jobs").inner_text() == "No jobs match."

    # search, status and age together
    page.get_by_label("Series / study UID or accession number").fill("ACC-1001")
    page.get_by_label("Status").select_option("done")
    page.get_by_label("Created").select_option("24h")
    _submit(page)
    assert _row_ids(page) == [admin.ids["done"]]


def test_the_job_page_shows_timings_flags_exports_events_and_the_overlay(admin: Admin, page: Page) -> None:
    job_id = admin.ids["done"]
    page.goto(admin.base + "/")
    with page.expect_navigation():
        page.locator(f"#job-{job_id} a").click()
    assert page.url == f"{admin.base}/jobs/{job_id}"
    assert page.get_by_role("heading", level=1).inner_text().split() == ["Job", str(job_id), "done"]
    assert page.locator("#lla").inner_text() == "47.3°"
    assert page.locator("#lla-spread").inner_text() == "2.4°"  # the ensemble's range (issue 20)
    assert page.locator("#lla-class").inner_text() == "normal"
    assert page.locator("#cnn-class").inner_text() == "normal"
    # each flag with its meaning, the SR's sentence
    assert page.locator("#flags li").all_inner_texts() == [f"{flag}: {flag_meaning(flag)}" for flag in DONE_FLAGS]
    assert page.locator("#flags li").first.inner_text() == ("possible_transitional_vertebra:L5: "
                                                            "Possible transitional vertebra: L5")
    assert page.locator("#accession").inner_text() == "ACC-1001"
    text = page.locator("main").inner_text()
    for shown in (f"{UID}.1.1", f"{UID}.1", "unet_4class", "ab" * 32, f"{UID}.1.501.1", f"{UID}.1.503.1",
                  "ORTHANC@127.0.0.1:4242"):
        assert shown in text

    rows = [r.split("\t") for r in page.locator("#timings tbody tr").all_inner_texts()]
    assert rows == [["quiet period", "2.000"], ["queue wait", "0.050"], ["load", "0.412"], ["model load", "3.200"],
                    ["inference", "1.234"], ["measurement", "0.087"], ["build", "0.500"], ["export", "0.900"]]

    exports = page.locator("#exports tbody tr").all_inner_texts()
    assert len(exports) == 1 and "sent" in exports[0] and "0x0000 0x0000 0x0000" in exports[0]
    events = page.locator("#events tbody tr").all_inner_texts()
    assert [e.split("\t")[1] for e in events] == ["queued", "exported"]
    assert f"series {UID}.1.1 complete: 15 instances" in events[0]

    image = page.locator("img#overlay")
    image.scroll_into_view_if_needed()
    size = image.evaluate("img => img.complete && [img.naturalWidth, img.naturalHeight]")
    assert size == [OVERLAY_SIZE[1], OVERLAY_SIZE[0]]
    screenshot(page, "admin-job", admin.backend)


def test_a_failed_export_shows_every_attempt_and_no_overlay(admin: Admin, page: Page) -> None:
    page.goto(f"{admin.base}/jobs/{admin.ids['export_failed']}")
    assert page.locator("#status").inner_text() == "export_failed"
    assert page.locator("#error").inner_text() == "export failed after 2 attempts"
    rows = [r.split("\t") for r in page.locator("#exports tbody tr").all_inner_texts()]
    assert [r[0] for r in rows] == ["1", "2"]
    assert all("failed" in r and "association rejected by PACS@10.0.0.9:104" in r for r in rows)
    assert page.locator("img#overlay").count() == 0
    assert page.locator("#no-overlay").is_visible()


def test_a_failed_job_shows_its_error_and_never_a_linked_overlay(admin: Admin, page: Page) -> None:
    page.goto(f"{admin.base}/jobs/{admin.ids['failed']}")
    assert page.locator("#error").inner_text() == "RuntimeError: CUDA out of memory"
    assert page.locator("img#overlay").count() == 0


def test_an_unknown_job_is_a_404_page(admin: Admin, page: Page) -> None:
    response = page.goto(f"{admin.base}/jobs/999999")
    assert response is not None and response.status == 404
    assert page.locator("#message").inner_text() == "No job 999999."


# -- JSON API, metrics, the overlay route ---------------------------------------------


def test_api_status_counts_match_the_database(admin: Admin) -> None:
    counts = admin.get("/api/status").json()
    assert counts == admin.store.count_by_status()
    assert counts == {s: (1 if s in admin.ids else 0) for s in STATUSES}


def test_api_jobs_filters(admin: Admin) -> None:
    def ids(**params: object) -> list[int]:
        response = admin.get("/api/jobs", **params)
        assert response.status_code == 200, response.text
        return [job["id"] for job in response.json()["jobs"]]

    every = ids()
    assert every == sorted(admin.ids.values(), reverse=True)
    assert ids(status="skipped") == [admin.ids["skipped"]]
    assert ids(q="ACC-1001") == [admin.ids["done"]]
    assert ids(q=" ACC-1001 ") == [admin.ids["done"]]
    assert ids(q="ACC-100") == []  # accession numbers match exactly
    assert ids(q=f"{UID}.4") == [admin.ids["failed"]]  # the study UID
    assert ids(q=f"{UID}.3.") == [admin.ids["export_failed"]]  # a UID prefix
    assert ids(q=f"{UID}.%") == []  # % is a character, not a wildcard
    assert ids(q="ACC-1001", status="skipped") == []
    assert ids(since="1h") == every
    assert ids(since="2999-01-01") == []
    assert ids(limit=2) == every[:2]
    assert admin.get("/api/jobs", status="bogus").status_code == 400
    assert admin.get("/api/jobs", since="yesterday").status_code == 400
    assert admin.get("/api/jobs", limit=0).status_code == 422


def test_api_job_has_exports_and_events(admin: Admin) -> None:
    job = admin.get(f"/api/jobs/{admin.ids['done']}").json()
    assert job["lla_deg"] == 47.3 and job["lla_class"] == "normal" and job["flags"] == DONE_FLAGS
    assert job["timings"] == DONE_TIMINGS
    assert [e["status"] for e in job["exports"]] == ["sent"]
    assert [e["kind"] for e in job["events"]] == ["queued", "exported"]
    failed = admin.get(f"/api/jobs/{admin.ids['export_failed']}").json()
    assert [e["status"] for e in failed["exports"]] == ["failed", "failed"]
    assert admin.get("/api/jobs/999999").status_code == 404


def _metrics(admin: Admin) -> tuple[str, dict[tuple[str, tuple[tuple[str, str], ...]], float]]:
    response = admin.get("/metrics")
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/plain")
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for family in text_string_to_metric_families(response.text) for s in family.samples}
    return response.text, samples


def test_metrics_are_read_from_the_database_at_scrape_time(admin: Admin) -> None:
    text, samples = _metrics(admin)
    assert 'lumbarnode_jobs{status="done"} 1.0' in text
    assert "lumbarnode_queue_depth 1.0" in text
    for status in STATUSES:
        assert samples[("lumbarnode_jobs", (("status", status),))] == (1 if status in admin.ids else 0)
    assert samples[("lumbarnode_export_failures_total", ())] == 2
    assert samples[("lumbarnode_export_attempts_total", (("status", "sent"),))] == 1
    # stage quantiles come from done jobs only (the export_failed job's 9 s inference is not one)
    for q in ("0.5", "0.95"):
        assert samples[("lumbarnode_stage_seconds", (("quantile", q), ("stage", "inference")))] == 1.234
        assert samples[("lumbarnode_stage_seconds", (("quantile", q), ("stage", "quiet_period")))] == 2.0
    assert samples[("lumbarnode_stage_samples", (("stage", "inference"),))] == 1
    # disk usage: the results folders the seed wrote (the overlay link counted as a link, not its target)
    results = Path(admin.app.state.settings.results_dir)
    written = sum(os.lstat(os.path.join(root, f)).st_size for root, _, files in os.walk(results) for f in files)
    assert samples[("lumbarnode_disk_bytes", (("area", "results"),))] == written > 0
    assert {labels[0][1] for name, labels in samples if name == "lumbarnode_disk_bytes"} == {
        "spool", "results", "free", "total"}

    # a job leaving the queue is seen by the next scrape
    queued = admin.ids["queued"]
    admin.store.claim_job(queued)
    try:
        _, samples = _metrics(admin)
        assert samples[("lumbarnode_queue_depth", ())] == 0
        assert samples[("lumbarnode_jobs", (("status", "running"),))] == 1
    finally:
        admin.store.set_status(queued, "queued")  # the sweep's move: its worker presumed lost


def test_quantiles_interpolate_between_ranks() -> None:
    assert quantile([4.0, 1.0, 3.0, 2.0], 0.5) == 2.5
    assert quantile([1.0, 2.0, 3.0, 4.0, 5.0], 0.95) == pytest.approx(4.8)
    assert quantile([7.0], 0.95) == 7.0


def test_the_overlay_route_serves_only_the_jobs_own_overlay(admin: Admin) -> None:
    done = admin.ids["done"]
    response = admin.get(f"/jobs/{done}/overlay.png")
    assert response.status_code == 200 and response.headers["content-type"] == "image/png"
    assert response.content == admin.overlay.read_bytes()
    assert admin.get(f"/jobs/{done}/overlay.png", path="../seg.dcm").content == admin.overlay.read_bytes()
    assert admin.get(f"/jobs/{admin.ids['export_failed']}/overlay.png").status_code == 404  # no file
    assert admin.get(f"/jobs/{admin.ids['failed']}/overlay.png").status_code == 404  # a link elsewhere
    assert admin.get("/jobs/999999/overlay.png").status_code == 404
    assert admin.get(f"/jobs/{done}/seg.dcm").status_code == 404

    # raw paths, sent as written (httpx would resolve the dot segments first)
    host, port = admin.base.removeprefix("http://").split(":")
    for path in (f"/jobs/{done}/../{done}/seg.dcm", f"/jobs/{done}/%2e%2e/{done}/seg.dcm",
                 f"/jobs/{done}/..%2fseg.dcm", f"/jobs/{done}/overlay.png/../seg.dcm",
                 f"/jobs/{done}%2f..%2f..%2fsecret.png/overlay.png", "/jobs/../../secret.png"):
        conn = http.client.HTTPConnection(host, int(port), timeout=30)
        try:
            conn.request("GET", path, headers=admin.auth("vera"))
            reply = conn.getresponse()
            body = reply.read()
        finally:
            conn.close()
        assert reply.status == 404, path
        assert b"SEG-BYTES" not in body and body != admin.secret.read_bytes()


def test_health_and_the_security_headers(admin: Admin) -> None:
    assert httpx.get(admin.base + "/healthz", timeout=30).text == "ok"  # no login: monitoring
    assert httpx.post(admin.base + "/", headers=admin.auth("ada"), timeout=30).status_code == 405
    assert httpx.delete(f"{admin.base}/api/jobs/{admin.ids['done']}", headers=admin.auth("ada"),
                        timeout=30).status_code == 405
    page = admin.get("/")
    assert "default-src 'none'" in page.headers["content-security-policy"]
    assert "strict-transport-security" not in page.headers  # plain HTTP here (see test_admin_access: HTTPS)


# -- binding --------------------------------------------------------------------------


def test_the_admin_server_binds_loopback_by_default(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    assert Settings().admin_host == "127.0.0.1" and Settings().admin_port == 8080
    configured = Settings.from_env({"LUMBARNODE_ADMIN_HOST": "0.0.0.0", "LUMBARNODE_ADMIN_PORT": "9090"})
    assert (configured.admin_host, configured.admin_port) == ("0.0.0.0", 9090)

    calls: list[dict[str, object]] = []
    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: calls.append(kw))
    settings = Settings(data_dir=tmp_path, database_url=f"sqlite:///{tmp_path / 'lumbarnode.db'}")
    JobStore(settings.database_url, create=True).dispose()  # `admin` shows the node's database, never makes one
    assert run_admin(settings) == 0
    assert run_admin(settings, host="0.0.0.0", port=9000) == 0
    assert run_admin(configured.with_(data_dir=tmp_path, database_url=settings.database_url)) == 0
    assert [(c["host"], c["port"]) for c in calls] == [("127.0.0.1", 8080), ("0.0.0.0", 9000), ("0.0.0.0", 9090)]

    # the command passes --host/--port through, and nothing when they are left out
    seen: list[tuple[str | None, int | None]] = []
    monkeypatch.setattr(admin_module, "run_admin", lambda s, host=None, port=None: seen.append((host, port)) or 0)
    monkeypatch.setenv("LUMBARNODE_DATABASE_URL", settings.database_url)
    assert cli.main(["admin"]) == 0
    assert cli.main(["admin", "--host", "::1", "--port", "8181"]) == 0
    assert seen == [(None, None), ("::1", 8181)]


@pytest.mark.parametrize("host", [None, "0.0.0.0"])
def test_the_command_listens_on_loopback_unless_configured(host: str | None, tmp_path: Path) -> None:
    """`lumbarnode admin` for real: reachable on 127.0.0.1; on 127.0.0.2 (another loopback
    address, so no network is needed) only when bound to every address."""
    url = f"sqlite:///{tmp_path / 'lumbarnode.db'}"
    JobStore(url, create=True).dispose()
    port = free_port()
    env = {**os.environ, "LUMBARNODE_DATA_DIR": str(tmp_path), "LUMBARNODE_DATABASE_URL": url}
    env.pop("LUMBARNODE_ADMIN_HOST", None)
    if host:
        env["LUMBARNODE_ADMIN_HOST"] = host
    repo = Path(__file__).resolve().parents[2]
    proc = subprocess.Popen([sys.executable, "-m", "worker.cli", "admin", "--port", str(port)], cwd=repo, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 60
        while True:  # polling for the server to come up
            if proc.poll() is not None:
                pytest.fail(f"lumbarnode admin exited with {proc.returncode}: {proc.stdout.read()}")
            try:
                if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=5).text == "ok":
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                pytest.fail("lumbarnode admin did not answer on 127.0.0.1")
            time.sleep(0.1)
        try:
            socket.create_connection(("127.0.0.2", port), timeout=5).close()
            reachable = True
        except ConnectionRefusedError:
            reachable = False
        assert reachable == (host == "0.0.0.0")
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
