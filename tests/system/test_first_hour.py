"""A new admin's first hour, through the installed `lumbarnode` command as the README gives it.

Every command runs as a subprocess with a clean environment: no LUMBARNODE_* variable
unless a test sets one, HOME in a temporary folder (so the default data folder, the user's
state folder, is the test's own) and a working directory of its own.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
from pathlib import Path

import pydicom
import pytest

from dicom_io.scp import StorageSCP
from dicom_io.scu import SendError, send_files
from dicom_io.series import decodable_transfer_syntaxes
from tests.helpers.tools import free_port, wait_until
from worker.settings import Settings

LUMBARNODE = Path(sys.executable).with_name("lumbarnode")
DEFAULT_PORT = 11112  # the README's default: `serve` and `listen` are started with no settings


def clean_env(home: Path, **settings: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LUMBARNODE_") and k != "XDG_STATE_HOME"}
    env["HOME"] = str(home)
    env.update({f"LUMBARNODE_{k.upper()}": v for k, v in settings.items()})
    return env


def lumbarnode(*args: str, home: Path, cwd: Path, timeout: float = 120, **settings: str):
    cwd.mkdir(parents=True, exist_ok=True)
    return subprocess.run([str(LUMBARNODE), *args], capture_output=True, text=True, timeout=timeout, cwd=cwd,
                          env=clean_env(home, **settings))


def state_dir(home: Path) -> Path:
    return home / ".local" / "state" / "lumbarnode"


class Running:
    """`lumbarnode serve` or `listen` as a background process, its output in a file."""

    def __init__(self, command: str, home: Path, cwd: Path, **settings: str):
        cwd.mkdir(parents=True, exist_ok=True)
        self.log = cwd / f"{command}.log"
        with open(self.log, "w") as log:
            self.process = subprocess.Popen([str(LUMBARNODE), command], cwd=cwd, env=clean_env(home, **settings),
                                            stdout=log, stderr=subprocess.STDOUT)
        port = int(settings.get("port", DEFAULT_PORT))
        wait_until(lambda: _listening(port), 60, f"{command} to listen on {port}", self.process)

    def text(self) -> str:
        return self.log.read_text()

    def stop(self) -> int:
        self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout=150)


def _listening(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


@pytest.fixture(scope="module")
def study(tmp_path_factory) -> list[Path]:
    out = tmp_path_factory.mktemp("study")
    subprocess.run([str(LUMBARNODE), "phantom", "--out", str(out), "--slices", "9", "--seed", "4"], check=True,
                   capture_output=True, timeout=120)
    return sorted((out / "dicom").glob("*.dcm"))


@pytest.fixture
def default_port_free():
    assert not _listening(DEFAULT_PORT), f"port {DEFAULT_PORT} is taken: these tests start the node on the default"


def _jobs(home: Path, cwd: Path) -> list[dict]:
    listed = lumbarnode("jobs", "list", "--json", home=home, cwd=cwd)
    assert listed.returncode == 0, listed.stderr
    return json.loads(listed.stdout)


@pytest.mark.parametrize("command", ["serve", "listen"])
def test_node_starts_on_the_defaults_refuses_unknown_callers_and_says_how_to_allow_one(
        command, study, tmp_path, default_port_free):
    home = tmp_path / "home"
    node = Running(command, home, tmp_path / "run")
    try:
        with pytest.raises(SendError, match="rejected"):
            send_files(study, "LUMBARNODE", "127.0.0.1", DEFAULT_PORT, calling_ae="PACS")
        log = wait_until(lambda: "to accept 'PACS'" in (t := node.text()) and t, 10, "the hint in the log")
    finally:
        assert node.stop() == 0
    assert "no caller is allowed yet, so every association is rejected: set LUMBARNODE_ALLOWED_CALLERS=" in log
    assert "add PACS=PACS@127.0.0.1:<its DICOM port> to LUMBARNODE_ALLOWED_CALLERS" in log
    assert "Traceback" not in log
    assert not list((state_dir(home) / "spool").rglob("*.dcm"))  # refused before anything was stored
    # The data folder is the user's state folder, not the working directory.
    assert (state_dir(home) / "lumbarnode.db").is_file() and not (tmp_path / "run" / "var").exists()
    events = lumbarnode("jobs", "list", "--json", home=home, cwd=tmp_path / "elsewhere")
    assert events.returncode == 0 and json.loads(events.stdout) == []


def test_serve_with_only_the_allowed_caller_set_measures_and_returns_results(study, tmp_path, default_port_free):
    """The one setting the log asks for, copied as it says, and the study comes back measured;
    `jobs list` from another folder sees the job (the data folder does not follow the cwd)."""
    home, received = tmp_path / "home", []
    pacs_port = free_port()
    pacs = StorageSCP("PACS", tmp_path / "pacs", allowed_callers={"LUMBARNODE"},
                      transfer_syntaxes=[str(ts) for ts in decodable_transfer_syntaxes()],
                      on_stored=lambda instance: received.append(instance))
    pacs.start("127.0.0.1", pacs_port)
    node = Running("serve", home, tmp_path / "run", allowed_callers=f"PACS=PACS@127.0.0.1:{pacs_port}")
    try:
        assert send_files(study, "LUMBARNODE", "127.0.0.1", DEFAULT_PORT, calling_ae="PACS").ok
        jobs = wait_until(lambda: (j := _jobs(home, tmp_path / "elsewhere")) and j[0]["status"] in
                          ("done", "failed", "export_failed", "skipped") and j, 240, "the job to end", node.process)
    finally:
        assert node.stop() == 0
        pacs.stop()
    assert jobs[0]["status"] == "done", jobs[0]
    assert {pydicom.dcmread(i.path, stop_before_pixels=True).Modality for i in received} == {"SEG", "SR", "OT"}
    assert "Traceback" not in node.text()


# -- operator mistakes: one line naming the setting, exit code 2, no traceback -----------------


def test_operator_mistakes_get_one_line_and_exit_2(tmp_path):
    home, cwd = tmp_path / "home", tmp_path / "cwd"
    (tmp_path / "bad.toml").write_text("port = [\n")
    (tmp_path / "typo.toml").write_text("quiet_period = 3\n")
    existing = tmp_path / "a-file"
    existing.write_text("x")
    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen()
    busy_port = str(busy.getsockname()[1])
    cases = [
        (("serve",), {"port": "abc"}, "LUMBARNODE_PORT='abc': expected a whole number"),
        (("listen",), {"allowed_callers": "PACS=nowhere"}, "LUMBARNODE_ALLOWED_CALLERS: 'nowhere': expected AE@host:port"),
        (("serve",), {"config_file": str(tmp_path / "missing.toml")}, "missing.toml: no such file"),
        (("config",), {"config_file": str(tmp_path / "bad.toml")}, "bad.toml: not valid TOML"),
        (("config",), {"config_file": str(tmp_path / "typo.toml")}, "unknown setting 'quiet_period'; did you mean 'quiet_period_s'?"),
        (("serve",), {"port": busy_port, "host": "127.0.0.1"}, f"cannot listen on 127.0.0.1:{busy_port} (Address already in use)"),
        (("listen",), {"incomplete_series": "maybe"}, "LUMBARNODE_INCOMPLETE_SERIES='maybe': expected one of skip, measure"),
        (("worker", "--queues", "bogus"), {}, "--queues 'bogus': unknown queue 'bogus'; use inference, export"),
        (("jobs", "list"), {}, "no job database at"),
        (("jobs", "list", "--status", "finished"), {}, "--status 'finished': one of received"),
        (("admin",), {}, "no job database at"),
        (("process", str(tmp_path), "--out", str(existing)), {}, "exists and is not a folder"),
    ]
    try:
        for index, (args, settings, expected) in enumerate(cases):
            result = lumbarnode(*args, home=home / str(index), cwd=cwd, **settings)
            lines = [line for line in result.stderr.splitlines() if line.strip()]
            assert result.returncode == 2, (args, settings, result.stderr)
            assert "Traceback" not in result.stderr and len(lines) == 1, (args, result.stderr)
            assert expected in lines[0] and lines[0].startswith(f"lumbarnode {args[0]}: "), (expected, lines[0])
        # The admin page on a port in use: the same, once there is a database to show.
        assert lumbarnode("db", "upgrade", home=home, cwd=cwd).returncode == 0
        result = lumbarnode("admin", "--port", busy_port, home=home, cwd=cwd)
        assert result.returncode == 2 and f"cannot listen on 127.0.0.1:{busy_port}" in result.stderr
        assert "Traceback" not in result.stderr
    finally:
        busy.close()
    # An argument of the wrong form is argparse's usage line and one error naming the option.
    result = lumbarnode("jobs", "list", "--since", "yesterday", home=home, cwd=cwd)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "argument --since: 'yesterday': expected a date (2026-11-25)" in result.stderr.splitlines()[-1]


def test_a_misspelled_variable_is_warned_with_the_closest_name(tmp_path):
    result = lumbarnode("config", "--json", home=tmp_path, cwd=tmp_path, quiet_period="5", aet_title="X")
    assert result.returncode == 0
    assert ("LUMBARNODE_QUIET_PERIOD is not a lumbarnode setting and is ignored; did you mean "
            "LUMBARNODE_QUIET_PERIOD_S?") in result.stderr
    assert "LUMBARNODE_AET_TITLE is not a lumbarnode setting and is ignored; did you mean LUMBARNODE_AE_TITLE?" \
        in result.stderr
    assert json.loads(result.stdout)["quiet_period_s"] == 2.0
    # Variables of the compose files and the tests are not settings, and not warned about.
    quiet = lumbarnode("config", home=tmp_path, cwd=tmp_path, tag="1.0", test_redis_url="redis://x")
    assert quiet.returncode == 0 and "warning" not in quiet.stderr


# -- the data folder ------------------------------------------------------------------------


def test_jobs_in_another_folder_say_where_they_looked_and_leave_no_database_behind(tmp_path):
    home = tmp_path / "home"
    result = lumbarnode("jobs", "list", home=home, cwd=tmp_path / "elsewhere")
    assert result.returncode == 2 and f"no job database at {state_dir(home) / 'lumbarnode.db'}" in result.stderr
    assert not (state_dir(home) / "lumbarnode.db").exists() and not list(tmp_path.rglob("*.db"))


def test_a_database_that_is_not_the_nodes_is_said_so(tmp_path):
    foreign = tmp_path / "other.db"
    with sqlite3.connect(foreign) as db:
        db.execute("create table patients (id integer)")
    for args in (("jobs", "list"), ("admin",), ("serve",)):
        result = lumbarnode(*args, home=tmp_path, cwd=tmp_path, database_url=f"sqlite:///{foreign}")
        assert result.returncode == 2 and "Traceback" not in result.stderr
        assert "is not lumbarnode's job database: it has tables (patients)" in result.stderr
    with sqlite3.connect(foreign) as db:  # left as it was
        assert [r[0] for r in db.execute("select name from sqlite_master")] == ["patients"]


def test_relative_paths_in_the_config_file_are_taken_from_its_folder(tmp_path):
    config = tmp_path / "etc" / "node.toml"
    config.parent.mkdir()
    config.write_text('data_dir = "state"\nspool_dir = "../spool"\n')
    settings = Settings.from_env({"LUMBARNODE_CONFIG_FILE": str(config)})
    assert settings.data_dir == (tmp_path / "etc" / "state").resolve()
    assert settings.spool_dir == (tmp_path / "spool").resolve()
    assert settings.database_url == f"sqlite:///{tmp_path / 'etc' / 'state' / 'lumbarnode.db'}"


def test_healthz_says_when_the_database_does_not_answer(tmp_path):
    from fastapi.testclient import TestClient

    from worker.admin import create_app

    empty = tmp_path / "empty.db"
    sqlite3.connect(empty).close()
    with TestClient(create_app(Settings(data_dir=tmp_path, database_url=f"sqlite:///{empty}"))) as client:
        health = client.get("/healthz")
    assert health.status_code == 503 and "job database unavailable" in health.text


def test_readme_first_steps_use_the_command_where_make_installs_it():
    """After `make demo` a newcomer types what the README says: `.venv/bin/lumbarnode ...`."""
    from worker.cli import build_parser
    from worker.settings import REPOSITORY

    readme = (REPOSITORY / "README.md").read_text()
    block = readme.split("## First steps", 1)[1].split("```sh\n", 1)[1].split("```", 1)[0]
    commands = [line.split("#")[0].split() for line in block.splitlines() if line.split("#")[0].strip()]
    subcommands = build_parser()._subparsers._group_actions[0].choices
    assert len(commands) >= 6
    for words in commands:
        words = [w for w in words if not (w.startswith("LUMBARNODE_") and "=" in w)]  # VAR=value prefixes
        assert words[0] == ".venv/bin/lumbarnode" and words[1] in subcommands, words
    assert (REPOSITORY / ".venv" / "bin" / "lumbarnode").resolve() == LUMBARNODE.resolve()
