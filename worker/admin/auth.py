"""Who may see and do what on the admin page and its API.

- **Authentication.** A browser session (the cookie `lumbarnode_session`, after `/login` with
  a local user's password or through OpenID Connect, worker/admin/oidc.py) or an API token
  (`Authorization: Bearer ...`, from `lumbarnode users token`). Both are random secrets of
  which the database keeps only the SHA-256 (db/access.py). A session ends after
  ADMIN_SESSION_IDLE_MIN unused and ADMIN_SESSION_MAX_H after its login; a token on its expiry
  date. Disabling a user ends both at once.
- **Roles.** `PERMISSIONS` below, enforced here for every route (`Guard.need`); a refusal is a
  403 and an audit row.
- **CSRF.** The session cookie is HttpOnly and SameSite=Lax, and every state-changing request
  made with it must echo the session's CSRF token (a form field, or the `X-CSRF-Token`
  header); a cross-origin `Origin` is refused outright. A Bearer request carries no ambient
  credential, so it needs no token.
- **Brute force.** ADMIN_LOGIN_MAX_FAILURES wrong passwords in a row lock the account for
  ADMIN_LOCKOUT_MIN (in the database: every admin process sees it), and each client address
  may fail `ADDRESS_FAILURES` times per `ADDRESS_WINDOW_S` (in this process) before its
  logins are refused with 429.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import threading
import time
from collections import deque
from dataclasses import dataclass
from datetime import timedelta
from enum import StrEnum

from fastapi import Request, Response

from db.access import AccessStore, CredentialView, Role, UserView
from db.store import utcnow
from worker.admin import passwords
from worker.settings import Settings

SESSION_COOKIE = "lumbarnode_session"
LOGIN_CSRF_COOKIE = "lumbarnode_login_csrf"  # the login form's own token (double submit): no session yet
CSRF_FIELD = "csrf_token"
CSRF_HEADER = "x-csrf-token"
ADDRESS_FAILURES = 20
ADDRESS_WINDOW_S = 600.0
TOUCH_EVERY_S = 30.0  # a credential's last use is written at most this often (one write per request is too many)


class Permission(StrEnum):
    VIEW_JOBS = "view_jobs"  # the job list and pages, the overlay, the JSON API
    RETRY = "retry"  # run a job again, send its results again
    MANAGE_USERS = "manage_users"  # add users, change roles, disable, reset passwords, sign out
    VIEW_AUDIT = "view_audit"  # the audit trail
    STORE = "store"  # send studies by STOW-RS (worker/stow_server.py)


PERMISSIONS: dict[Role, frozenset[Permission]] = {
    Role.VIEWER: frozenset({Permission.VIEW_JOBS}),
    Role.OPERATOR: frozenset({Permission.VIEW_JOBS, Permission.RETRY}),
    Role.ADMIN: frozenset(Permission),
    Role.SENDER: frozenset({Permission.STORE}),
}


@dataclass(frozen=True)
class Principal:
    """The user behind a request, and how they proved it."""

    user: UserView
    credential: CredentialView

    @property
    def via(self) -> str:
        return self.credential.kind  # session or token

    def may(self, permission: Permission) -> bool:
        return permission in PERMISSIONS[Role(self.user.role)]


class LoginRequired(Exception):
    """No valid credential: a page sends the browser to /login, the API answers 401."""


class Forbidden(Exception):
    """A valid credential whose role lacks the permission (or a failed CSRF check): 403."""


class LoginRefused(Exception):
    def __init__(self, message: str, status_code: int):
        super().__init__(message)
        self.status_code = status_code


def new_secret() -> tuple[str, str]:
    """A random secret for a cookie or a token, and the SHA-256 the database keeps of it."""
    secret = secrets.token_urlsafe(32)
    return secret, secret_hash(secret)


def secret_hash(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def client_address(request: Request) -> str:
    # uvicorn has already replaced it with X-Forwarded-For when the proxy is trusted
    return request.client.host if request.client else ""


class AddressLimiter:
    """Failed logins per client address in a sliding window (this process only: the account
    lockout, in the database, is what holds across processes)."""

    def __init__(self, limit: int = ADDRESS_FAILURES, window_s: float = ADDRESS_WINDOW_S):
        self.limit, self.window_s = limit, window_s
        self._failures: dict[str, deque[float]] = {}
        self._lock = threading.Lock()

    def wait_s(self, address: str) -> float:
        """0 when the address may try; else how long until it may."""
        with self._lock:
            times = self._recent(address)
            return 0.0 if len(times) < self.limit else times[0] + self.window_s - time.monotonic()

    def failed(self, address: str) -> None:
        with self._lock:
            self._recent(address).append(time.monotonic())

    def _recent(self, address: str) -> deque[float]:
        times = self._failures.setdefault(address, deque())
        while times and times[0] < time.monotonic() - self.window_s:
            times.popleft()
        return times


class Guard:
    """Authentication and authorisation for one admin application."""

    def __init__(self, access: AccessStore, settings: Settings):
        self.access = access
        self.settings = settings
        self.limiter = AddressLimiter()
        self.idle = timedelta(minutes=settings.admin_session_idle_min)
        self.max_age = timedelta(hours=settings.admin_session_max_h)

    # -- who is asking

    def principal(self, request: Request) -> Principal | None:
        """The request's user, from its Bearer token or its session cookie; None if neither is valid."""
        cached = getattr(request.state, "principal", None)
        if cached is not None:
            return cached
        scheme, _, value = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() == "bearer" and value.strip():
            secret, kind = value.strip(), "token"
        elif request.cookies.get(SESSION_COOKIE):
            secret, kind = request.cookies[SESSION_COOKIE], "session"
        else:
            return None
        found = self.access.credential(secret_hash(secret))
        if found is None or found[0].kind != kind:
            return None
        credential, user = found
        now = utcnow()
        if kind == "session" and now >= credential.created_at + self.max_age:
            return None  # ADMIN_SESSION_MAX_H after its login, however busy it was
        if (now - credential.last_used_at).total_seconds() >= TOUCH_EVERY_S:
            expires = min(credential.created_at + self.max_age, now + self.idle) if kind == "session" else None
            self.access.touch_credential(credential.id, expires_at=expires)
        principal = Principal(user, credential)
        request.state.principal = principal
        return principal

    def need(self, permission: Permission):
        """A FastAPI dependency: the request's Principal, holding `permission`."""

        def dependency(request: Request) -> Principal:
            principal = self.principal(request)
            if principal is None:
                raise LoginRequired()
            if not principal.may(permission):
                self.audit(request, "access_denied", outcome="denied", target=request.url.path,
                           detail=f"needs {permission} (role {principal.user.role})")
                raise Forbidden(f"Your role ({principal.user.role}) may not do this.")
            return principal

        return dependency

    def need_to_change(self, permission: Permission):
        """`need`, for a state-changing request: also the CSRF token of a session, and no
        cross-origin request at all."""
        need = self.need(permission)

        async def dependency(request: Request) -> Principal:
            principal = need(request)
            origin = request.headers.get("origin")
            if origin and origin != _own_origin(request):
                self.audit(request, "csrf_rejected", outcome="denied", target=request.url.path,
                           detail=f"cross-origin request from {origin[:80]}")
                raise Forbidden("A request from another site was refused.")
            if principal.via == "session":
                sent = request.headers.get(CSRF_HEADER)
                if sent is None and _is_form(request):
                    sent = (await request.form()).get(CSRF_FIELD)
                if not isinstance(sent, str) or not hmac.compare_digest(sent, principal.credential.csrf_token or ""):
                    self.audit(request, "csrf_rejected", outcome="denied", target=request.url.path,
                               detail="missing or wrong CSRF token")
                    raise Forbidden("The form had expired or did not come from this page; reload and try again.")
            return principal

        return dependency

    # -- logging in and out

    def check_password(self, username: str, password: str, address: str) -> UserView:
        """The user, when the password is right and the account may sign in; LoginRefused
        (and an audit row) otherwise."""
        username = username.strip()
        wait_s = self.limiter.wait_s(address)
        if wait_s > 0:
            self.access.audit("login", actor=username, outcome="denied", address=address,
                              detail="too many failed logins from this address")
            raise LoginRefused(f"Too many failed logins from your address; try again in {_minutes(wait_s)}.", 429)
        user = self.access.user(username) if username else None
        stored = self.access.password_hash(username) if user is not None else None
        right = passwords.verify(stored, password)  # always hashes: unknown names cost the same time
        now = utcnow()
        if user is not None and user.locked(now):
            self.access.audit("login", actor=username, outcome="denied", address=address, detail="account locked")
            raise LoginRefused("This account is locked after too many wrong passwords; try again in "
                               f"{_minutes((user.locked_until - now).total_seconds())} or ask an admin.", 403)
        if not right or user is None or user.disabled:
            self.limiter.failed(address)
            detail = "unknown user" if user is None else "user disabled" if user.disabled else "wrong password"
            if user is not None and not user.disabled and not right:
                after = self.access.login_failed(user.id, max_failures=self.settings.admin_login_max_failures,
                                                 lockout=timedelta(minutes=self.settings.admin_lockout_min))
                if after.locked(now):
                    detail += f"; account locked for {self.settings.admin_lockout_min:g} min"
            self.access.audit("login", actor=username, outcome="failed", address=address, detail=detail)
            raise LoginRefused("Wrong user name or password.", 401)
        if stored is not None and passwords.needs_rehash(stored):
            self.access.update_user(username, password_hash=passwords.hash_password(password))
        return self.access.login_succeeded(user.id)

    def start_session(self, user: UserView, request: Request, response: Response, how: str) -> None:
        """A new session for `user` (after a login), its cookie on `response`, an audit row."""
        secret, digest = new_secret()
        now = utcnow()
        self.access.add_credential(user.id, "session", digest, min(now + self.idle, now + self.max_age),
                                   csrf_token=secrets.token_urlsafe(24))
        response.set_cookie(SESSION_COOKIE, secret, httponly=True, samesite="lax", secure=self.settings.admin_https,
                            path="/")
        response.delete_cookie(LOGIN_CSRF_COOKIE, path="/login")
        self.access.audit("login", actor=user.username, address=client_address(request), detail=how)

    def end_session(self, principal: Principal, request: Request, response: Response) -> None:
        self.access.revoke_credential(principal.credential.id)
        response.delete_cookie(SESSION_COOKIE, path="/")
        self.audit(request, "logout")

    def login_token(self, request: Request) -> str:
        """The login form's CSRF token: the one its cookie holds, else a new one."""
        return request.cookies.get(LOGIN_CSRF_COOKIE) or secrets.token_urlsafe(24)

    def set_login_token(self, response: Response, token: str) -> None:
        response.set_cookie(LOGIN_CSRF_COOKIE, token, httponly=True, samesite="strict",
                            secure=self.settings.admin_https, path="/login", max_age=3600)

    def login_csrf_ok(self, request: Request, sent: str | None) -> bool:
        cookie = request.cookies.get(LOGIN_CSRF_COOKIE)
        origin = request.headers.get("origin")
        return (bool(cookie) and isinstance(sent, str) and hmac.compare_digest(cookie, sent)
                and (not origin or origin == _own_origin(request)))

    # -- the audit trail

    def audit(self, request: Request, action: str, *, outcome: str = "ok", job_id: int | None = None,
              target: str = "", detail: str = "") -> None:
        """An audit row for what the request's user did (or tried)."""
        principal = self.principal(request)
        actor = principal.user.username if principal else ""
        self.access.audit(action, actor=actor, outcome=outcome, job_id=job_id, target=target,
                          address=client_address(request), detail=detail)


def safe_next(target: str | None) -> str:
    """Only a path on this site: never another host (an open redirect would make our login
    page a phishing tool)."""
    if not target or not target.startswith("/") or target.startswith(("//", "/\\")):
        return "/"
    return target


def _own_origin(request: Request) -> str:
    return f"{request.url.scheme}://{request.url.netloc}"


def _is_form(request: Request) -> bool:
    kind = request.headers.get("content-type", "")
    return kind.startswith(("application/x-www-form-urlencoded", "multipart/form-data"))


def _minutes(seconds: float) -> str:
    minutes = max(1, round(seconds / 60))
    return f"{minutes} minute{'s' if minutes != 1 else ''}"

