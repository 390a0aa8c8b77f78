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
    path = shutil.which(name) or (f"/usr/sbin/{name}" if Path(f"/usr/sbin/{name}").exists() else None)
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
