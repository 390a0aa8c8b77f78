"""Serving the admin application: uvicorn on the configured address."""

from __future__ import annotations

import logging

from db.access import AccessStore
from worker.admin import users
from worker.admin.app import create_app
from worker.settings import Settings, SettingsError, variable

log = logging.getLogger("worker.admin")


def run_admin(settings: Settings, host: str | None = None, port: int | None = None) -> int:
    """Serve the admin application until interrupted (uvicorn). Binds to
    `settings.admin_host` (127.0.0.1 by default) and `settings.admin_port`; HTTPS with
    ADMIN_TLS_CERT and ADMIN_TLS_KEY."""
    import uvicorn

    host = host or settings.admin_host
    port = settings.admin_port if port is None else port
    if not 0 < port < 65536:
        raise SettingsError(f"--port {port}: expected a TCP port, 1 to 65535")
    for name in ("admin_tls_cert", "admin_tls_key", "oidc_client_secret_file"):
        path = getattr(settings, name)
        if path is not None and not path.is_file():
            raise SettingsError(f"{variable(name)}={path}: no such file")
    _check_bindable(host, port)
    app = create_app(settings)
    first_user(settings, app.state.access)
    if host not in ("127.0.0.1", "::1", "localhost") and not settings.admin_https:
        log.warning("admin page on %s:%d over plain HTTP: passwords and session cookies cross the network in "
                    "clear; set %s and %s, or serve it behind an HTTPS proxy with %s=true", host, port,
                    variable("admin_tls_cert"), variable("admin_tls_key"), variable("admin_secure_cookies"))
    tls = {}
    if settings.admin_tls_cert is not None:
        tls = {"ssl_certfile": str(settings.admin_tls_cert), "ssl_keyfile": str(settings.admin_tls_key)}
    proxies = {}
    if settings.admin_trusted_proxies:
        proxies = {"proxy_headers": True, "forwarded_allow_ips": settings.admin_trusted_proxies}
    else:
        proxies = {"proxy_headers": False}  # nobody's X-Forwarded-For is believed: the rate limit sees the peer
    # No access log: its query strings would carry the accession numbers people search for.
    uvicorn.run(app, host=host, port=port, access_log=False, log_level="info", **tls, **proxies)
    return 0


def first_user(settings: Settings, access: AccessStore) -> None:
    """While there is no user: the ADMIN_INITIAL_USER from its password file (a deployment's
    secret), or a log line saying how to make one."""
    if access.count_users():
        return
    if not settings.admin_initial_user:
        log.warning("the admin page has no user yet, so nobody can sign in: create the first admin with "
                    "`lumbarnode users add NAME --role admin`")
        return
    path = settings.admin_initial_password_file
    try:
        password = path.read_text().strip()
    except OSError as exc:
        raise SettingsError(f"{variable('admin_initial_password_file')}={path}: cannot be read ({exc.strerror})") from None
    try:
        users.add(access, settings.admin_initial_user, "admin", password, users.Actor("settings", "cli"))
    except users.UserError as exc:
        if access.user(settings.admin_initial_user) is None:  # not another admin process first
            raise SettingsError(f"{variable('admin_initial_user')}: {exc}") from None
    log.info("admin user %r created from %s", settings.admin_initial_user, variable("admin_initial_password_file"))


def _check_bindable(host: str, port: int) -> None:
    """A port in use is one line naming it, before uvicorn starts (it would log and exit 1)."""
    import socket

    try:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        with socket.socket(family) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            probe.bind((host, port))
    except OSError as exc:
        raise SettingsError(f"cannot listen on {host}:{port} ({exc.strerror}): another program has the port; "
                            "set LUMBARNODE_ADMIN_PORT or --port") from None
