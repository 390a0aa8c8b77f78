"""Ingest: instances per second that DCMTK `storescu` gets stored by the node's listener
(`lumbarnode listen`: allow-list, spool written through fsync + rename, series assembly),
against DCMTK `storescp` writing the same files into a folder (`--fork` for parallel
senders), Orthanc (Debian's, storing into its own index), and pynetdicom's own ceiling (an
SCP whose handler only answers success: bench/bare_scp.py), all in the same run. 300
single-frame 320x320 MR instances over 1, 2 and 4 parallel associations; the node with its
default listener processes (one per core), and at 4 associations also with 1 .. cores
processes: the scaling. The receivers take turns in every repeat so that a busy moment of
the machine hits them alike."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from bench.common import DCMTK_ENV, free_port, start_node, stop, summary, tool, wait_for, wait_for_port
from dicom_io.mr_writer import MRSeriesInfo, write_mr_series
from dicom_io.scu import echo
from tests.helpers.orthanc import Orthanc

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
    """Instances/s into `receiver`: storescp, orthanc, pynetdicom_bare, or node_p<processes>."""
    files = make_instances(work / "src", f"bench-ingest-{receiver}-{parallel}-{run}")
    # the 60 MB just written flushed first: a receiver's fsync would otherwise pay for writing
    # out the sender's files (ext4 commits them with its journal), which made runs vary 2-3x
    os.sync()
    port = free_port()
    out = work / "received"
    out.mkdir()
    orthanc = None
    if receiver == "storescp":
        process = subprocess.Popen([tool("storescp"), "-aet", "PEER", "-od", str(out), *(["--fork"] if parallel > 1 else []),
                                    str(port)], env=DCMTK_ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        called = "PEER"
    elif receiver == "orthanc":
        orthanc = Orthanc(out / "orthanc")  # started and answering before it returns
        port, called, process = orthanc.dicom_port, "ORTHANC", None
    elif receiver == "pynetdicom_bare":
        process = subprocess.Popen([sys.executable, "-m", "bench.bare_scp", str(port)], stdout=subprocess.DEVNULL,
                                   stderr=subprocess.DEVNULL)
        called = "BARE"
    else:
        env = {"LUMBARNODE_DATA_DIR": str(out), "LUMBARNODE_PORT": str(port), "LUMBARNODE_HOST": "127.0.0.1",
               "LUMBARNODE_ALLOWED_CALLERS": "STORESCU", "LUMBARNODE_QUIET_PERIOD_S": "60",
               "LUMBARNODE_LISTENER_PROCESSES": receiver.removeprefix("node_p")}
        process = start_node("listen", env, work / "listen.log")
        called = "LUMBARNODE"
    try:
        wait_for_port(port)
        if receiver.startswith("node"):  # its listener processes take associations, not only its socket
            wait_for(lambda: echo(called, "127.0.0.1", port, calling_ae="STORESCU", timeout_s=5), 60, "an echo")
        seconds = send(files, port, called, parallel)
        if orthanc is not None:
            stored = orthanc.get("/statistics")["CountInstances"]
    finally:
        if orthanc is not None:
            orthanc.stop()
        if process is not None:
            stop(process)
    if orthanc is None:
        stored = sum(1 for p in out.rglob("*") if p.is_file() and not p.name.startswith(".") and p.suffix != ".db"
                     and "-wal" not in p.name and "-shm" not in p.name)
    if receiver != "pynetdicom_bare" and stored < len(files):
        raise RuntimeError(f"{receiver}: {stored} of {len(files)} instances stored")
    return len(files) / seconds


PARALLEL = (1, 2, 4)


def run(repeats: int = 3) -> dict:
    cores = os.cpu_count() or 1
    default = f"node_p{cores}"  # LISTENER_PROCESSES' default: one per core
    results: dict[str, dict | float | int] = {"cores": cores}
    for parallel in PARALLEL:
        receivers = ["storescp", "orthanc", "pynetdicom_bare", default]
        if parallel == max(PARALLEL):
            receivers += [f"node_p{n}" for n in range(1, cores) if n <= 4]  # the scaling, 1 .. cores
        rates: dict[str, list[float]] = {receiver: [] for receiver in receivers}
        for k in range(repeats):
            for receiver in receivers if k % 2 == 0 else reversed(receivers):
                with tempfile.TemporaryDirectory(prefix="lumbarnode-bench-") as work:
                    rates[receiver].append(one_run(receiver, parallel, Path(work), k))
        for receiver in receivers:
            name = "node" if receiver == default else receiver
            results[f"{name}_{parallel}_assoc"] = summary(rates[receiver])
        node = results[f"node_{parallel}_assoc"]["median"]
        for peer in ("storescp", "orthanc", "pynetdicom_bare"):
            results[f"ratio_to_{peer}_{parallel}_assoc"] = node / results[f"{peer}_{parallel}_assoc"]["median"]
    results["scaling_4_assoc"] = {n: (results[f"node_p{n}_4_assoc"] if n != cores else results["node_4_assoc"])["median"]
                                  for n in range(1, min(cores, 4) + 1)}
    return {"instances": INSTANCES, "size": "320x320 uint16, explicit VR little endian",
            "listener_processes": cores, "unit": "instances/s", **results}
