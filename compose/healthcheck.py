"""Container health checks for the compose deployment (copied into the images as
/app/healthcheck.py). Exit 0 healthy, 1 not, with one line saying why.

    python /app/healthcheck.py listener        # C-ECHO to this container's listener
    python /app/healthcheck.py worker          # this container's Celery worker answers a ping
    python /app/healthcheck.py admin [--port]  # GET /healthz of this container's admin page

Settings come from the same LUMBARNODE_* variables as the service itself.

- listener: a real DICOM association and C-ECHO on 127.0.0.1:PORT, called AE = AE_TITLE,
  calling AE = the first entry of ALLOWED_CALLERS (the listener rejects unknown callers,
  so an echo from an unlisted AE would fail even when the listener is fine). When the
  listener speaks DICOM TLS (TLS_CERT), so does the echo: it presents the node's own
  certificate and verifies the listener's against TLS_CA, without the host name check
  (127.0.0.1 is not the name in the certificate).
- worker: a Celery control ping through the broker; healthy when a worker whose node name
  ends in @<this container's hostname> answers. This proves the broker is reachable and
  the worker consumes its control queue. A solo-pool worker (one inference process)
  answers between tasks only, so give the check a timeout and retries longer than one job.
- admin: HTTP 200 from /healthz.
"""

from __future__ import annotations

import argparse
import sys
import urllib.error
import urllib.request


def check_listener(timeout_s: float) -> tuple[bool, str]:
    import ssl

    from dicom_io.scu import echo
    from dicom_io.tls import client_context
    from worker.settings import Settings

    settings = Settings.from_env()
    callers = list(settings.callers)
    if not callers and settings.require_known_caller:
        return False, "ALLOWED_CALLERS is empty and REQUIRE_KNOWN_CALLER is on: no caller may associate"
    calling = callers[0] if callers else "HEALTHCHECK"
    tls = None
    if settings.tls_cert is not None:
        tls = client_context(settings.tls_ca, settings.tls_cert, settings.tls_key)
        tls.check_hostname = False
        if settings.tls_ca is None:
            tls.verify_mode = ssl.CERT_NONE  # no CA to verify against: the probe asks only whether it answers
    ok = echo(settings.ae_title, "127.0.0.1", settings.port, calling_ae=calling, timeout_s=timeout_s, tls=tls)
    where = f"{settings.ae_title}@127.0.0.1:{settings.port} (calling AE {calling}{', TLS' if tls else ''})"
    return ok, f"C-ECHO {where}: {'success' if ok else 'no success'}"


def check_worker(timeout_s: float) -> tuple[bool, str]:
    from celery.utils.nodenames import gethostname

    from worker import tasks
    from worker.settings import Settings

    settings = Settings.from_env()
    app = tasks.configure(settings)
    app.conf.broker_connection_retry = False
    app.conf.broker_connection_max_retries = 0
    app.conf.broker_connection_timeout = timeout_s
    app.conf.broker_transport_options = {"socket_connect_timeout": timeout_s, "socket_timeout": timeout_s}
    suffix = "@" + gethostname()
    try:
        replies = app.control.ping(timeout=timeout_s)
    except Exception as exc:  # broker down, refused, DNS: unhealthy, with the reason
        return False, f"broker not reachable: {type(exc).__name__}: {exc}"
    names = sorted(name for reply in replies or [] for name in reply)
    mine = [name for name in names if name.endswith(suffix)]
    if mine:
        return True, f"worker answered: {', '.join(mine)}"
    return False, f"no worker on {gethostname()} answered within {timeout_s:g} s (others: {names or 'none'})"


def check_admin(port: int, timeout_s: float) -> tuple[bool, str]:
    url = f"http://127.0.0.1:{port}/healthz"
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as response:
            return response.status == 200, f"GET {url}: {response.status}"
    except urllib.error.HTTPError as exc:
        return False, f"GET {url}: {exc.code}"
    except (urllib.error.URLError, OSError) as exc:
        return False, f"GET {url}: {exc}"


def main_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("what", choices=("listener", "worker", "admin"))
    parser.add_argument("--timeout", type=float, default=5.0, help="seconds (default 5)")
    parser.add_argument("--port", type=int, default=8080, help="admin port inside the container (default 8080)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = main_parser().parse_args(argv)
    if args.what == "listener":
        ok, why = check_listener(args.timeout)
    elif args.what == "worker":
        ok, why = check_worker(args.timeout)
    else:
        ok, why = check_admin(args.port, args.timeout)
    print(f"{args.what}: {'healthy' if ok else 'UNHEALTHY'}: {why}", flush=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
