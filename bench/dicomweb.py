"""DICOMweb beside DIMSE, in one run, against Orthanc (Debian's, with its DICOMweb plugin):

- ingest: instances/s that dicomweb-client gets stored by STOW-RS (50 instances a request)
  into the node (`lumbarnode listen` with STOW_PORT: spool through fsync + rename, assembly)
  and into Orthanc's own STOW-RS, and the node's C-STORE rate from DCMTK storescu for scale;
- export: instances/s the node's two senders (dicom_io.stow and dicom_io.scu) get stored by
  Orthanc, STOW-RS against C-STORE.
The same 300 single-frame 320x320 MR instances as bench/ingest.py."""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import pydicom
import requests
from dicomweb_client.api import DICOMwebClient

from bench.common import free_port, start_node, stop, summary, wait_for_port
from bench.ingest import make_instances, send
from db import JobStore
from db.access import AccessStore
from dicom_io.scu import send_files
from dicom_io.stow import stow
from tests.helpers.orthanc import Orthanc
from worker.admin import users

BATCH = 50  # instances per STOW-RS request


def _stow_all(url: str, files: list[Path], token: str | None = None) -> float:
    session = requests.Session()
    if token:
        session.headers["Authorization"] = f"Bearer {token}"
    client = DICOMwebClient(url, session=session)
    client.set_http_retry_params(retry=False)
    started = time.perf_counter()
    for i in range(0, len(files), BATCH):
        client.store_instances([pydicom.dcmread(path) for path in files[i:i + BATCH]])
    return time.perf_counter() - started


def _node(work: Path, stow_port: int, dicom_port: int):
    data = work / "node"
    store = JobStore(f"sqlite:///{data / 'lumbarnode.db'}", create=True)
    access = AccessStore(store)
    users.add(access, "STORESCU", "sender", "the-bench-sends-studies", users.Actor("bench", "cli"))
    token = users.issue_token(access, "STORESCU", "bench", 1, users.Actor("bench", "cli"))
    store.dispose()
    env = {"LUMBARNODE_DATA_DIR": str(data), "LUMBARNODE_PORT": str(dicom_port), "LUMBARNODE_HOST": "127.0.0.1",
           "LUMBARNODE_ALLOWED_CALLERS": "STORESCU", "LUMBARNODE_QUIET_PERIOD_S": "60",
           "LUMBARNODE_STOW_PORT": str(stow_port), "LUMBARNODE_STOW_HOST": "127.0.0.1"}
    return start_node("listen", env, work / "listen.log"), token


def run(repeats: int = 3) -> dict:
    rates: dict[str, list[float]] = {k: [] for k in ("node_stow", "orthanc_stow", "node_cstore",
                                                     "export_stow", "export_cstore")}
    for k in range(repeats):
        with tempfile.TemporaryDirectory(prefix="lumbarnode-bench-web-") as folder:
            work = Path(folder)
            orthanc = Orthanc(work / "orthanc")
            try:
                stow_port, dicom_port = free_port(), free_port()
                node, token = _node(work, stow_port, dicom_port)
                try:
                    wait_for_port(stow_port)
                    files = make_instances(work / "a", f"bench-web-node-{k}")
                    rates["node_stow"].append(len(files) / _stow_all(f"http://127.0.0.1:{stow_port}/dicom-web",
                                                                      files, token))
                    files = make_instances(work / "b", f"bench-web-cstore-{k}")
                    rates["node_cstore"].append(len(files) / send(files, dicom_port, "LUMBARNODE", 1))
                finally:
                    stop(node)
                files = make_instances(work / "c", f"bench-web-orthanc-{k}")
                rates["orthanc_stow"].append(len(files) / _stow_all(f"{orthanc.base}/dicom-web", files))
                files = make_instances(work / "d", f"bench-web-export-stow-{k}")
                started = time.perf_counter()
                for i in range(0, len(files), BATCH):
                    stow(files[i:i + BATCH], f"{orthanc.base}/dicom-web")
                rates["export_stow"].append(len(files) / (time.perf_counter() - started))
                files = make_instances(work / "e", f"bench-web-export-cstore-{k}")
                started = time.perf_counter()
                if not send_files(files, "ORTHANC", "127.0.0.1", orthanc.dicom_port, calling_ae="LUMBARNODE").ok:
                    raise RuntimeError("Orthanc refused the C-STORE export")
                rates["export_cstore"].append(len(files) / (time.perf_counter() - started))
            finally:
                orthanc.stop()
    figures = {name: summary(values) for name, values in rates.items()}
    median = {name: f["median"] for name, f in figures.items()}
    return {"instances": 300, "batch": BATCH, "unit": "instances/s", **figures,
            "ratio_node_stow_to_orthanc_stow": median["node_stow"] / median["orthanc_stow"],
            "ratio_node_stow_to_node_cstore": median["node_stow"] / median["node_cstore"],
            "ratio_export_stow_to_cstore": median["export_stow"] / median["export_cstore"]}
