"""Load and bad input against the running node (`lumbarnode serve`, real associations).

- Load: 16 DCMTK storescu processes at once, each sending 200 instances in 4 series.
- Fuzzing: mutated DICOM instances (truncated, flipped bytes, huge lengths, wrong VRs,
  missing UIDs, bad pixel data, contradictory geometry) sent through real associations,
  and malformed PDUs on the raw socket.

The node must stay up, answer every instance with a status, store what it acknowledged
exactly once and make one job per series. `make reliability` runs 10,000 fuzz cases
(LUMBARNODE_FUZZ_CASES); `make test` runs 300.
"""

from __future__ import annotations

import copy
import os
import socket
import subprocess
import time
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.uid import generate_uid
from pynetdicom import AE
from pynetdicom.sop_class import MRImageStorage

from db import JobStore
from dicom_io.mr_writer import MRSeriesInfo, build_mr_datasets
from dicom_io.scu import echo
from tests.helpers.node import start_serve, stop_group
from tests.helpers.tools import DCMTK_ENV, free_port, require_tool, wait_until
from worker.settings import Settings

FUZZ_CASES = int(os.environ.get("LUMBARNODE_FUZZ_CASES", "300"))


@pytest.fixture(scope="module")
def node(tmp_path_factory):
    root = tmp_path_factory.mktemp("reliability")
    settings = Settings(data_dir=root / "node", host="127.0.0.1", port=free_port(), quiet_period_s=1.0,
                        allowed_callers="STORESCU,FUZZ,SCU")
    process = start_serve(settings, root / "node.log")
    store = JobStore(settings.database_url)
    yield settings, process, store, root
    store.dispose()
    stop_group(process)


def non_lumbar_series(folder: Path, key: str, count: int) -> list[Path]:
    """Small sagittal head MR series: the node stores them and skips their jobs at once."""
    volume = np.random.default_rng(abs(hash(key)) % 2**32).integers(0, 4000, (count, 32, 32), dtype=np.uint16)
    info = MRSeriesInfo(key=key, body_part_examined="HEAD", series_description="T1 SAG",
                        study_description="MR BRAIN")
    folder.mkdir(parents=True)
    paths = []
    for ds in build_mr_datasets(volume, (1.0, 1.0), np.arange(count) * 1.0, info):
        path = folder / f"{ds.SOPInstanceUID}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


def test_sixteen_concurrent_associations_store_every_instance_once(node, reliability):
    settings, process, store, root = node
    senders, series_uids = [], set()
    for a in range(16):
        files = []
        for s in range(4):
            files += non_lumbar_series(root / "load" / f"a{a}s{s}", f"load-{a}-{s}", 50)
        senders.append(files)
    for files in senders:
        for f in files[::50]:
            series_uids.add(pydicom.dcmread(f, stop_before_pixels=True).SeriesInstanceUID)
    started = time.perf_counter()
    processes = [subprocess.Popen([require_tool("storescu"), "-aet", "STORESCU", "-aec", settings.ae_title, "127.0.0.1",
                                   str(settings.port), *map(str, files)], env=DCMTK_ENV, stdout=subprocess.DEVNULL,
                                  stderr=subprocess.PIPE) for files in senders]
    for p in processes:
        assert p.wait(timeout=600) == 0, p.stderr.read().decode()[-300:]
    seconds = time.perf_counter() - started
    sent = sum(map(len, senders))
    spooled = [p for p in settings.spool_dir.rglob("*.dcm")]
    names = {p.stem for p in spooled}
    expected = {f.stem for files in senders for f in files}
    assert expected <= names

    def jobs():
        found = {uid: store.list_jobs(series_instance_uid=uid) for uid in series_uids}
        return found if all(found.values()) else None
    found = wait_until(jobs, 120, "one job per series")
    assert all(len(j) == 1 and j[0].status == "skipped" and j[0].instance_count == 50 for j in found.values())
    peak_mib = int(Path(f"/proc/{process.pid}/status").read_text().split("VmHWM:")[1].split()[0]) / 1024
    reliability(case="load: 16 associations x 200 instances", sent=sent, stored=len(expected & names),
                jobs=len(found), lost=len(expected - names), duplicates=len(spooled) - len(names),
                note=f"{sent / seconds:.0f} instances/s, listener peak RSS {peak_mib:.0f} MiB")


MUTATIONS = ("truncate", "flip_bytes", "huge_length", "wrong_vr", "drop_uid", "bad_pixels", "bad_geometry",
             "garbage_value")


def mutate(ds: pydicom.Dataset, kind: str, rng: np.random.Generator, out: Path) -> Path:
    """One mutated instance as a Part 10 file (the file meta stays valid so it can be sent)."""
    ds = copy.deepcopy(ds)
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    if kind == "drop_uid":
        delattr(ds, str(rng.choice(["StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID"])))
    elif kind == "bad_pixels":
        ds.PixelData = bytes(rng.integers(0, 256, int(rng.integers(0, 3000)), dtype=np.uint8))
    elif kind == "bad_geometry":
        ds.ImageOrientationPatient = [float(v) for v in rng.normal(size=6)]
        ds.PixelSpacing = [float(rng.choice([0.0, -1.0, 1e9])), 1.0]
    elif kind == "garbage_value":
        ds.Rows = int(rng.choice([0, 1, 65535]))
    ds.save_as(out, enforce_file_format=kind != "drop_uid" or "SOPInstanceUID" in ds)
    if kind in ("truncate", "flip_bytes", "huge_length", "wrong_vr"):
        data = bytearray(out.read_bytes())
        start = 132 + 12 + int.from_bytes(data[140:144], "little")  # after preamble and file meta
        if kind == "truncate":
            data = data[:int(rng.integers(start, len(data)))]
        elif kind == "flip_bytes":
            for i in rng.integers(start, len(data), int(rng.integers(1, 20))):
                data[i] = int(rng.integers(0, 256))
        elif kind == "huge_length":
            i = int(rng.integers(start, min(len(data) - 4, start + 400)))
            data[i:i + 4] = (0xFFFFFFF0).to_bytes(4, "little")
        elif kind == "wrong_vr":
            i = int(rng.integers(start, min(len(data) - 2, start + 400)))
            data[i:i + 2] = rng.choice([b"UI", b"US", b"SQ", b"OB", b"XX"])
        out.write_bytes(bytes(data))
    return out


def test_fuzzed_instances_get_a_status_and_the_node_stays_up(node, reliability, tmp_path):
    settings, process, store, _ = node
    rng = np.random.default_rng(2026)
    [base_path] = non_lumbar_series(tmp_path / "base", "fuzz-base", 1)
    base = pydicom.dcmread(base_path)
    ae = AE(ae_title="FUZZ")
    ae.add_requested_context(MRImageStorage)
    statuses: dict[str, int] = {}
    stored_ok, crashes, assoc = [], 0, None
    for case in range(FUZZ_CASES):
        if case % 100 == 0:  # a new series every 100 cases
            base.SeriesInstanceUID = generate_uid()
        kind = MUTATIONS[case % len(MUTATIONS)]
        path = mutate(base, kind, rng, tmp_path / "case.dcm")
        if assoc is None or not assoc.is_established:
            assoc = ae.associate("127.0.0.1", settings.port, ae_title=settings.ae_title)
            assert assoc.is_established, "the node stopped accepting associations"
        try:
            status = assoc.send_c_store(path)
        except Exception:  # the SCU could not even encode what it read: not the node's doing
            statuses["not sent"] = statuses.get("not sent", 0) + 1
            continue
        if not status:  # no response: the association broke
            crashes += 1
            assoc = None
            continue
        code = f"0x{status.Status:04X}"
        statuses[code] = statuses.get(code, 0) + 1
        if status.Status == 0x0000:  # stored under the UID the request declared: the dataset's own
            stored_ok.append(str(pydicom.dcmread(path, stop_before_pixels=True, force=True).SOPInstanceUID))
    if assoc is not None and assoc.is_established:
        assoc.release()
    malformed_pdus = send_malformed_pdus(settings.port, rng, 50)
    # connections that never complete an association hold a slot until the ARTIM timer (10 s) frees it
    wait_until(lambda: echo(settings.ae_title, "127.0.0.1", settings.port, calling_ae="FUZZ"), 30,
               "the node to answer again after the malformed PDUs", process)
    assert crashes == 0
    spooled = {p.stem for p in settings.spool_dir.rglob("*.dcm")}
    assert set(stored_ok) <= spooled  # whatever got success is on disk
    assert not [p for p in settings.spool_dir.rglob("*") if p.name.endswith(".part")]
    reliability(case=f"fuzz: {FUZZ_CASES} mutated instances, {malformed_pdus} bad PDUs", sent=FUZZ_CASES,
                stored=len(stored_ok), jobs="", lost=len(set(stored_ok) - spooled), duplicates=0,
                note=f"crashes {crashes}; statuses " + ", ".join(f"{k} x{v}" for k, v in sorted(statuses.items())))


def send_malformed_pdus(port: int, rng: np.random.Generator, count: int) -> int:
    """Random bytes, truncated and oversized A-ASSOCIATE-RQ headers on raw sockets."""
    payloads = [bytes(rng.integers(0, 256, int(rng.integers(1, 600)), dtype=np.uint8)) for _ in range(count - 2)]
    payloads += [b"\x01\x00\xff\xff\xff\xff\x00\x01", b"\x01\x00\x00\x00\x00\x44" + b"\x00" * 10]
    for payload in payloads:
        with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
            s.sendall(payload)
            s.settimeout(2)
            try:
                s.recv(1024)
            except (TimeoutError, ConnectionError, OSError):
                pass
    return len(payloads)
