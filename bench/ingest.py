"""Ingest: instances per second that DCMTK `storescu` gets stored by the node's listener
(`lumbarnode listen`: allow-list, spool written through fsync + rename, series assembly),
against DCMTK `storescp` writing the same files into a folder, in the same run, and against
pynetdicom's own ceiling (an SCP whose handler only answers success: bench/bare_scp.py),
which says how much of the gap is pynetdicom's and how much the node's. One association
with 300 single-frame 320x320 MR instances, and 4 parallel associations; the receivers
take turns in every repeat so that a busy moment of the machine hits them alike."""

from __future__ import annotations

import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from bench.common import DCMTK_ENV, free_port, start_node, stop, summary, tool, wait_for_port
from dicom_io.mr_writer import MRSeriesInfo, write_mr_series

INSTANCES = 300


def make_instances(folder: Path, key: str) -> list[Path]:
    """300 instances in 3 series of 100 sagittal slices, new UIDs for every run."""
    rng = np.random.default_rng(0)
    files = []
    for series in range(3):
        volume = rng.integers(0, 4096, (INSTANCES // 3, 320, 320), dtype=np.uint16)
        files += write_mr_series(volume, (0.8, 0.8), np.arange(INSTANCES // 3) * 0.5,
                                 MRSeriesInfo(key=f"{key}-{series}"), folder / f"s{series}")
    return files


def send(files: list[Path], port: int, called: str, parallel: int) -> float:
    """Seconds for `parallel` storescu processes to send all files."""
    groups = [files[i::parallel] for i in range(parallel)]
    started = time.perf_counter()
    processes = [subprocess.Popen([tool("storescu"), "-aet", "STORESCU", "-aec", called, "127.0.0.1", str(port),
                                   *map(str, group)], env=DCMTK_ENV, stdout=subprocess.DEVNULL,
                                  stderr=subprocess.PIPE) for group in groups]
    for process in processes:
        _, err = process.communicate()
        if process.returncode != 0:
            raise RuntimeError(f"storescu failed: {err.decode()[-500:]}")
    return time.perf_counter() - started


def one_run(receiver: str, parallel: int, work: Path, run: int) -> float:
    files = make_instances(work / "src", f"bench-ingest-{receiver}-{parallel}-{run}")
    port = free_port()
    out = work / "received"
    out.mkdir()
    if receiver == "storescp":
        process = subprocess.Popen([tool("storescp"), "-aet", "PEER", "-od", str(out), *(["--fork"] if parallel > 1 else []),
                                    str(port)], env=DCMTK_ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        called = "PEER"
    elif receiver == "pynetdicom_bare":
        process = subprocess.Popen([sys.executable, "-m", "bench.bare_scp", str(port)], stdout=subprocess.DEVNULL,
                                   stderr=subprocess.DEVNULL)
        called = "BARE"
    else:
        env = {"LUMBARNODE_DATA_DIR": str(out), "LUMBARNODE_PORT": str(port), "LUMBARNODE_HOST": "127.0.0.1",
               "LUMBARNODE_ALLOWED_CALLERS": "STORESCU", "LUMBARNODE_QUIET_PERIOD_S": "60"}
        process = start_node("listen", env, work / "listen.log")
        called = "LUMBARNODE"
    try:
        wait_for_port(port)
        seconds = send(files, port, called, parallel)
    finally:
        stop(process)
    stored = sum(1 for p in out.rglob("*") if p.is_file() and not p.name.startswith(".") and p.suffix != ".db"
                 and "-wal" not in p.name and "-shm" not in p.name)
    if receiver != "pynetdicom_bare" and stored < len(files):
        raise RuntimeError(f"{receiver}: {stored} of {len(files)} instances stored")
    return len(files) / seconds


RECEIVERS = ("storescp", "pynetdicom_bare", "node")


def run(repeats: int = 3) -> dict:
    results: dict[str, dict] = {}
    for parallel in (1, 4):
        rates: dict[str, list[float]] = {receiver: [] for receiver in RECEIVERS}
        for k in range(repeats):
            for receiver in RECEIVERS if k % 2 == 0 else reversed(RECEIVERS):
                with tempfile.TemporaryDirectory(prefix="lumbarnode-bench-") as work:
                    rates[receiver].append(one_run(receiver, parallel, Path(work), k))
        for receiver in RECEIVERS:
            results[f"{receiver}_{parallel}_assoc"] = summary(rates[receiver])
        node, peer = results[f"node_{parallel}_assoc"]["median"], results[f"storescp_{parallel}_assoc"]["median"]
        bare = results[f"pynetdicom_bare_{parallel}_assoc"]["median"]
        results[f"ratio_{parallel}_assoc"] = node / peer
        results[f"bare_ratio_{parallel}_assoc"] = bare / peer
    return {"instances": INSTANCES, "size": "320x320 uint16, explicit VR little endian",
            "unit": "instances/s", **results}
