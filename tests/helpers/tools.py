"""What the tests share besides fixtures: ports, polling, the real tools and servers they
start (DCMTK storescp, Redis, a TCP proxy that can cut a connection), PostgreSQL schemas
of their own, and the validators. Fixtures are in tests/conftest.py."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from tests.helpers.services import postgres_url, redis_url


def require_tool(name: str) -> str:
    """The system's tool (Debian's DCMTK, dicom3tools), never a same-named script in the
    virtual environment: pynetdicom 3 installs its own `storescu`, `storescp`, `echoscu`."""
    system = [f"{folder}/{name}" for folder in ("/usr/bin", "/usr/sbin", "/usr/local/bin")]
    path = next((p for p in system if Path(p).is_file()), None) or shutil.which(name)
    if path is None:
        pytest.fail(f"{name} is not installed: run `make test`, which installs the Debian packages")
    return path


DCMTK_ENV = {**os.environ, "TCP_NODELAY": "1"}  # Debian's DCMTK leaves Nagle on otherwise (~45 ms per instance)


POSTGRES_URL = postgres_url()


REDIS_URL = redis_url()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until(predicate, timeout_s: float, what: str, process: subprocess.Popen | None = None):
    """Poll a condition that the system under test makes true; fail with `what` on timeout."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        if process is not None and process.poll() is not None:
            pytest.fail(f"{what}: the process exited with {process.returncode}")
        time.sleep(0.2)
    pytest.fail(f"timed out after {timeout_s:.0f} s waiting for {what}")


@contextmanager
def storescp(ae_title: str, folder: Path, port: int) -> Iterator[subprocess.Popen]:
    """DCMTK storescp playing a PACS: files stored in `folder` under unique names (so that a
    duplicate would show as a second file), listening once the context is entered."""
    from dicom_io.scu import echo

    process = subprocess.Popen([require_tool("storescp"), "-aet", ae_title, "-od", str(folder), "+uf", str(port)],
                               env=DCMTK_ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_until(lambda: echo(ae_title, "127.0.0.1", port, calling_ae="PROBE"), 30, f"storescp {ae_title}", process)
        yield process
    finally:
        process.terminate()
        process.wait(timeout=10)


@contextmanager
def postgres_schema(prefix: str) -> Iterator[str]:
    """A fresh schema in the test PostgreSQL, dropped afterwards: one test's own database."""
    import sqlalchemy as sa

    schema = f"{prefix}_{uuid.uuid4().hex[:12]}"
    engine = sa.create_engine(POSTGRES_URL)
    try:
        with engine.begin() as conn:
            conn.execute(sa.text(f'CREATE SCHEMA "{schema}"'))
    except sa.exc.OperationalError as exc:
        engine.dispose()
        pytest.fail(f"PostgreSQL is not reachable at {POSTGRES_URL} (run `make test`, which starts it): {exc}")
    try:
        yield schema
    finally:
        with engine.begin() as conn:
            conn.execute(sa.text(f'DROP SCHEMA "{schema}" CASCADE'))
        engine.dispose()


def schema_url(schema: str) -> str:
    """The test PostgreSQL URL with `schema` as the search path (Alembic's table included)."""
    return f"{POSTGRES_URL}?options=-csearch_path%3D{schema}"


class RedisServer:
    """A Redis of the test's own on a free port, as our deployments run it for the broker
    but without persistence (the worst case: a restart loses every message it held)."""

    def __init__(self, folder: Path):
        self.folder, self.port, self.process = folder, free_port(), None
        folder.mkdir(parents=True, exist_ok=True)
        self.start()

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        import redis

        self.process = subprocess.Popen(
            [require_tool("redis-server"), "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", str(self.folder)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        client = redis.Redis(port=self.port)
        wait_until(lambda: _answers(client), 20, "redis-server", self.process)

    def kill(self) -> None:
        """SIGKILL, as a crash or an OOM kill would."""
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=10)

    def client(self):
        import redis

        return redis.Redis(port=self.port)


def _answers(client) -> bool:
    import redis

    try:
        return bool(client.ping())
    except redis.RedisError:
        return False


class TcpProxy:
    """A TCP relay between the node and a server that the test can cut and restore: the
    network to the job database failing as it does (connections reset, new ones refused)."""

    def __init__(self, target_port: int, target_host: str = "127.0.0.1"):
        self.target = (target_host, target_port)
        self.port = free_port()
        self._listener: socket.socket | None = None
        self._connections: list[socket.socket] = []
        self._lock = threading.Lock()
        self.restore()

    def restore(self) -> None:
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(64)
        self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def cut(self) -> None:
        listener, self._listener = self._listener, None
        listener.shutdown(socket.SHUT_RDWR)  # wakes the accepting thread
        listener.close()
        with self._lock:
            connections, self._connections = self._connections, []
        for connection in connections:
            _close(connection)

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
                upstream = socket.create_connection(self.target, timeout=5)
                upstream.settimeout(None)
            except OSError:
                if self._listener is not listener:
                    return
                continue
            with self._lock:
                self._connections += [client, upstream]
            for source, sink in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(source, sink), daemon=True).start()

    @staticmethod
    def _pump(source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                sink.sendall(data)
        except OSError:
            pass
        _close(source)
        _close(sink)


def _close(connection: socket.socket) -> None:
    try:
        connection.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    connection.close()


def dciodvfy_errors(path: Path) -> list[str]:
    """Error lines that dicom3tools' dciodvfy reports for one file (warnings are not errors)."""
    result = subprocess.run([require_tool("dciodvfy"), str(path)], capture_output=True, text=True)
    return [line for line in (result.stdout + result.stderr).splitlines() if line.startswith("Error")]
