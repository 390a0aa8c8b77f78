"""The admin application's account routes: signing in and out, the users page (admins), the
audit trail (admins), and who-am-I for API clients.

- `/login`        GET the form, POST a user name and password (local users)
- `/login/oidc`   the identity provider's sign-in, when OIDC_ISSUER is set (worker/admin/oidc.py)
- `/logout`       POST
- `/users`        GET the users; POST `/users/add|role|disable|enable|password|signout`
- `/audit`        the audit trail as a page; `/api/audit` as JSON (the export)
- `/api/me`       the caller: user name, role, permissions, how they signed in
"""

from __future__ import annotations

from typing import Any

from fastapi import Depends, FastAPI, Form, HTTPException, Query, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from db.access import OUTCOMES
from db.store import utcnow
from worker.admin import users
from worker.admin.auth import CSRF_FIELD, LoginRefused, Permission, Principal, client_address, safe_next
from worker.admin.web import Web, parse_since

AUDIT_PAGE_LIMIT = 500
DONE = {"added": "User added.", "role": "Role changed.", "disable": "User disabled; their sessions and tokens ended.",
        "enable": "User enabled.", "password": "Password set; their browser sessions ended.",
        "signout": "Their sessions and tokens ended."}


def add_routes(app: FastAPI, web: Web) -> None:
    guard, access, settings = web.guard, web.access, web.settings
    any_user = Depends(guard.need(Permission.VIEW_JOBS))
    admin = Depends(guard.need(Permission.MANAGE_USERS))
    admin_change = Depends(guard.need_to_change(Permission.MANAGE_USERS))
    auditor = Depends(guard.need(Permission.VIEW_AUDIT))
    oidc_enabled = bool(settings.oidc_issuer)

    def login_page(request: Request, next_: str, error: str = "", status_code: int = 200) -> HTMLResponse:
        token = guard.login_token(request)
        response = web.page(request, "login.html", status_code, next=safe_next(next_), error=error,
                            no_users=access.count_users() == 0, oidc=oidc_enabled, login_csrf=token)
        guard.set_login_token(response, token)
        return response

    @app.get("/login", response_class=HTMLResponse)
    def login_form(request: Request, next: str = "/", error: str = "") -> Response:
        if guard.principal(request) is not None:
            return RedirectResponse(safe_next(next), status_code=303)
        return login_page(request, next, {"oidc": "The identity provider's sign-in did not succeed."}.get(error, ""))

    @app.post("/login")
    def login(request: Request, username: str = Form(""), password: str = Form(""), next: str = Form("/"),
              csrf_token: str = Form("", alias=CSRF_FIELD)) -> Response:
        if not guard.login_csrf_ok(request, csrf_token):
            return login_page(request, next, "The login form had expired; please sign in again.", 403)
        try:
            user = guard.check_password(username, password, client_address(request))
        except LoginRefused as exc:
            return login_page(request, next, str(exc), exc.status_code)
        response = RedirectResponse(safe_next(next), status_code=303)
        guard.start_session(user, request, response, "password")
        return response

    @app.post("/logout")
    def logout(request: Request, principal: Principal = Depends(guard.need_to_change(Permission.VIEW_JOBS))) -> Response:
        response = RedirectResponse("/login", status_code=303)
        if principal.via == "session":
            guard.end_session(principal, request, response)
        return response

    @app.get("/api/me")
    def me(principal: Principal = any_user) -> dict[str, Any]:
        return {"username": principal.user.username, "role": principal.user.role, "via": principal.via,
                "permissions": sorted(p.value for p in Permission if principal.may(p)),
                "expires_at": principal.credential.expires_at.isoformat()}

    # -- users (admins)

    def users_page(request: Request, done: str = "", error: str = "", status_code: int = 200) -> HTMLResponse:
        return web.page(request, "users.html", status_code, users=access.users(), done=DONE.get(done, ""),
                        error=error, min_length=users.passwords.MIN_LENGTH, now=utcnow())

    @app.get("/users", response_class=HTMLResponse)
    def users_list(request: Request, done: str = "", _: Principal = admin) -> HTMLResponse:
        return users_page(request, done)

    def change(request: Request, principal: Principal, what: str, apply: Any) -> Response:
        actor = users.Actor(principal.user.username, "user", client_address(request))
        try:
            apply(actor)
        except users.UserError as exc:
            return users_page(request, error=str(exc), status_code=400)
        return RedirectResponse(f"/users?done={what}", status_code=303)

    @app.post("/users/add")
    def user_add(request: Request, username: str = Form(...), role: str = Form(...), password: str = Form(...),
                 principal: Principal = admin_change) -> Response:
        return change(request, principal, "added", lambda actor: users.add(access, username, role, password, actor))

    @app.post("/users/role")
    def user_role(request: Request, username: str = Form(...), role: str = Form(...),
                  principal: Principal = admin_change) -> Response:
        return change(request, principal, "role", lambda actor: users.set_role(access, username, role, actor))

    @app.post("/users/disable")
    def user_disable(request: Request, username: str = Form(...), principal: Principal = admin_change) -> Response:
        return change(request, principal, "disable", lambda actor: users.set_disabled(access, username, True, actor))

    @app.post("/users/enable")
    def user_enable(request: Request, username: str = Form(...), principal: Principal = admin_change) -> Response:
        return change(request, principal, "enable", lambda actor: users.set_disabled(access, username, False, actor))

    @app.post("/users/password")
    def user_password(request: Request, username: str = Form(...), password: str = Form(...),
                      principal: Principal = admin_change) -> Response:
        return change(request, principal, "password",
                      lambda actor: users.set_password(access, username, password, actor))

    @app.post("/users/signout")
    def user_signout(request: Request, username: str = Form(...), principal: Principal = admin_change) -> Response:
        return change(request, principal, "signout", lambda actor: users.sign_out(access, username, actor))

    # -- the audit trail (admins)

    def entries(actor: str | None, action: str | None, job: int | None, outcome: str | None, since: str | None,
                limit: int) -> list[Any]:
        if outcome and outcome not in OUTCOMES:
            raise ValueError(f"unknown outcome {outcome!r}; one of {', '.join(OUTCOMES)}")
        return access.audit_entries(limit=limit, since=parse_since(since), actor=(actor or "").strip() or None,
                                    action=(action or "").strip() or None, job_id=job, outcome=outcome or None)

    @app.get("/audit", response_class=HTMLResponse)
    def audit_page(request: Request, actor: str = "", action: str = "", job: int | None = None, outcome: str = "",
                   since: str = "", _: Principal = auditor) -> HTMLResponse:
        try:
            rows = entries(actor, action, job, outcome, since, AUDIT_PAGE_LIMIT)
        except ValueError as exc:
            return web.error_page(request, 400, str(exc))
        return web.page(request, "audit.html", entries=rows, limit=AUDIT_PAGE_LIMIT, outcomes=OUTCOMES,
                        filters={"actor": actor, "action": action, "job": "" if job is None else job,
                                 "outcome": outcome, "since": since or "all"})

    @app.get("/api/audit")
    def api_audit(actor: str = "", action: str = "", job: int | None = None, outcome: str = "", since: str = "",
                  limit: int = Query(1000, ge=1, le=10000), _: Principal = auditor) -> dict[str, Any]:
        try:
            rows = entries(actor, action, job, outcome, since, limit)
        except ValueError as exc:
            raise HTTPException(400, str(exc)) from None
        return {"entries": [row.as_dict() for row in rows]}

    if oidc_enabled:
        from worker.admin import oidc

        oidc.add_routes(app, web)
