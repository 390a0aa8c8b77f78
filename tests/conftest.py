"""Shared fixtures. External tools (DCMTK, dicom3tools) are installed by `make test`:
a missing tool is a failure with a clear message, not a skip.

The test folders mirror the packages (tests/db, tests/dicom_io, tests/pipeline,
tests/training, tests/worker), with tests/system for the node end to end against real
servers and tests/viewer for OHIF. The unit tests of the three inner rooms are the fast
tier (`make test-fast`, marker `fast`: about a minute, no network loaded); `make test`
runs everything. Helpers shared between test modules are in tests/helpers/, never
imported from another test module."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from tests.helpers.tools import RedisServer
from training.datasets import shared_data_dir


FAST_TIER = ("db", "dicom_io", "pipeline")


def pytest_collection_modifyitems(items) -> None:
    for item in items:
        if item.path.parent.name in FAST_TIER and item.path.parent.parent.name == "tests":
            item.add_marker(pytest.mark.fast)


@pytest.fixture
def redis_server(tmp_path) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path / "redis")
    yield server
    server.kill()


@pytest.fixture(scope="session")
def shared_data() -> Path:
    path = shared_data_dir()
    if not (path / "README.md").is_file():
        pytest.skip(f"real data not found at {path} (set LUMBARNODE_SHARED_DATA); real-pixel tests skipped")
    return path


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(1234)


# --- reliability figures: tests record rows, `make reliability` prints them as one table ---

_RELIABILITY: list[dict] = []


@pytest.fixture
def reliability():
    """Call with one row of figures: case, sent, stored, jobs, lost, duplicates, note."""
    return lambda **row: _RELIABILITY.append(row)


def pytest_terminal_summary(terminalreporter):
    if not _RELIABILITY:
        return
    import json

    columns = ("case", "sent", "stored", "jobs", "lost", "duplicates", "note")
    terminalreporter.write_sep("=", "reliability")
    width = max(len(row["case"]) for row in _RELIABILITY) + 1
    terminalreporter.write_line(f"{'case':<{width}}{'sent':>7}{'stored':>8}{'jobs':>6}{'lost':>6}{'dupl.':>7}  note")
    for row in _RELIABILITY:
        terminalreporter.write_line(f"{row['case']:<{width}}{row.get('sent', ''):>7}{row.get('stored', ''):>8}"
                                    f"{row.get('jobs', ''):>6}{row.get('lost', ''):>6}{row.get('duplicates', ''):>7}"
                                    f"  {row.get('note', '')}")
    out = Path(__file__).resolve().parents[1] / "test-artifacts" / "reliability.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps([{k: row.get(k) for k in columns} for row in _RELIABILITY], indent=2) + "\n")
