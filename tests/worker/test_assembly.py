"""Series assembly reads each header once: what the listener parsed on receipt travels with
the instance, so completing a series reads no file again (a real association, the node's
own listener). A series recovered from the spool after a restart has no such headers and
is read from its files (tests/worker/test_incomplete_series.py)."""

from __future__ import annotations

import threading
import types

import pydicom
import pytest

from dicom_io.scu import send_files
from tests.helpers.dicom_files import write_series
from tests.helpers.tools import free_port, wait_until
from worker import assembly
from worker.node import Node
from worker.settings import Settings


@pytest.fixture
def reads(monkeypatch) -> list[str]:
    """The files series assembly opens (its own module's pydicom, nobody else's)."""
    opened: list[str] = []

    def dcmread(path, *args, **kwargs):
        opened.append(str(path))
        return pydicom.dcmread(path, *args, **kwargs)

    monkeypatch.setattr(assembly, "pydicom", types.SimpleNamespace(dcmread=dcmread, Dataset=pydicom.Dataset))
    return opened


def test_a_series_received_is_triaged_from_the_headers_the_listener_read(tmp_path, reads):
    settings = Settings(data_dir=tmp_path / "node", host="127.0.0.1", port=free_port(), quiet_period_s=0.2,
                        allowed_callers="PACS", min_free_spool_mb=0)
    queued: list[int] = []
    node = Node(settings, enqueue=queued.append)
    node.start()
    loop = threading.Thread(target=node.run, daemon=True)
    loop.start()
    try:
        usable = write_series(tmp_path / "sag", "assembly-sagittal", slices=6)
        axial = write_series(tmp_path / "ax", "assembly-axial", slices=4, ImageOrientationPatient=[1, 0, 0, 0, 1, 0],
                             ImagePositionPatient=lambda ds: [0, 0, 4.0 * float(ds.InstanceNumber)])
        for files in (usable, axial):
            assert send_files(files, settings.ae_title, "127.0.0.1", settings.port, calling_ae="PACS").ok
        for files, status in ((usable, "queued"), (axial, "skipped")):
            uid = pydicom.dcmread(files[0], stop_before_pixels=True).SeriesInstanceUID
            job = wait_until(lambda uid=uid: (j := node.store.latest_job(uid)) and j.status == status and j, 30,
                             f"the {status} job")
            assert job.instance_count == len(files) and job.series_description == "T2 TSE SAG"
        assert node.store.latest_job(pydicom.dcmread(axial[0]).SeriesInstanceUID).reason == "not_sagittal:axial"
        assert len(queued) == 1
        assert reads == []  # triage, the completeness check and the series row: no file opened again
    finally:
        node.stop()
        loop.join(timeout=10)
