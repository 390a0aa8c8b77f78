"""Signing in through the site's identity provider (OpenID Connect, authorization code flow
with PKCE), with Authlib's Starlette client.

The provider is found by discovery (OIDC_ISSUER/.well-known/openid-configuration) at the
first sign-in, so the admin page starts while the provider is away. The ID token is checked
by Authlib: signature against the provider's keys, `iss`, `aud` (this client), `exp`, the
nonce. The user's role comes from the token's OIDC_ROLES_CLAIM (a list of groups or roles)
through OIDC_ROLE_MAP, at every sign-in; a user with none of the mapped groups is refused.
The user is recorded (source `oidc`, no password) so that admins see them, can disable
them, and the audit trail names them.

The state, nonce and PKCE verifier live in a short-lived signed cookie between the redirect
and the callback (Starlette's SessionMiddleware), keyed by a secret made at start: a sign-in
begun on one admin process must end on the same one (one process, or sticky sessions).
"""

from __future__ import annotations

import logging
import secrets
from typing import Any

from authlib.integrations.base_client import OAuthError
from authlib.integrations.starlette_client import OAuth
from fastapi import FastAPI, Request
from fastapi.responses import RedirectResponse, Response
from starlette.middleware.sessions import SessionMiddleware

from db.access import Role
from worker.admin.auth import client_address, safe_next
from worker.admin.web import Web
from worker.settings import Settings

log = logging.getLogger("worker.admin")
FLOW_COOKIE = "lumbarnode_oidc"
FLOW_MAX_AGE_S = 600  # the time a person has at the provider's sign-in page
_RANK = {Role.SENDER: -1, Role.VIEWER: 0, Role.OPERATOR: 1, Role.ADMIN: 2}


def role_of(claims: dict[str, Any], settings: Settings) -> str | None:
    """The highest lumbarnode role the claims' groups map to; None when none does."""
    groups = claims.get(settings.oidc_roles_claim) or []
    if isinstance(groups, str):
        groups = [groups]
    mapping = settings.oidc_roles()
    roles = [Role(mapping[g]) for g in groups if isinstance(g, str) and g in mapping]
    return max(roles, key=_RANK.__getitem__).value if roles else None


def add_routes(app: FastAPI, web: Web) -> None:
    settings, guard, access = web.settings, web.guard, web.access
    issuer = settings.oidc_issuer.rstrip("/")
    secret = settings.oidc_client_secret_file.read_text().strip() if settings.oidc_client_secret_file else ""
    oauth = OAuth()
    oauth.register("idp", client_id=settings.oidc_client_id, client_secret=secret,
                   server_metadata_url=f"{issuer}/.well-known/openid-configuration",
                   client_kwargs={"scope": "openid profile email", "code_challenge_method": "S256"})
    app.add_middleware(SessionMiddleware, secret_key=secrets.token_urlsafe(32), session_cookie=FLOW_COOKIE,
                       max_age=FLOW_MAX_AGE_S, same_site="lax", https_only=settings.admin_https)

    def refused(request: Request, actor: str, detail: str) -> Response:
        access.audit("login", actor=actor, outcome="failed", address=client_address(request),
                     detail=f"OpenID Connect: {detail}"[:1000])
        return RedirectResponse("/login?error=oidc", status_code=303)

    @app.get("/login/oidc")
    async def oidc_start(request: Request, next: str = "/") -> Response:
        request.session["next"] = safe_next(next)
        try:
            return await oauth.idp.authorize_redirect(request, str(request.url_for("oidc_callback")))
        except Exception as exc:  # discovery failed: the provider is away or misconfigured
            log.warning("OpenID Connect: the identity provider at %s did not answer (%s)", issuer, type(exc).__name__)
            return refused(request, "", f"provider unreachable ({type(exc).__name__})")

    @app.get("/login/oidc/callback", name="oidc_callback")
    async def oidc_callback(request: Request) -> Response:
        try:
            # Authlib checks iss by default but checks aud only when asked (an ID token made
            # for another client must not sign anyone in here).
            token = await oauth.idp.authorize_access_token(
                request, claims_options={"iss": {"essential": True, "values": [issuer]},
                                         "aud": {"essential": True, "values": [settings.oidc_client_id]}})
        except OAuthError as exc:
            return refused(request, "", exc.error or "refused")
        except Exception as exc:  # a bad signature, a wrong claim, an unreachable token endpoint
            return refused(request, "", f"{type(exc).__name__}: {exc}")
        claims = dict(token.get("userinfo") or {})
        username = str(claims.get(settings.oidc_username_claim) or claims.get("sub") or "").strip()
        if not username:
            return refused(request, "", "the ID token names no user")
        role = role_of(claims, settings)
        if role is None:
            return refused(request, username, f"none of the groups in {settings.oidc_roles_claim!r} maps to a role")
        try:
            user = access.oidc_user(username, role)
        except ValueError as exc:
            return refused(request, username, str(exc))
        if user.disabled:
            return refused(request, username, "user disabled")
        user = access.login_succeeded(user.id)
        response = RedirectResponse(request.session.pop("next", "/"), status_code=303)
        guard.start_session(user, request, response, f"OpenID Connect ({issuer})")
        return response
