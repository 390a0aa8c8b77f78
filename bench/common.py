"""What every benchmark shares: processes, ports, waiting, statistics, peak memory."""

from __future__ import annotations

import os
import signal
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

DCMTK_ENV = {**os.environ, "TCP_NODELAY": "1"}  # Debian's DCMTK leaves Nagle on otherwise (~45 ms per instance)


def tool(name: str) -> str:
    """The system's DCMTK tool, not pynetdicom's same-named script in the virtual environment."""
    for folder in ("/usr/bin", "/usr/sbin", "/usr/local/bin"):
        if Path(folder, name).is_file():
            return str(Path(folder, name))
    raise FileNotFoundError(f"{name} is not installed (make system-deps)")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(predicate: Callable[[], object], timeout_s: float, what: str, poll_s: float = 0.02):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(poll_s)
    raise TimeoutError(f"timed out after {timeout_s:.0f} s waiting for {what}")


def wait_for_port(port: int, timeout_s: float = 60.0) -> None:
    def open_() -> bool:
        with socket.socket() as s:
            return s.connect_ex(("127.0.0.1", port)) == 0
    wait_for(open_, timeout_s, f"port {port}", 0.05)


def summary(values: list[float]) -> dict[str, float]:
    """Median and spread of repeated runs."""
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "runs": len(values)}


def start_node(command: str, env: dict[str, str], log: Path) -> subprocess.Popen:
    handle = open(log, "w")
    return subprocess.Popen([sys.executable, "-m", "worker.cli", command], env={**os.environ, **env},
                            stdout=handle, stderr=subprocess.STDOUT)


def stop(process: subprocess.Popen, timeout_s: float = 120.0) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def descendants(pid: int) -> list[int]:
    """pid and every process below it (from /proc)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                parent = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(parent, []).append(int(entry.name))
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        found.append(current)
        todo.extend(children.get(current, []))
    return found


def peak_rss_mib(pid: int) -> float:
    """Peak resident memory (VmHWM) of one process, MiB; 0 when it is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def command_line(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""
