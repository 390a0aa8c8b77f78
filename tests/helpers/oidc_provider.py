"""A stand-in for a real OpenID Connect identity provider (Keycloak, Entra ID, ...), for the
tests of the admin page's "Sign in with OpenID Connect": no real IdP can run on the test
machine, so this small one serves the authorization-code flow with PKCE (S256) the way the
specs say (OpenID Connect Core 1.0 and Discovery 1.0, RFC 6749, RFC 7636), closely enough that
an unmodified client library (Authlib) works against it. It has one client, keeps everything
in memory, returns all of a user's claims whatever the scope, and can be told to misbehave
(`id_token_overrides`, `wrong_signing_key`) so that tests see the client refuse bad tokens."""

from __future__ import annotations

import base64
import hashlib
import hmac
import html
import secrets
import socket
import threading
import time
import uuid
from typing import Any
from urllib.parse import unquote_plus, urlencode

import uvicorn
from joserfc import jwt
from joserfc.jwk import KeySet, RSAKey
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from starlette.routing import Route

CODE_TTL_S = 60
TOKEN_TTL_S = 300
NO_STORE = {"Cache-Control": "no-store", "Pragma": "no-cache"}  # RFC 6749 5.1


def _b64url_sha256(data: str, half: bool = False) -> str:
    digest = hashlib.sha256(data.encode("ascii")).digest()
    return base64.urlsafe_b64encode(digest[:16] if half else digest).rstrip(b"=").decode()


class OidcProvider:
    def __init__(self, client_id: str, client_secret: str, redirect_uris: list[str] | None = None):
        self.client_id, self.client_secret = client_id, client_secret
        self.redirect_uris: list[str] = list(redirect_uris or [])  # mutable: the app's port may come later
        self.users: dict[str, dict[str, Any]] = {}
        self.token_requests: list[dict[str, Any]] = []
        self.logins: list[str] = []
        self.id_token_overrides: dict[str, Any] = {}
        self.wrong_signing_key = False
        self.key = RSAKey.generate_key(2048, parameters={"kid": uuid.uuid4().hex[:16], "use": "sig", "alg": "RS256"})
        self._other_key: RSAKey | None = None
        self._pending: dict[str, dict[str, str]] = {}  # login forms shown, by request id
        self._codes: dict[str, dict[str, Any]] = {}
        self._used_codes: dict[str, str] = {}  # code -> the access token it bought (revoked on replay)
        self._tokens: dict[str, tuple[str, float]] = {}  # access token -> (username, expiry)
        # Bind now (not a free_port() guess) so the port cannot be taken before uvicorn starts.
        self._socket = socket.socket()
        self._socket.bind(("127.0.0.1", 0))
        self.issuer = f"http://127.0.0.1:{self._socket.getsockname()[1]}"
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None

    def add_user(self, username: str, password: str, **claims: Any) -> None:
        self.users[username] = {"password": password, "sub": uuid.uuid4().hex,
                                "claims": {**claims, "preferred_username": username}}

    # -- lifecycle ------------------------------------------------------------------------------
    def __enter__(self) -> OidcProvider:
        routes = [Route("/.well-known/openid-configuration", self._discovery),
                  Route("/jwks", self._jwks),
                  Route("/authorize", self._authorize, methods=["GET", "POST"]),
                  Route("/token", self._token, methods=["POST"]),
                  Route("/userinfo", self._userinfo, methods=["GET", "POST"])]  # Core 5.3.1: both
        config = uvicorn.Config(Starlette(routes=routes), log_level="warning", lifespan="off")
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, kwargs={"sockets": [self._socket]},
                                        name="oidc-provider", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + 15
        while not self._server.started:  # poll uvicorn's own flag
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the test OpenID provider did not start")
            time.sleep(0.01)
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._server is not None and self._thread is not None
        self._server.should_exit = True
        self._thread.join(10)
        self._socket.close()

    # -- endpoints ------------------------------------------------------------------------------
    async def _discovery(self, request: Request) -> Response:
        return JSONResponse({
            "issuer": self.issuer,
            "authorization_endpoint": f"{self.issuer}/authorize",
            "token_endpoint": f"{self.issuer}/token",
            "userinfo_endpoint": f"{self.issuer}/userinfo",
            "jwks_uri": f"{self.issuer}/jwks",
            "response_types_supported": ["code"],
            "grant_types_supported": ["authorization_code"],
            "subject_types_supported": ["public"],
            "id_token_signing_alg_values_supported": ["RS256"],
            "scopes_supported": ["openid", "profile", "email"],
            "token_endpoint_auth_methods_supported": ["client_secret_basic", "client_secret_post"],
            "code_challenge_methods_supported": ["S256"],
            "claims_supported": ["iss", "sub", "aud", "exp", "iat", "auth_time", "nonce",
                                 "preferred_username", "name", "email", "groups"],
        })

    async def _jwks(self, request: Request) -> Response:
        return JSONResponse(KeySet([self.key]).as_dict(private=False))

    async def _authorize(self, request: Request) -> Response:
        if request.method == "GET":
            params = dict(request.query_params)
            # Unknown client or redirect URI: show an error, never redirect (Core 3.1.2.6).
            if params.get("client_id") != self.client_id or params.get("redirect_uri") not in self.redirect_uris:
                return HTMLResponse("<h1>Invalid client_id or redirect_uri</h1>", status_code=400)
            error = None
            if params.get("response_type") != "code":
                error = "unsupported_response_type"
            elif "openid" not in params.get("scope", "").split():
                error = "invalid_scope"
            elif "code_challenge" in params and params.get("code_challenge_method") != "S256":
                error = "invalid_request"  # RFC 7636 defaults to "plain", which is not offered
            if error:
                return self._redirect(params, error=error)
            request_id = secrets.token_urlsafe(16)
            self._pending[request_id] = params
            return self._login_form(request_id)
        form = await request.form()
        request_id = str(form.get("request_id", ""))
        params = self._pending.get(request_id)
        if params is None:
            return HTMLResponse("<h1>Unknown or finished sign-in request</h1>", status_code=400)
        username, password = str(form.get("username", "")), str(form.get("password", ""))
        user = self.users.get(username)
        if user is None or not hmac.compare_digest(user["password"], password):
            return self._login_form(request_id, "Invalid username or password", 401)
        del self._pending[request_id]
        code = secrets.token_urlsafe(32)
        self._codes[code] = {"params": params, "username": username, "auth_time": int(time.time()),
                             "expires": time.monotonic() + CODE_TTL_S}
        self.logins.append(username)
        return self._redirect(params, code=code)

    def _redirect(self, params: dict[str, str], **answer: str) -> Response:
        if "state" in params:
            answer["state"] = params["state"]
        uri = params["redirect_uri"]
        return RedirectResponse(f"{uri}{'&' if '?' in uri else '?'}{urlencode(answer)}", status_code=302)

    def _login_form(self, request_id: str, error: str = "", status: int = 200) -> Response:
        message = f'<p role="alert">{html.escape(error)}</p>' if error else ""
        return HTMLResponse(
            f"<!doctype html><html><head><title>Sign in</title></head><body><h1>Sign in</h1>{message}"
            f'<form method="post" action="/authorize">'
            f'<input type="hidden" name="request_id" value="{html.escape(request_id)}">'
            f'<label for="username">Username</label> <input id="username" name="username" autocomplete="username">'
            f'<label for="password">Password</label> <input id="password" name="password" type="password">'
            f'<button type="submit">Sign in</button></form></body></html>', status_code=status)

    async def _token(self, request: Request) -> Response:
        form = {k: str(v) for k, v in (await request.form()).items()}
        method, client_id, secret = self._client_credentials(request, form)

        def fail(error: str, status: int = 400) -> Response:
            self.token_requests.append({"auth_method": method, "success": False, "error": error})
            # A client that tried HTTP Basic gets 401 with a challenge (RFC 6749 5.2).
            challenge = {"WWW-Authenticate": 'Basic realm="token"'} if method == "client_secret_basic" else {}
            headers = {**NO_STORE, **challenge}
            return JSONResponse({"error": error}, status_code=status, headers=headers)

        if method == "ambiguous":
            return fail("invalid_request")  # RFC 6749 2.3: one authentication method at a time
        if client_id != self.client_id or secret is None or not hmac.compare_digest(secret, self.client_secret):
            return fail("invalid_client", 401)
        if form.get("grant_type") != "authorization_code":
            return fail("unsupported_grant_type")
        code = form.get("code", "")
        if code in self._used_codes:  # replay: revoke what the code bought (RFC 6749 4.1.2)
            self._tokens.pop(self._used_codes[code], None)
            return fail("invalid_grant")
        grant = self._codes.pop(code, None)
        if grant is None or grant["expires"] < time.monotonic():
            return fail("invalid_grant")
        params = grant["params"]
        if params["client_id"] != client_id or params["redirect_uri"] != form.get("redirect_uri"):
            return fail("invalid_grant")
        if "code_challenge" in params:
            verifier = form.get("code_verifier", "")
            if not verifier or not hmac.compare_digest(_b64url_sha256(verifier), params["code_challenge"]):
                return fail("invalid_grant")  # RFC 7636 4.6
        access_token = secrets.token_urlsafe(32)
        self._used_codes[code] = access_token
        self._tokens[access_token] = (grant["username"], time.monotonic() + TOKEN_TTL_S)
        self.token_requests.append({"auth_method": method, "success": True, "error": None})
        return JSONResponse({"access_token": access_token, "token_type": "Bearer", "expires_in": TOKEN_TTL_S,
                             "id_token": self._id_token(grant, access_token),
                             "scope": params.get("scope", "openid")}, headers=NO_STORE)

    def _client_credentials(self, request: Request, form: dict[str, str]) -> tuple[str | None, str | None, str | None]:
        """(auth method, client id, secret); Basic credentials are form-urlencoded (RFC 6749 2.3.1)."""
        header = request.headers.get("authorization", "")
        if header[:6].lower() == "basic ":
            if "client_secret" in form:
                return "ambiguous", None, None
            try:
                client_id, _, secret = base64.b64decode(header[6:]).decode().partition(":")
            except ValueError:
                return "client_secret_basic", None, None
            return "client_secret_basic", unquote_plus(client_id), unquote_plus(secret)
        if "client_secret" in form:
            return "client_secret_post", form.get("client_id"), form["client_secret"]
        return None, form.get("client_id"), None

    def _id_token(self, grant: dict[str, Any], access_token: str) -> str:
        user, now = self.users[grant["username"]], int(time.time())
        claims: dict[str, Any] = {**user["claims"], "iss": self.issuer, "sub": user["sub"], "aud": self.client_id,
                                  "iat": now, "exp": now + TOKEN_TTL_S, "auth_time": grant["auth_time"],
                                  "at_hash": _b64url_sha256(access_token, half=True)}  # Core 3.1.3.6
        if "nonce" in grant["params"]:
            claims["nonce"] = grant["params"]["nonce"]
        claims.update(self.id_token_overrides)
        key = self.key
        if self.wrong_signing_key:  # same kid, other key: the client must reject the signature
            self._other_key = self._other_key or RSAKey.generate_key(2048, parameters={"kid": self.key.kid})
            key = self._other_key
        return jwt.encode({"alg": "RS256", "typ": "JWT", "kid": self.key.kid}, claims, key)

    async def _userinfo(self, request: Request) -> Response:
        header = request.headers.get("authorization", "")
        entry = self._tokens.get(header[7:]) if header[:7].lower() == "bearer " else None
        if entry is None or entry[1] < time.monotonic():
            return JSONResponse({"error": "invalid_token"}, status_code=401,
                                headers={"WWW-Authenticate": 'Bearer error="invalid_token"'})
        user = self.users[entry[0]]
        return JSONResponse({**user["claims"], "sub": user["sub"]})
