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
