"""Serving the admin application: uvicorn on the configured address."""

from __future__ import annotations

import logging

from worker.admin.app import create_app
from worker.settings import Settings, SettingsError

log = logging.getLogger("worker.admin")


def run_admin(settings: Settings, host: str | None = None, port: int | None = None) -> int:
    """Serve the admin application until interrupted (uvicorn). Binds to
    `settings.admin_host` (127.0.0.1 by default) and `settings.admin_port`."""
    import uvicorn

    host = host or settings.admin_host
    port = settings.admin_port if port is None else port
    if not 0 < port < 65536:
        raise SettingsError(f"--port {port}: expected a TCP port, 1 to 65535")
    _check_bindable(host, port)
    if host not in ("127.0.0.1", "::1", "localhost"):
        log.warning("admin page on %s:%d has no authentication: anyone who can reach it sees the job list",
                    host, port)
    # No access log: its query strings would carry the accession numbers people search for.
    uvicorn.run(create_app(settings), host=host, port=port, access_log=False, log_level="info")
    return 0


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
