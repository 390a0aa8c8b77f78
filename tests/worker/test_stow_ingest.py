"""The STOW-RS endpoint's refusals (worker/stow_server.py), in process: the app over a real
job database and spool, called through Starlette's TestClient with hand-made requests (the
malformed ones no client library would send). The whole flow with real peers (Orthanc,
dicomweb-client) is tests/system/test_stow.py."""

from __future__ import annotations

from pathlib import Path

import pydicom
import pytest
from fastapi.testclient import TestClient

from db import JobStore
from db.access import AccessStore
from pipeline.synthetic.phantom import PhantomParams
from worker.admin import users
from worker.phantom_study import write_phantom_study
from worker.settings import Settings
from worker.stow_server import create_stow_app

BOUNDARY = "lumbarnode-test-boundary"
MULTIPART = f'multipart/related; type="application/dicom"; boundary={BOUNDARY}'


def body(*parts: bytes, kind: str = "application/dicom") -> bytes:
    out = b""
    for part in parts:
        out += f"--{BOUNDARY}\r\nContent-Type: {kind}\r\n\r\n".encode() + part + b"\r\n"
    return out + f"--{BOUNDARY}--\r\n".encode()


@pytest.fixture
def endpoint(tmp_path: Path):
    settings = Settings(data_dir=tmp_path, allowed_callers="PACS")
    settings.spool_dir.mkdir(parents=True)  # as the node makes it
    store = JobStore(settings.database_url, create=True)
    access = AccessStore(store)
    users.add(access, "PACS", "sender", "the-pacs-sends-studies", users.Actor("cli:test", "cli"))
    token = users.issue_token(access, "PACS", "tests", 1, users.Actor("cli:test", "cli"))
    stored, ended, refused = [], [], []
    study = write_phantom_study(PhantomParams(lla_deg=45.0, seed=2501, slices=3), tmp_path / "study")

    def app(**changes):
        return TestClient(create_stow_app(settings.with_(**changes), access, stored.append,
                                          lambda n, released: ended.append((n, released)),
                                          lambda uid, reason: refused.append(reason)))
    yield app, {"Authorization": f"Bearer {token}", "Content-Type": MULTIPART}, sorted(
        study.dicom_dir.glob("*.dcm")), stored, ended, refused, access
    store.dispose()


def test_instances_are_stored_and_the_request_ends_like_an_association(endpoint):
    app, headers, files, stored, ended, _, _ = endpoint
    with app() as client:
        reply = client.post("/dicom-web/studies", content=body(*(f.read_bytes() for f in files)), headers=headers)
    assert reply.status_code == 200 and reply.headers["content-type"] == "application/dicom+json"
    assert len(reply.json()["00081199"]["Value"]) == 3
    assert [s.path.read_bytes() for s in stored] == [f.read_bytes() for f in files]  # as sent, byte for byte
    assert len({s.association for s in stored}) == 1 and ended == [(stored[0].association, True)]
    assert stored[0].association < 0 and stored[0].calling_ae == "PACS"


def test_a_full_spool_a_wrong_study_and_a_non_dicom_part_are_refused_per_instance(endpoint):
    app, headers, files, stored, _, refused, _ = endpoint
    with app(min_free_spool_mb=10**9) as client:
        full = client.post("/dicom-web/studies", content=body(files[0].read_bytes()), headers=headers)
    assert full.status_code == 409  # none stored
    assert full.json()["00081198"]["Value"][0]["00081197"]["Value"] == [0xA700]
    study = pydicom.dcmread(files[0]).StudyInstanceUID
    with app() as client:
        wrong = client.post(f"/dicom-web/studies/{study}.9", content=body(files[0].read_bytes()), headers=headers)
        junk = client.post("/dicom-web/studies", content=body(files[1].read_bytes(), b"not DICOM"), headers=headers)
    assert wrong.status_code == 409 and wrong.json()["00081198"]["Value"][0]["00081197"]["Value"] == [0xA900]
    assert junk.status_code == 202 and junk.json()["00081198"]["Value"][0]["00081197"]["Value"] == [0xC000]
    assert refused == ["spool_nearly_full", "unparseable_dataset"] and len(stored) == 1


def test_requests_that_are_not_stow_rs_get_a_clear_status(endpoint):
    app, headers, files, stored, _, _, access = endpoint
    with app() as client:
        assert client.post("/dicom-web/studies", content=b"x", headers={**headers, "Content-Type": "application/json"}
                           ).status_code == 415
        xml = 'multipart/related; type="application/dicom+xml"; boundary=b'
        assert client.post("/dicom-web/studies", content=b"x", headers={**headers, "Content-Type": xml}).status_code == 415
        assert client.post("/dicom-web/studies", content=body(), headers=headers).status_code == 400
        big = client.post("/dicom-web/studies", content=body(files[0].read_bytes()), headers=headers)
        assert big.status_code == 200
    with app(stow_max_mb=1) as client:
        huge = client.post("/dicom-web/studies", content=body(b"\0" * (2 << 20)), headers=headers)
        assert huge.status_code == 413
        forged = client.post("/dicom-web/studies", content=body(files[0].read_bytes()),
                             headers={**headers, "Authorization": "Bearer forged"})
        assert forged.status_code == 401
    assert access.audit_entries(action="stow_rejected")[0].detail == "no valid API token"
