"""Who may see and do what on the admin page and its API (worker/admin/auth.py), for real:
the app served by uvicorn over a seeded database on SQLite and PostgreSQL
(tests/helpers/admin_site.py), HTTP through httpx (API tokens, and sessions made through the
login form), a browser (Debian's Chromium through Playwright) for the sign-in, a retry and
the admin's pages, `lumbarnode admin` itself over HTTPS, and an OpenID Connect sign-in against
tests/helpers/oidc_provider.py (a stand-in: no real identity provider can run here).

Screenshots: test-artifacts/admin-login.png, admin-retry.png, admin-audit.png,
admin-users.png, admin-oidc.png."""

from __future__ import annotations

import os
import re
import sqlite3
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import httpx
import pytest
import sqlalchemy as sa
from fastapi.testclient import TestClient
from playwright.sync_api import Browser, Page, expect

from db import JobStore
from db.access import AccessStore, Role
from db.models import Credential
from db.store import utcnow
from tests.helpers.admin_site import SETUP, USERS, Admin, screenshot, seed_users, serve, sign_in
from tests.helpers.oidc_provider import OidcProvider
from tests.helpers.tools import free_port, require_tool, wait_until
from worker.admin import create_app, users
from worker.admin.auth import ADDRESS_FAILURES, PERMISSIONS, Permission
from worker.settings import Settings

V, R, U, A = Permission.VIEW_JOBS, Permission.RETRY, Permission.MANAGE_USERS, Permission.VIEW_AUDIT
PUBLIC = {("GET", "/login"), ("POST", "/login"), ("GET", "/metrics"), ("GET", "/healthz")}
# Every route of the app and what it needs; a route missing here fails the test.
ROUTES: dict[tuple[str, str], Permission] = {
    ("GET", "/"): V, ("GET", "/jobs/{job_id:int}"): V, ("GET", "/jobs/{job_id:int}/overlay.png"): V,
    ("GET", "/api/jobs"): V, ("GET", "/api/jobs/{job_id:int}"): V, ("GET", "/api/status"): V, ("GET", "/api/me"): V,
    ("POST", "/logout"): V,
    ("POST", "/jobs/{job_id:int}/retry"): R, ("POST", "/jobs/{job_id:int}/resend"): R,
    ("POST", "/api/jobs/{job_id:int}/retry"): R, ("POST", "/api/jobs/{job_id:int}/resend"): R,
    ("GET", "/users"): U, ("POST", "/users/add"): U, ("POST", "/users/role"): U, ("POST", "/users/disable"): U,
    ("POST", "/users/enable"): U, ("POST", "/users/password"): U, ("POST", "/users/signout"): U,
    ("GET", "/audit"): A, ("GET", "/api/audit"): A,
}
SCRATCH = "sam"  # the user the matrix's user changes act on
SCRATCH_PASSWORD = "sam-is-a-scratch-user-4"


def app_routes(admin: Admin) -> set[tuple[str, str]]:
    found = set()
    for route in admin.app.routes:
        for method in getattr(route, "methods", None) or ():
            if method != "HEAD":
                found.add((method, route.path))
    return found


def concrete(admin: Admin, method: str, path: str, n: int) -> tuple[str, dict[str, str]]:
    """A URL for the route and a form that its allowed call accepts (the n-th call: new names)."""
    targets = {"/retry": admin.ids["failed"], "/resend": admin.ids["done"]}
    job = next((job for suffix, job in targets.items() if path.endswith(suffix)), admin.ids["done"])
    url = path.replace("{job_id:int}", str(job))
    form = {"/users/add": {"username": f"new{n}", "role": "viewer", "password": f"a-new-users-pass-{n}"},
            "/users/role": {"username": SCRATCH, "role": "viewer"},
            "/users/password": {"username": SCRATCH, "password": SCRATCH_PASSWORD}}.get(path, {})
    if path in ("/users/disable", "/users/enable", "/users/signout"):
        form = {"username": SCRATCH}
    return url, form


def call(admin: Admin, method: str, url: str, form: dict[str, str], headers: dict[str, str]) -> httpx.Response:
    return httpx.request(method, admin.base + url, data=form or None, headers=headers, timeout=30,
                         follow_redirects=False)


# -- every route, every role --------------------------------------------------------


def test_every_route_is_in_the_table(admin: Admin) -> None:
    assert app_routes(admin) == set(ROUTES) | PUBLIC


def test_no_route_answers_without_credentials_but_health_metrics_and_login(admin: Admin) -> None:
    for n, (method, path) in enumerate(sorted(ROUTES)):
        url, form = concrete(admin, method, path, n)
        for headers in ({}, {"Authorization": "Bearer not-a-token"}, {"Cookie": "lumbarnode_session=forged"},
                        {"Authorization": "Basic dmVyYTp2ZXJh"}):
            reply = call(admin, method, url, form, headers)
            if path.startswith("/api/"):
                assert reply.status_code == 401, (method, path, headers)
                assert reply.headers["www-authenticate"].startswith("Bearer")
            else:
                assert reply.status_code == 303, (method, path, headers)
                assert reply.headers["location"].startswith("/login?next=")
            assert "ACC-" not in reply.text and "1.2.826" not in reply.text
    assert httpx.get(admin.base + "/healthz", timeout=30).text == "ok"
    metrics = httpx.get(admin.base + "/metrics", timeout=30)
    assert metrics.status_code == 200 and "lumbarnode_jobs" in metrics.text
    assert "ACC-" not in metrics.text and "1.2.826" not in metrics.text  # counts only, nothing about patients
    assert admin.store.get_job(admin.ids["failed"]).status == "failed"  # nothing happened


def test_each_role_may_do_exactly_its_actions(admin: Admin) -> None:
    users.add(admin.access, SCRATCH, "viewer", SCRATCH_PASSWORD, SETUP)
    before = {name: admin.store.get_job(job).status for name, job in admin.ids.items()}
    n = 100
    for name in ("sid", "vera", "otto", "ada"):  # least first: a refused change must leave everything as it was
        role = Role(USERS[name][0])
        for method, path in sorted(ROUTES):
            if path == "/logout":
                continue  # a token has no session to end; the browser tests sign out
            n += 1
            url, form = concrete(admin, method, path, n)
            reply = call(admin, method, url, form, admin.auth(name))
            allowed = ROUTES[method, path] in PERMISSIONS[role]
            if allowed:
                assert reply.status_code in (200, 303), (name, method, path, reply.status_code, reply.text[:300])
                assert reply.headers.get("location", "").split("?")[0] != "/login"
            else:
                assert reply.status_code == 403, (name, method, path, reply.status_code)
        if name in ("sid", "vera"):
            assert {k: admin.store.get_job(j).status for k, j in admin.ids.items()} == before
            assert admin.access.user(SCRATCH).role == "viewer" and admin.access.user("new101") is None
    assert admin.store.get_job(admin.ids["failed"]).status == "queued"  # otto's retry went through
    assert admin.store.get_job(admin.ids["done"]).status == "exporting"  # and the resend

    # every refusal and every action left an audit row with the user's name
    trail = admin.access.audit_entries(limit=1000)
    denied = [(e.actor, e.target) for e in trail if e.action == "access_denied"]
    assert ("vera", f"/jobs/{admin.ids['failed']}/retry") in denied and ("otto", "/users") in denied
    assert not any(actor == "ada" for actor, _ in denied)
    retries = [e for e in trail if e.action == "retry" and e.actor == "otto" and e.outcome == "ok"]
    assert retries and all(e.job_id == admin.ids["failed"] for e in retries)
    assert any(e.action == "resend" and e.actor == "otto" and e.job_id == admin.ids["done"] for e in trail)
    assert any(e.action == "user_added" and e.actor == "ada" and e.target.startswith("new") for e in trail)
    assert any(e.action == "view_job" and e.actor == "vera" and e.job_id == admin.ids["done"] for e in trail)


def test_api_me_and_the_audit_export(admin: Admin) -> None:
    me = admin.get("/api/me", as_user="otto").json()
    assert (me["username"], me["role"], me["via"]) == ("otto", "operator", "token")
    assert me["permissions"] == ["retry", "view_jobs"]
    admin.get("/api/jobs", q="ACC-1003")  # a search by accession number ...
    admin.get(f"/api/jobs/{admin.ids['export_failed']}")
    exported = admin.get("/api/audit", as_user="ada", actor="vera", action="view_job").json()["entries"]
    assert exported and all(e["actor"] == "vera" and e["action"] == "view_job" for e in exported)
    assert exported[0]["job_id"] == admin.ids["export_failed"] and exported[0]["address"] == "127.0.0.1"
    everything = admin.get("/api/audit", as_user="ada", limit=10000).text
    assert "ACC-" not in everything  # ... is not in the trail: nothing about patients
    assert admin.get("/api/audit", as_user="ada", outcome="bogus").status_code == 400


def test_tokens_and_sessions_are_stored_as_hashes_only(admin: Admin) -> None:
    with admin.store.engine.connect() as conn:
        stored = [row[0] for row in conn.execute(sa.select(Credential.secret_sha256))]
        hashes = [row[0] for row in conn.execute(sa.text("SELECT password_hash FROM users"))]
    assert len(stored) >= 3 and all(re.fullmatch(r"[0-9a-f]{64}", s) for s in stored)
    assert not set(admin.tokens.values()) & set(stored)
    assert all(h.startswith("$argon2id$") for h in hashes if h)
    assert all(password not in str(hashes) for _, password in USERS.values())


# -- sessions: the login form, CSRF, expiry, lockout -------------------------------


def login(admin: Admin, username: str, password: str | None = None) -> tuple[httpx.Client, httpx.Response]:
    """A client signed in (or not) through the login form, as a browser does."""
    client = httpx.Client(base_url=admin.base, timeout=30, follow_redirects=False)
    form = client.get("/login")
    token = re.search(r'name="csrf_token" value="([^"]+)"', form.text)[1]
    reply = client.post("/login", data={"username": username, "password": password or USERS[username][1],
                                        "next": "/", "csrf_token": token})
    return client, reply


def csrf_of(client: httpx.Client, route: str = "/") -> str:
    return re.search(r'name="csrf_token" value="([^"]+)"', client.get(route).text)[1]


def test_a_session_cookie_is_httponly_and_forms_need_its_csrf_token(admin: Admin) -> None:
    client, reply = login(admin, "otto")
    assert reply.status_code == 303 and reply.headers["location"] == "/"
    cookie = reply.headers["set-cookie"].lower()
    assert "lumbarnode_session=" in cookie and "httponly" in cookie and "samesite=lax" in cookie
    assert "secure" not in cookie  # plain HTTP here; test_the_command_serves_https covers Secure
    job = admin.ids["export_failed"]
    assert client.post(f"/jobs/{job}/retry").status_code == 403  # no token
    assert client.post(f"/jobs/{job}/retry", data={"csrf_token": "guess"}).status_code == 403
    token = csrf_of(client)
    cross = client.post(f"/jobs/{job}/retry", data={"csrf_token": token}, headers={"Origin": "https://evil.example"})
    assert cross.status_code == 403
    assert admin.store.get_job(job).status == "export_failed"  # nothing happened
    done = client.post(f"/jobs/{job}/retry", data={"csrf_token": token})
    assert done.status_code == 303 and done.headers["location"] == f"/jobs/{job}?notice=retry"
    assert admin.store.get_job(job).status == "exporting"  # export_failed: its results are sent again
    api = client.post(f"/api/jobs/{job}/resend", headers={"X-CSRF-Token": token})
    assert api.status_code == 200 and api.json()["done"].startswith("export queued again")
    rejected = admin.access.audit_entries(actor="otto", action="csrf_rejected")
    assert len(rejected) >= 3 and {e.outcome for e in rejected} == {"denied"}

    # signing out ends the session on the server: the same cookie no longer works
    assert client.post("/logout", data={"csrf_token": token}).status_code == 303
    assert client.get("/").status_code == 303
    assert admin.access.audit_entries(actor="otto", action="logout")


def test_the_login_form_needs_its_own_token_and_never_redirects_off_site(admin: Admin) -> None:
    forged = httpx.post(admin.base + "/login", data={"username": "vera", "password": USERS["vera"][1]}, timeout=30)
    assert forged.status_code == 403 and "expired" in forged.text  # no login CSRF token: a forged form
    for evil in ("https://evil.example/", "//evil.example/", "/\\evil.example"):
        client = httpx.Client(base_url=admin.base, timeout=30, follow_redirects=False)
        token = re.search(r'name="csrf_token" value="([^"]+)"', client.get("/login").text)[1]
        reply = client.post("/login", data={"username": "vera", "password": USERS["vera"][1], "next": evil,
                                            "csrf_token": token})
        assert reply.status_code == 303 and reply.headers["location"] == "/"


def test_a_session_ends_when_idle_and_at_its_maximum_age(admin: Admin) -> None:
    client, _ = login(admin, "vera")
    assert client.get("/").status_code == 200
    user_id = admin.access.user("vera").id

    def sessions(**values) -> None:  # the clock moved on: as the database will see it
        with admin.store.engine.begin() as conn:
            conn.execute(sa.update(Credential).where(Credential.user_id == user_id, Credential.kind == "session")
                         .values(**values))

    sessions(expires_at=utcnow() - timedelta(seconds=1))  # ADMIN_SESSION_IDLE_MIN unused
    assert client.get("/").status_code == 303
    client, _ = login(admin, "vera")
    sessions(created_at=utcnow() - timedelta(hours=12, seconds=1))  # in use, but past ADMIN_SESSION_MAX_H
    assert client.get("/").status_code == 303


def test_wrong_passwords_lock_the_account_and_a_new_password_unlocks_it(admin: Admin) -> None:
    users.add(admin.access, "lena", "viewer", "lena-has-a-password-5", SETUP)
    for _ in range(Settings().admin_login_max_failures):
        _, reply = login(admin, "lena", "not-her-password")
        assert reply.status_code == 401 and "Wrong user name or password" in reply.text
    _, reply = login(admin, "lena", "lena-has-a-password-5")  # right, but too late
    assert reply.status_code == 403 and "locked" in reply.text
    trail = admin.access.audit_entries(actor="lena", action="login")
    assert [e.outcome for e in trail][:2] == ["denied", "failed"] and "account locked" in trail[1].detail
    _, unknown = login(admin, "nobody-of-that-name", "whatever-it-is")
    assert unknown.status_code == 401 and "Wrong user name or password" in unknown.text  # the same answer

    # an admin sets a new password (the command line): unlocked
    env = {**os.environ, "LUMBARNODE_DATABASE_URL": admin.store.url}
    done = subprocess.run([sys.executable, "-m", "worker.cli", "users", "passwd", "lena", "--password-stdin"],
                          input="lena-has-a-new-one-6\n", capture_output=True, text=True, env=env)
    assert done.returncode == 0, done.stderr
    client, reply = login(admin, "lena", "lena-has-a-new-one-6")
    assert reply.status_code == 303 and client.get("/").status_code == 200


def test_failed_logins_from_one_address_are_rate_limited(admin: Admin, tmp_path: Path) -> None:
    # An app of its own, so that the address (TestClient's) is limited there only.
    app = create_app(Settings(data_dir=tmp_path, database_url=admin.store.url))
    with TestClient(app, base_url="http://127.0.0.1") as client:
        for n in range(ADDRESS_FAILURES):
            token = re.search(r'name="csrf_token" value="([^"]+)"', client.get("/login").text)[1]
            assert client.post("/login", data={"username": f"guess{n}", "password": "guessing-passwords",
                                               "csrf_token": token}).status_code == 401
        token = re.search(r'name="csrf_token" value="([^"]+)"', client.get("/login").text)[1]
        limited = client.post("/login", data={"username": "vera", "password": USERS["vera"][1], "csrf_token": token})
        assert limited.status_code == 429 and "Too many failed logins" in limited.text
    assert admin.access.audit_entries(actor="vera", action="login", outcome="denied")


def test_disabling_a_user_ends_their_token_at_once_and_the_last_admin_stays(admin: Admin) -> None:
    users.add(admin.access, "tim", "operator", "tim-has-a-token-7", SETUP)
    token = users.issue_token(admin.access, "tim", "script", 1, SETUP)
    bearer = {"Authorization": f"Bearer {token}"}
    assert httpx.get(admin.base + "/api/status", headers=bearer, timeout=30).status_code == 200
    assert httpx.post(admin.base + "/users/disable", data={"username": "tim"}, headers=admin.auth("ada"),
                      timeout=30).status_code == 303
    assert httpx.get(admin.base + "/api/status", headers=bearer, timeout=30).status_code == 401
    last = httpx.post(admin.base + "/users/disable", data={"username": "ada"}, headers=admin.auth("ada"), timeout=30)
    assert last.status_code == 400 and "only enabled admin" in last.text
    assert not admin.access.user("ada").disabled


# -- in the browser ------------------------------------------------------------------


def test_an_operator_signs_in_and_runs_a_failed_job_again(admin: Admin, anonymous_page: Page,
                                                          browser: Browser) -> None:
    page = anonymous_page
    page.goto(admin.base + "/")
    page.get_by_label("User name").fill("otto")
    page.get_by_label("Password").fill("not-the-password")
    with page.expect_navigation():
        page.get_by_role("button", name="Sign in").click()
    expect(page.locator("#login-error")).to_have_text("Wrong user name or password.")
    screenshot(page, "admin-login", admin.backend)

    job = admin.store.create_job(admin.store.get_job(admin.ids["skipped"]).series_id, ["1.2.3"], status="received")
    admin.store.set_status(job.id, "queued")
    admin.store.claim_job(job.id)
    admin.store.set_status(job.id, "failed", error="RuntimeError: a worker's error")
    sign_in(page, admin.base, "otto", then=f"/jobs/{job.id}")
    assert page.url.endswith(f"/jobs/{job.id}")
    expect(page.locator("#who")).to_contain_text("otto")
    with page.expect_navigation():
        page.get_by_role("button", name="Run again").click()
    expect(page.locator("#notice")).to_contain_text("Retry requested")
    expect(page.locator("#status")).to_have_text("queued")
    expect(page.locator("#events")).to_contain_text("queued again by an operator")
    screenshot(page, "admin-retry", admin.backend)
    assert admin.access.audit_entries(actor="otto", action="retry", job_id=job.id)[0].outcome == "ok"
    with page.expect_navigation():
        page.get_by_role("button", name="Sign out").click()
    assert "/login" in page.url

    viewer = browser.new_context().new_page()  # a viewer sees the job, and no button to change it
    sign_in(viewer, admin.base, "vera", then=f"/jobs/{job.id}")
    expect(viewer.locator("#status")).to_have_text("queued")
    assert viewer.locator("#actions").count() == 0
    assert viewer.get_by_role("link", name="Users").count() == 0
    viewer.context.close()


def test_an_admin_adds_a_user_and_reads_the_audit_trail(admin: Admin, anonymous_page: Page) -> None:
    page = anonymous_page
    sign_in(page, admin.base, "ada", then="/users")
    page.get_by_label("User name", exact=True).fill("nina")
    page.locator("#new-role").select_option("operator")
    page.locator("#new-password").fill("nina-operates-8x")
    with page.expect_navigation():
        page.get_by_role("button", name="Add user").click()
    expect(page.locator("#done")).to_have_text("User added.")
    expect(page.locator('#users tr[data-user="nina"] .role')).to_have_text("operator")
    screenshot(page, "admin-users", admin.backend)
    assert admin.access.user("nina").role == "operator"

    page.goto(admin.base + "/audit?actor=ada")
    expect(page.locator("#audit tbody")).to_contain_text("user_added")
    expect(page.locator("#audit tbody")).to_contain_text("nina")
    page.goto(admin.base + "/audit")
    screenshot(page, "admin-audit", admin.backend)
    assert page.locator("#audit tbody tr").count() >= 3


# -- the command: HTTPS, the first admin from a secret file ---------------------------


def _certificate(folder: Path) -> tuple[Path, Path]:
    config = folder / "req.cnf"
    config.write_text("[req]\ndistinguished_name = dn\n[dn]\n")
    key, cert = folder / "admin.key", folder / "admin.pem"
    subprocess.run([require_tool("openssl"), "req", "-x509", "-new", "-newkey", "ec", "-pkeyopt",
                    "ec_paramgen_curve:P-256", "-nodes", "-keyout", str(key), "-out", str(cert), "-days", "2",
                    "-subj", "/CN=127.0.0.1", "-config", str(config), "-addext", "subjectAltName=IP:127.0.0.1"],
                   check=True, capture_output=True)
    return cert, key


def test_the_command_serves_https_and_makes_the_first_admin_from_a_secret(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'lumbarnode.db'}"
    JobStore(url, create=True).dispose()
    cert, key = _certificate(tmp_path)
    secret = tmp_path / "admin_password"
    secret.write_text("first-admin-from-a-secret\n")
    port = free_port()
    env = {**os.environ, "LUMBARNODE_DATA_DIR": str(tmp_path), "LUMBARNODE_DATABASE_URL": url,
           "LUMBARNODE_ADMIN_TLS_CERT": str(cert), "LUMBARNODE_ADMIN_TLS_KEY": str(key),
           "LUMBARNODE_ADMIN_INITIAL_USER": "root-admin", "LUMBARNODE_ADMIN_INITIAL_PASSWORD_FILE": str(secret)}
    proc = subprocess.Popen([sys.executable, "-m", "worker.cli", "admin", "--port", str(port)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        base = f"https://127.0.0.1:{port}"

        def up() -> bool:
            try:
                return httpx.get(base + "/healthz", verify=str(cert), timeout=5).text == "ok"
            except httpx.TransportError:
                return False

        wait_until(up, 60, "lumbarnode admin over HTTPS", proc)
        with pytest.raises(httpx.TransportError):
            httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=5).raise_for_status()  # HTTPS only
        with httpx.Client(base_url=base, verify=str(cert), timeout=30, follow_redirects=False) as client:
            page = client.get("/login")
            assert "secure" in page.headers["set-cookie"].lower()
            token = re.search(r'name="csrf_token" value="([^"]+)"', page.text)[1]
            reply = client.post("/login", data={"username": "root-admin", "password": "first-admin-from-a-secret",
                                                "csrf_token": token})
            assert reply.status_code == 303
            cookie = reply.headers["set-cookie"].lower()
            assert "secure" in cookie and "httponly" in cookie
            me = client.get("/api/me")
            assert me.json()["role"] == "admin" and "max-age" in me.headers["strict-transport-security"]
    finally:
        proc.terminate()
        proc.wait(timeout=15)
    trail = AccessStore(JobStore(url)).audit_entries(actor="settings")
    assert [(e.action, e.target) for e in trail] == [("user_added", "root-admin")]


def test_the_login_page_says_how_to_make_the_first_admin(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'lumbarnode.db'}"
    JobStore(url, create=True).dispose()
    with TestClient(create_app(Settings(data_dir=tmp_path, database_url=url))) as client:
        page = client.get("/")
    assert page.url.path == "/login" and "lumbarnode users add NAME --role admin" in page.text
    with sqlite3.connect(tmp_path / "lumbarnode.db") as conn:
        assert conn.execute("SELECT count(*) FROM users").fetchone() == (0,)


# -- OpenID Connect ------------------------------------------------------------------


@pytest.fixture
def idp_site(tmp_path: Path):
    """An admin app with OIDC sign-in against the stand-in provider (a database of its own,
    with the local users of USERS), and its AccessStore."""
    secret = tmp_path / "oidc_secret"
    secret.write_text("client-secret-for-tests\n")
    url = f"sqlite:///{tmp_path / 'lumbarnode.db'}"
    store = JobStore(url, create=True)
    access = AccessStore(store)
    seed_users(access)
    with OidcProvider(client_id="lumbarnode", client_secret="client-secret-for-tests") as idp:
        idp.add_user("olga", "olga-at-the-idp", groups=["staff", "lumbarnode-operator"], email="olga@example.org")
        idp.add_user("gus", "gus-at-the-idp", groups=["staff"])
        idp.add_user("vera", "a-different-vera", groups=["lumbarnode-admin"])  # the name of a local user
        settings = Settings(data_dir=tmp_path, database_url=url, oidc_issuer=idp.issuer,
                            oidc_client_id="lumbarnode", oidc_client_secret_file=secret)
        server, thread, base = serve(create_app(settings))
        idp.redirect_uris.append(f"{base}/login/oidc/callback")
        try:
            yield idp, base, access
        finally:
            server.should_exit = True
            thread.join(timeout=15)
            store.dispose()


def _idp_sign_in(page: Page, base: str, username: str, password: str) -> None:
    page.goto(base + "/")
    with page.expect_navigation():
        page.locator("#oidc").click()
    page.get_by_label("Username").fill(username)
    page.get_by_label("Password").fill(password)
    with page.expect_navigation():
        page.get_by_role("button", name="Sign in").click()


def test_a_user_of_the_identity_provider_signs_in_with_the_role_of_their_group(idp_site, browser: Browser) -> None:
    idp, base, access = idp_site
    page = browser.new_context().new_page()
    _idp_sign_in(page, base, "olga", "olga-at-the-idp")
    assert page.url == base + "/"
    expect(page.locator("#who")).to_contain_text("olga")
    expect(page.locator("#who")).to_contain_text("operator")
    screenshot(page, "admin-oidc")
    user = access.user("olga")
    assert (user.source, user.role, user.has_password) == ("oidc", "operator", False)
    assert idp.logins == ["olga"] and idp.token_requests[-1]["success"]
    assert access.audit_entries(actor="olga", action="login")[0].detail.startswith("OpenID Connect")

    # no lumbarnode group: refused; a local user's name: never taken over; an ID token for another client: refused
    for name, password in (("gus", "gus-at-the-idp"), ("vera", "a-different-vera")):
        page.context.clear_cookies()
        _idp_sign_in(page, base, name, password)
        assert "/login" in page.url
        expect(page.locator("#login-error")).to_contain_text("did not succeed")
    assert access.user("gus") is None and access.user("vera").source == "local"
    idp.id_token_overrides = {"aud": "another-client", "azp": "lumbarnode"}
    page.context.clear_cookies()
    _idp_sign_in(page, base, "olga", "olga-at-the-idp")
    assert "/login" in page.url
    refusals = access.audit_entries(action="login", outcome="failed", limit=20)
    details = " ".join(e.detail for e in refusals)
    assert "none of the groups" in details and "local user" in details and "aud" in details
    page.context.close()


def test_an_unreachable_identity_provider_is_a_clear_refusal(admin: Admin, tmp_path: Path) -> None:
    secret = tmp_path / "oidc_secret"
    secret.write_text("x")
    settings = Settings(data_dir=tmp_path, database_url=admin.store.url, oidc_issuer=f"http://127.0.0.1:{free_port()}",
                        oidc_client_id="lumbarnode", oidc_client_secret_file=secret)
    with TestClient(create_app(settings), base_url="http://127.0.0.1") as client:
        reply = client.get("/login/oidc", follow_redirects=False)
        assert reply.status_code == 303 and reply.headers["location"] == "/login?error=oidc"
        assert "did not succeed" in client.get("/login?error=oidc").text
    assert "provider unreachable" in admin.access.audit_entries(action="login", outcome="failed")[0].detail


def test_an_empty_first_admin_password_stops_the_command_with_one_line(tmp_path: Path) -> None:
    """compose/.env without ADMIN_PASSWORD hands over an empty secret file: said, not started."""
    url = f"sqlite:///{tmp_path / 'lumbarnode.db'}"
    JobStore(url, create=True).dispose()
    secret = tmp_path / "admin_password"
    secret.write_text("\n")
    env = {**os.environ, "LUMBARNODE_DATA_DIR": str(tmp_path), "LUMBARNODE_DATABASE_URL": url,
           "LUMBARNODE_ADMIN_INITIAL_USER": "admin", "LUMBARNODE_ADMIN_INITIAL_PASSWORD_FILE": str(secret)}
    done = subprocess.run([sys.executable, "-m", "worker.cli", "admin", "--port", str(free_port())], env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert "LUMBARNODE_ADMIN_INITIAL_USER: a password needs at least 12 characters" in done.stderr
    assert AccessStore(JobStore(url)).count_users() == 0
