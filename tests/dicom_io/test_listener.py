"""The storage SCP over real associations (DCMTK and pynetdicom as senders), the spool,
the allow-list, refusals, and the series rules. No workers here: tests/system/test_node.py runs
the whole node."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pynetdicom import AE
from pynetdicom.sop_class import MRImageStorage, UltrasoundImageStorage

from dicom_io.mr_writer import MRSeriesInfo, build_mr_datasets
from dicom_io.scp import StorageSCP, spool_path
from dicom_io.scu import echo, send_files
from dicom_io.series import decodable_transfer_syntaxes
from dicom_io.triage import SeriesRules, triage
from tests.helpers.dicom_files import save
from tests.helpers.tools import DCMTK_ENV, require_tool, wait_until
from worker.settings import Destination, Settings, parse_callers


def series_files(folder: Path, key: str = "listener", n: int = 4, **info) -> list[Path]:
    volume = np.random.default_rng(0).integers(0, 4000, (n, 32, 24), dtype=np.uint16)
    datasets = build_mr_datasets(volume, (0.8, 0.8), [4.0 * k for k in range(n)], MRSeriesInfo(key=key, **info))
    return sorted(save(datasets, folder).iterdir())


@pytest.fixture
def scp(tmp_path):
    stored, ended, refused = [], [], []
    lock = threading.Lock()

    def on_stored(instance):
        with lock:
            stored.append(instance)

    listener = StorageSCP("LUMBARNODE", tmp_path / "spool", allowed_callers={"STORESCU", "PACS"},
                          transfer_syntaxes=[str(t) for t in decodable_transfer_syntaxes()],
                          on_stored=on_stored,
                          on_association_end=lambda association, released: ended.append((association, released)),
                          on_refused=lambda uid, reason: refused.append(reason))
    listener.start("127.0.0.1", 0)
    yield listener, stored, ended, refused
    listener.stop()


def test_dcmtk_storescu_series_lands_in_the_spool_byte_for_byte(scp, tmp_path):
    listener, stored, ended, _ = scp
    files = series_files(tmp_path / "src")
    done = subprocess.run([require_tool("storescu"), "-aet", "STORESCU", "-aec", "LUMBARNODE", "127.0.0.1",
                           str(listener.port), *map(str, files)], capture_output=True, text=True, env=DCMTK_ENV)
    assert done.returncode == 0, done.stderr
    assert len(stored) == 4 and set(ended) == {(s.association, True) for s in stored}  # one, released
    for path in files:
        source = pydicom.dcmread(path)
        target = spool_path(listener.spool, source.StudyInstanceUID, source.SeriesInstanceUID, source.SOPInstanceUID)
        again = pydicom.dcmread(target)
        assert again.SOPInstanceUID == source.SOPInstanceUID
        np.testing.assert_array_equal(again.pixel_array, source.pixel_array)
    assert not list(listener.spool.rglob("*.part"))  # no temporary file left behind


def test_echo_succeeds_and_an_unknown_caller_is_rejected(scp):
    listener = scp[0]
    assert echo("LUMBARNODE", "127.0.0.1", listener.port, calling_ae="PACS")
    assert not echo("LUMBARNODE", "127.0.0.1", listener.port, calling_ae="INTRUDER")
    assert not echo("WRONG_AE", "127.0.0.1", listener.port, calling_ae="PACS")  # wrong called AE title
    done = subprocess.run([require_tool("echoscu"), "-aet", "STORESCU", "-aec", "LUMBARNODE", "127.0.0.1",
                           str(listener.port)], capture_output=True, text=True, env=DCMTK_ENV)
    assert done.returncode == 0, done.stderr


def test_rejections_say_why_in_the_log_and_to_the_node(tmp_path, caplog):
    """An admin reading the log (and the node's events) sees who was turned away and why."""
    rejected = []
    listener = StorageSCP("LUMBARNODE", tmp_path / "spool", allowed_callers={"PACS"},
                          transfer_syntaxes=[str(t) for t in decodable_transfer_syntaxes()],
                          on_rejected=lambda calling, reason, host: rejected.append((calling, reason)))
    listener.start("127.0.0.1", 0)
    try:
        with caplog.at_level(logging.WARNING, logger="lumbarnode.scp"):
            assert not echo("LUMBARNODE", "127.0.0.1", listener.port, calling_ae="INTRUDER")
            done = subprocess.run([require_tool("echoscu"), "-aet", "PACS", "-aec", "OTHERNODE", "127.0.0.1",
                                   str(listener.port)], capture_output=True, text=True, env=DCMTK_ENV)
            assert done.returncode != 0  # DCMTK's echoscu, called with the wrong AE title
            assert echo("LUMBARNODE", "127.0.0.1", listener.port, calling_ae="PACS")  # the right one still works
    finally:
        listener.stop()
    assert rejected == [("INTRUDER", "calling AE title 'INTRUDER' is not an allowed caller"),
                        ("PACS", "called AE title 'OTHERNODE' is not this node's ('LUMBARNODE')")]
    warnings = [r.getMessage() for r in caplog.records if "rejected" in r.getMessage()]
    assert len(warnings) == 2 and "127.0.0.1" in warnings[0]
    assert "'INTRUDER' is not an allowed caller" in warnings[0] and "'OTHERNODE'" in warnings[1]


def test_a_duplicate_is_accepted_and_keeps_the_first_file(scp, tmp_path):
    listener, stored, _, _ = scp
    files = series_files(tmp_path / "src", n=2)
    assert send_files(files, "LUMBARNODE", "127.0.0.1", listener.port, calling_ae="PACS").ok
    first, content = stored[0].path.stat(), stored[0].path.read_bytes()
    os.utime(stored[0].path, ns=(first.st_atime_ns, first.st_mtime_ns - 10**9))  # a second older
    assert send_files(files[:1], "LUMBARNODE", "127.0.0.1", listener.port, calling_ae="PACS").ok
    again = stored[-1].path.stat()
    assert stored[-1].duplicate and again.st_ino == first.st_ino and stored[-1].path.read_bytes() == content
    # not written again, but touched: a retention cleaner deleting the series now keeps it
    assert again.st_mtime_ns > first.st_mtime_ns - 10**9
    assert len(list(listener.spool.rglob("*.dcm"))) == 2


def test_an_unsupported_sop_class_gets_a_refusal_status_not_an_abort(scp, tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="lumbarnode.scp")
    listener, stored, _, refused = scp
    ds = pydicom.dcmread(series_files(tmp_path / "src", n=2)[0])
    ds.SOPClassUID = UltrasoundImageStorage
    ds.Modality = "US"
    ae = AE(ae_title="PACS")
    ae.add_requested_context(UltrasoundImageStorage)
    ae.add_requested_context(MRImageStorage)
    assoc = ae.associate("127.0.0.1", listener.port, ae_title="LUMBARNODE")
    assert assoc.is_established
    status = assoc.send_c_store(ds)
    assert status.Status == 0x0122
    assert assoc.is_established  # the association goes on
    mr = pydicom.dcmread(series_files(tmp_path / "src2", key="other", n=2)[0])
    assert assoc.send_c_store(mr).Status == 0x0000
    assoc.release()
    assert refused == [f"sop_class_not_supported:{UltrasoundImageStorage}"]
    # one log line for the association, with what it delivered (an association that only echoes has none)
    ended = wait_until(lambda: [r.getMessage() for r in caplog.records if "released after" in r.getMessage()], 10,
                       "the association's log line")
    assert len(ended) == 1 and "from PACS released" in ended[0] and "1 instances stored, 1 refused" in ended[0]
    assert len(stored) == 1


def test_an_instance_with_a_path_like_uid_is_refused(scp, tmp_path):
    listener, stored, _, refused = scp
    ds = pydicom.dcmread(series_files(tmp_path / "src", n=2)[0])
    ds.SeriesInstanceUID = "../../etc"
    ae = AE(ae_title="PACS")
    ae.add_requested_context(MRImageStorage)
    assoc = ae.associate("127.0.0.1", listener.port, ae_title="LUMBARNODE")
    status = assoc.send_c_store(ds)
    assoc.release()
    assert status.Status == 0xC000 and "SeriesInstanceUID" in status.ErrorComment
    assert stored == [] and refused == ["invalid_uids"]
    assert not any(p.is_file() for p in listener.spool.rglob("*"))


# --- series rules ----------------------------------------------------------------------

def header(tmp_path, **changes) -> pydicom.Dataset:
    ds = pydicom.dcmread(series_files(tmp_path, n=2)[0], stop_before_pixels=True)
    for key, value in changes.items():
        setattr(ds, key, value)
    return ds


def test_series_rules(tmp_path):
    rules = SeriesRules.from_text("LSPINE,LUMBAR", r"(?i)lumb", 30.0)
    assert triage(header(tmp_path / "a"), 15, rules) is None
    assert triage(header(tmp_path / "b", ImageOrientationPatient=[1, 0, 0, 0, 1, 0]), 15, rules) == "not_sagittal:axial"
    assert triage(header(tmp_path / "c", ImageOrientationPatient=[1, 0, 0, 0, 0, -1]), 15, rules) == "not_sagittal:coronal"
    assert triage(header(tmp_path / "d", BodyPartExamined="HEAD", SeriesDescription="T2 SAG",
                         StudyDescription="MR BRAIN"), 15, rules) == "not_lumbar:head"
    assert triage(header(tmp_path / "e", BodyPartExamined="", SeriesDescription="T2 SAG",
                         StudyDescription="MRT LUMBALE WS"), 15, rules) is None  # by description
    assert triage(header(tmp_path / "f", Modality="CT"), 15, rules) == "not_mr"
    assert triage(header(tmp_path / "g"), 1, rules) == "single_slice"


# --- settings --------------------------------------------------------------------------

def test_settings_from_environment_and_file(tmp_path):
    config = tmp_path / "node.toml"
    config.write_text('ae_title = "SITE_AI"\nport = 4242\nquiet_period_s = 5\n')
    settings = Settings.from_env({"LUMBARNODE_CONFIG_FILE": str(config), "LUMBARNODE_PORT": "11113",
                                  "LUMBARNODE_DATA_DIR": str(tmp_path / "data"), "LUMBARNODE_KEY_IMAGE": "false",
                                  "LUMBARNODE_ALLOWED_CALLERS": "ORTHANC=ORTHANC@10.0.0.5:4242, MODALITY"})
    assert (settings.ae_title, settings.port, settings.quiet_period_s, settings.key_image) == ("SITE_AI", 11113, 5.0, False)
    assert settings.spool_dir == tmp_path / "data" / "spool"
    assert settings.database_url == f"sqlite:///{tmp_path / 'data' / 'lumbarnode.db'}"
    assert settings.callers == {"ORTHANC": Destination("ORTHANC", "10.0.0.5", 4242), "MODALITY": None}
    assert settings.return_address("ORTHANC") == Destination("ORTHANC", "10.0.0.5", 4242)
    assert settings.with_(destination="ARCHIVE@archive:104").return_address("ORTHANC") == \
        Destination("ARCHIVE", "archive", 104)
    again = Settings.from_env(settings.environment())
    assert again == settings
    for bad in ({"LUMBARNODE_PORT": "0"}, {"LUMBARNODE_KEY_IMAGE": "maybe"},
                {"LUMBARNODE_DESTINATION": "PACS@host"}, {"LUMBARNODE_ALLOWED_CALLERS": "A=B@h"}):
        with pytest.raises(ValueError):
            Settings.from_env(bad)
    with pytest.raises(ValueError):
        parse_callers("WAY_TOO_LONG_AE_TITLE_X=P@h:1")


def test_config_prints_the_effective_settings_without_passwords(tmp_path):
    env = {**os.environ, "LUMBARNODE_DATA_DIR": str(tmp_path),
           "LUMBARNODE_DATABASE_URL": "postgresql+psycopg://lumbar:s3cret@db:5432/lumbarnode",
           "LUMBARNODE_BROKER_URL": "redis://:hunter2@redis:6379/0", "LUMBARNODE_AE_TITLE": "SITE_AI"}
    done = subprocess.run([sys.executable, "-m", "worker.cli", "config", "--json"], capture_output=True,
                          text=True, env=env)
    assert done.returncode == 0, done.stderr
    shown = json.loads(done.stdout)
    assert shown["ae_title"] == "SITE_AI" and shown["spool_dir"] == str(tmp_path / "spool")
    assert "s3cret" not in done.stdout and "hunter2" not in done.stdout
    assert shown["database_url"].startswith("postgresql+psycopg://lumbar:") and "@db:5432/lumbarnode" in shown["database_url"]


def test_a_stored_instance_is_durable_before_success(tmp_path, monkeypatch):
    """The data, the new folders and the rename are each flushed to disk before the listener
    answers success (a power cut after the answer must not lose the instance). What is
    flushed is read from the kernel (/proc/self/fd), in the order it happens."""
    from dicom_io import scp as scp_module

    flushed = []
    real_fsync = os.fsync

    def recording_fsync(fd):
        target = Path(os.readlink(f"/proc/self/fd/{fd}"))
        flushed.append(("folder" if target.is_dir() else "file", target))
        real_fsync(fd)

    monkeypatch.setattr(scp_module.os, "fsync", recording_fsync)
    path = tmp_path / "spool" / "1.2.3" / "1.2.3.4" / "1.2.3.4.5.dcm"
    (tmp_path / "spool").mkdir()
    scp_module.write_atomically(path, b"DICM data")
    kinds = [(kind, target.relative_to(tmp_path)) for kind, target in flushed]
    assert kinds[:2] == [("folder", Path("spool")), ("folder", Path("spool/1.2.3"))]  # the new folders' entries
    assert kinds[2][0] == "file" and kinds[2][1].name.endswith(".part")  # the data, before the rename
    assert kinds[3:] == [("folder", Path("spool/1.2.3/1.2.3.4"))]  # the rename
    assert path.read_bytes() == b"DICM data" and not list(path.parent.glob("*.part"))
    flushed.clear()
    scp_module.write_atomically(path.with_name("1.2.3.4.6.dcm"), b"more")  # folders exist: data and rename only
    assert [kind for kind, _ in flushed] == ["file", "folder"]
