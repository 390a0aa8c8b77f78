"""Shared fixtures. External tools (DCMTK, dicom3tools) are installed by `make test`:
a missing tool is a failure with a clear message, not a skip."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from training.real_data import shared_data_dir


def require_tool(name: str) -> str:
    """The system's tool (Debian's DCMTK, dicom3tools), never a same-named script in the
    virtual environment: pynetdicom 3 installs its own `storescu`, `storescp`, `echoscu`."""
    system = [f"{folder}/{name}" for folder in ("/usr/bin", "/usr/sbin", "/usr/local/bin")]
    path = next((p for p in system if Path(p).is_file()), None) or shutil.which(name)
    if path is None:
        pytest.fail(f"{name} is not installed: run `make test`, which installs the Debian packages")
    return path


def dciodvfy_errors(path: Path) -> list[str]:
    """Error lines that dicom3tools' dciodvfy reports for one file (warnings are not errors)."""
    result = subprocess.run([require_tool("dciodvfy"), str(path)], capture_output=True, text=True)
    return [line for line in (result.stdout + result.stderr).splitlines() if line.startswith("Error")]


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
    terminalreporter.write_line(f"{'case':<44}{'sent':>7}{'stored':>8}{'jobs':>6}{'lost':>6}{'dupl.':>7}  note")
    for row in _RELIABILITY:
        terminalreporter.write_line(f"{row['case']:<44}{row.get('sent', ''):>7}{row.get('stored', ''):>8}"
                                    f"{row.get('jobs', ''):>6}{row.get('lost', ''):>6}{row.get('duplicates', ''):>7}"
                                    f"  {row.get('note', '')}")
    out = Path(__file__).resolve().parents[1] / "test-artifacts" / "reliability.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps([{k: row.get(k) for k in columns} for row in _RELIABILITY], indent=2) + "\n")
