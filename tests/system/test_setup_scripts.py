"""scripts/start-services.sh against a PostgreSQL configured as a stock Debian 12 one (peer
authentication on the unix socket, scram-sha-256 over TCP, nothing trusted): a throwaway
cluster of this test's own (initdb into a temporary folder, a free port, its own socket
folder), started with pg_ctl, stopped and removed at the end. The script must leave a URL
that connects there, be idempotent, and fail loudly (one line, non-zero exit)."""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import sqlalchemy as sa

from tests.helpers.tools import free_port, wait_until

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "start-services.sh"

# /etc/postgresql/15/main/pg_hba.conf as Debian 12's postgresql-15 installs it (comments left out).
STOCK_DEBIAN_PG_HBA = """\
local   all             postgres                                peer
local   all             all                                     peer
host    all             all             127.0.0.1/32            scram-sha-256
host    all             all             ::1/128                 scram-sha-256
local   replication     all                                     peer
host    replication     all             127.0.0.1/32            scram-sha-256
host    replication     all             ::1/128                 scram-sha-256
"""


@dataclass
class Cluster:
    folder: Path
    socket_dir: Path
    port: int
    owner: str  # OS user that runs it, and its superuser role (peer authentication maps one to the other)

    def env(self, **extra: str) -> dict[str, str]:
        return {**os.environ, "LUMBARNODE_PG_HOST": "127.0.0.1", "LUMBARNODE_PG_PORT": str(self.port),
                "LUMBARNODE_PG_SOCKET_DIR": str(self.socket_dir), "LUMBARNODE_PG_ADMIN": self.owner,
                "LUMBARNODE_SERVICES": "postgresql",
                "LUMBARNODE_TEST_POSTGRES_URL_FILE": str(self.folder / "test-postgres.url"), **extra}


def _postgres_bin() -> Path:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(Path(p).parts[4]))
    if not found:
        pytest.fail("no PostgreSQL server binaries in /usr/lib/postgresql/*/bin: run `make test`, "
                    "which installs the postgresql package")
    return Path(found[-1]).parent


def _as(owner: str, command: list[str], timeout_s: float) -> subprocess.CompletedProcess:
    """`command` run as the cluster's owner (initdb and postgres refuse to run as root)."""
    if os.geteuid() == 0 and owner != "root":
        command = ["runuser", "-u", owner, "--", *command]
    result = subprocess.run(command, capture_output=True, text=True, timeout=timeout_s, cwd="/",
                            stdin=subprocess.DEVNULL)
    assert result.returncode == 0, f"{command} failed: {result.stdout}{result.stderr}"
    return result


def _pg_isready(bin_dir: Path, port: int) -> bool:
    return subprocess.run([str(bin_dir / "pg_isready"), "-q", "-h", "127.0.0.1", "-p", str(port)],
                          timeout=10).returncode == 0


@pytest.fixture
def stock_debian_cluster() -> Iterator[Cluster]:
    bin_dir = _postgres_bin()
    owner = "postgres" if os.geteuid() == 0 else pwd.getpwuid(os.geteuid()).pw_name
    entry = pwd.getpwnam(owner)
    # Not pytest's tmp_path: its folders are root's own (0700), which the postgres user cannot enter.
    folder = Path(tempfile.mkdtemp(prefix="lumbarnode-stock-pg-"))
    data, socket_dir = folder / "data", folder / "socket"
    for path in (folder, socket_dir):
        path.mkdir(exist_ok=True)
        os.chown(path, entry.pw_uid, entry.pw_gid)
    folder.chmod(0o755)
    cluster = Cluster(folder, socket_dir, free_port(), owner)
    try:
        _as(owner, [str(bin_dir / "initdb"), "-D", str(data), "-U", owner, "-E", "UTF8", "--locale=C",
                    "--auth-local=peer", "--auth-host=scram-sha-256"], timeout_s=120)
        (data / "pg_hba.conf").write_text(STOCK_DEBIAN_PG_HBA)
        _as(owner, [str(bin_dir / "pg_ctl"), "-D", str(data), "-l", str(folder / "server.log"), "-w", "-t", "60",
                    "-o", f"-p {cluster.port} -k {socket_dir} -c listen_addresses=127.0.0.1", "start"], timeout_s=90)
        wait_until(lambda: _pg_isready(bin_dir, cluster.port), 30, "the throwaway PostgreSQL")
        yield cluster
    finally:
        if (data / "postmaster.pid").exists():
            subprocess.run((["runuser", "-u", owner, "--"] if os.geteuid() == 0 and owner != "root" else [])
                           + [str(bin_dir / "pg_ctl"), "-D", str(data), "-m", "immediate", "-w", "-t", "30", "stop"],
                           capture_output=True, timeout=60, cwd="/")
        shutil.rmtree(folder, ignore_errors=True)


def _run_script(env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(SCRIPT)], env=env, capture_output=True, text=True, timeout=120,
                          stdin=subprocess.DEVNULL)


def _writes_a_schema(url: str) -> bool:
    engine = sa.create_engine(url)
    try:
        with engine.begin() as conn:
            conn.execute(sa.text('CREATE SCHEMA "setup_probe"'))
            conn.execute(sa.text('CREATE TABLE "setup_probe".t (x int)'))
            conn.execute(sa.text('INSERT INTO "setup_probe".t VALUES (41), (1)'))
            total = conn.execute(sa.text('SELECT sum(x) FROM "setup_probe".t')).scalar_one()
            conn.execute(sa.text('DROP SCHEMA "setup_probe" CASCADE'))
        return total == 42
    finally:
        engine.dispose()


def _error_line(result: subprocess.CompletedProcess) -> str:
    errors = [line for line in result.stderr.splitlines() if line.startswith("start-services.sh: error:")]
    assert len(errors) == 1, f"exit {result.returncode}, stdout {result.stdout!r}, stderr {result.stderr!r}"
    return errors[0]


def test_start_services_gives_the_tests_a_working_url_on_a_stock_debian_postgresql(stock_debian_cluster):
    cluster = stock_debian_cluster
    # The cluster is really stock-like: the old passwordless URL is refused.
    refused = sa.create_engine(f"postgresql+psycopg://{cluster.owner}@127.0.0.1:{cluster.port}/postgres")
    with pytest.raises(sa.exc.OperationalError, match="password"):
        refused.connect().close()
    refused.dispose()

    first = _run_script(cluster.env())
    assert first.returncode == 0, first.stderr
    url_file = cluster.folder / "test-postgres.url"
    assert url_file.is_file(), f"the script wrote no URL file: {first.stdout}{first.stderr}"
    url = url_file.read_text().strip()
    parsed = sa.engine.make_url(url)
    assert (parsed.host, parsed.port, parsed.username) == ("127.0.0.1", cluster.port, "lumbarnode_test")
    assert _writes_a_schema(url)
    # the tests read the URL from that file (tests/helpers/tools.py); the variable still overrides it
    code = "import tests.helpers.tools as t; print(t.POSTGRES_URL)"
    shown = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60,
                           env={**cluster.env(), "LUMBARNODE_TEST_POSTGRES_URL": ""})
    assert shown.stdout.strip() == url, shown.stderr
    shown = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60,
                           env={**cluster.env(), "LUMBARNODE_TEST_POSTGRES_URL": "postgresql+psycopg://x@y/z"})
    assert shown.stdout.strip() == "postgresql+psycopg://x@y/z", shown.stderr

    again = _run_script(cluster.env())  # idempotent: same URL, still connects, nothing re-created
    assert again.returncode == 0, again.stderr
    assert "creating" not in again.stdout
    assert url_file.read_text().strip() == url
    assert _writes_a_schema(url)


def test_start_services_fails_loudly_when_createdb_fails(stock_debian_cluster):
    cluster = stock_debian_cluster
    assert _run_script(cluster.env()).returncode == 0
    url = (cluster.folder / "test-postgres.url").read_text().strip()
    # A session on template1 makes CREATE DATABASE fail ("source database is being accessed by other users").
    engine = sa.create_engine(sa.engine.make_url(url).set(database="template1"))
    try:
        with engine.connect():
            result = _run_script(cluster.env(LUMBARNODE_TEST_PG_DB="lumbarnode_other"))
    finally:
        engine.dispose()
    assert result.returncode != 0
    line = _error_line(result)
    assert "createdb lumbarnode_other failed" in line and "template1" in line, line


def test_start_services_fails_loudly_when_the_peer_login_fails(stock_debian_cluster):
    cluster = stock_debian_cluster  # an OS user without a role of that name: peer authentication refuses it
    result = _run_script(cluster.env(LUMBARNODE_PG_ADMIN="nobody"))
    assert result.returncode != 0
    line = _error_line(result)
    assert "creating PostgreSQL role lumbarnode_test as nobody" in line and "nobody" in line, line
    assert not (cluster.folder / "test-postgres.url").exists()


def test_start_services_fails_loudly_when_postgresql_cannot_be_started(tmp_path):
    nothing_there = free_port()
    env = {**os.environ, "LUMBARNODE_PG_PORT": str(nothing_there), "LUMBARNODE_PG_CLUSTER": "99 nonexistent",
           "LUMBARNODE_SERVICES": "postgresql", "LUMBARNODE_TEST_POSTGRES_URL_FILE": str(tmp_path / "url")}
    result = _run_script(env)
    assert result.returncode != 0
    line = _error_line(result)
    assert "pg_ctlcluster 99 nonexistent start failed" in line and "does not exist" in line, line
