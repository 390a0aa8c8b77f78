"""Results sent back by DICOMweb STOW-RS (dicom_io/stow.py), against a real Orthanc with its
DICOMweb plugin (Debian packages): the node (`lumbarnode serve`) has a caller whose return
address is Orthanc's DICOMweb root; a study goes in by C-STORE, the SEG, SR and key image
come back by STOW-RS and are read back with dicomweb-client (QIDO-RS). Orthanc stopped
mid-export: the attempts fail, are recorded, and the results arrive once, when it is back.
Basic authentication against an Orthanc with users: the wrong password is an HTTP 401 on
record, the right one delivers (the secret file is read at every attempt)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from dicomweb_client.api import DICOMwebClient

from db import JobStore
from dicom_io.scu import echo, send_files
from pipeline.synthetic.phantom import PhantomParams
from tests.helpers.node import final_job
from tests.helpers.orthanc import Orthanc
from tests.helpers.tools import free_port, wait_until
from worker.jobs import export_job
from worker.phantom_study import write_phantom_study
from worker.settings import Settings

CALLER = "WEBPACS"


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    """Orthanc (DICOMweb only) and the node, which sends CALLER's results to Orthanc by STOW-RS."""
    root = tmp_path_factory.mktemp("stow-site")
    orthanc = Orthanc(root / "orthanc", dicom=False)
    url = f"{orthanc.base}/dicom-web"
    settings = Settings(data_dir=root / "node", host="127.0.0.1", port=free_port(), quiet_period_s=1.0,
                        export_retries=6, export_backoff_s=0.5, allowed_callers=f"{CALLER}={url}")
    log = open(root / "node.log", "w")
    node = subprocess.Popen([sys.executable, "-m", "worker.cli", "serve"], env={**os.environ, **settings.environment()},
                            stdout=log, stderr=subprocess.STDOUT)
    wait_until(lambda: echo(settings.ae_title, "127.0.0.1", settings.port, calling_ae=CALLER), 60, "the node", node)
    store = JobStore(settings.database_url)
    yield orthanc, settings, store, url
    store.dispose()
    node.send_signal(signal.SIGTERM)
    node.wait(timeout=120)
    log.close()
    orthanc.stop()


def _send_study(settings: Settings, folder: Path, seed: int) -> str:
    study = write_phantom_study(PhantomParams(lla_deg=44.0, seed=seed, slices=9), folder)
    assert send_files(sorted(study.dicom_dir.glob("*.dcm")), settings.ae_title, "127.0.0.1", settings.port,
                      calling_ae=CALLER).ok
    return study.truth["series_instance_uid"]


def _results_at(url: str, study_uid: str) -> list[str]:
    """SOP Instance UIDs of the study's SEG, SR and key image at the DICOMweb server (QIDO-RS)."""
    found = DICOMwebClient(url).search_for_instances(study_instance_uid=study_uid)
    return sorted(item["00080018"]["Value"][0] for item in found
                  if item.get("00080060", {}).get("Value", [""])[0] in ("SEG", "SR", "OT"))


def test_the_results_go_back_by_stow_rs(site, tmp_path):
    orthanc, settings, store, url = site
    job = final_job(store, _send_study(settings, tmp_path / "study", seed=2301), timeout_s=240)
    assert (job.status, job.destination) == ("done", url), job.error
    attempts = store.exports(job.id)
    assert [(e.status, e.http_status, e.failed_sops) for e in attempts] == [("sent", 200, ())]
    expected = sorted([job.seg_sop_instance_uid, job.sr_sop_instance_uid, job.key_sop_instance_uid])
    assert _results_at(url, job.study_instance_uid) == expected


def test_a_destination_that_is_down_gets_the_results_once_it_is_back(site, tmp_path):
    orthanc, settings, store, url = site
    orthanc.stop()
    try:
        series = _send_study(settings, tmp_path / "study", seed=2302)
        job = wait_until(lambda: store.latest_job(series), 120, "the job")
        failed = wait_until(lambda: (lambda e: e if len(e) >= 2 else None)(store.exports(job.id)), 240,
                            "two failed export attempts")
        assert all(e.status == "failed" and e.http_status is None and "did not answer" in e.error for e in failed)
    finally:
        orthanc.start()
    job = final_job(store, series, timeout_s=240)
    assert job.status == "done", job.error
    attempts = store.exports(job.id)
    assert attempts[-1].status == "sent" and attempts[-1].http_status == 200
    assert all(e.status == "failed" for e in attempts[:-1])
    expected = sorted([job.seg_sop_instance_uid, job.sr_sop_instance_uid, job.key_sop_instance_uid])
    assert _results_at(url, job.study_instance_uid) == expected  # each once: nothing duplicated


def test_basic_authentication_a_refused_password_is_on_record_and_the_right_one_delivers(site, tmp_path):
    _, settings, store, url = site
    done = next(j for j in store.list_jobs(status="done") if j.destination == url)
    guarded = Orthanc(tmp_path / "guarded", dicom=False, users={"lumbarnode": "the-right-password-1"})
    try:
        secret = tmp_path / "stow_password"
        secret.write_text("a-wrong-password\n")
        target = f"{guarded.base}/dicom-web"
        tables = tmp_path / "destinations.toml"  # this destination's own credentials; the others' stay none
        tables.write_text(f'["{target}"]\nauth = "basic"\nusername = "lumbarnode"\nsecret_file = "stow_password"\n')
        web = settings.with_(dicomweb_destinations_file=tables)
        assert web.dicomweb_auth_and_verify(url)[0].kind == "none"
        store.set_status(done.id, "exporting", destination=target)  # as `jobs retry --export-only` does
        assert export_job(web, store, done.id, last_attempt=True) == "export_failed"
        refused = store.exports(done.id)[-1]
        assert (refused.status, refused.http_status, refused.destination) == ("failed", 401, target)
        assert "credentials were refused" in refused.error
        secret.write_text("the-right-password-1\n")  # the secret file is read at every attempt
        store.set_status(done.id, "exporting")
        assert export_job(web, store, done.id, last_attempt=True) == "done"
        assert store.exports(done.id)[-1].http_status == 200
        assert len(guarded.get(f"/studies/{guarded.get('/studies')[0]}/instances")) == 3
    finally:
        guarded.stop()


def test_credentials_never_go_in_the_url_and_auth_needs_its_secret(tmp_path):
    from worker.settings import SettingsError

    with pytest.raises(SettingsError, match="no credentials in the URL"):
        Settings(data_dir=tmp_path, destination="https://user:pw@pacs.example/dicom-web")
    with pytest.raises(SettingsError, match="LUMBARNODE_DICOMWEB_SECRET_FILE"):
        Settings(data_dir=tmp_path, dicomweb_auth="bearer")
    with pytest.raises(SettingsError, match="LUMBARNODE_DICOMWEB_AUTH"):
        Settings(data_dir=tmp_path, dicomweb_auth="digest")
    tables = tmp_path / "destinations.toml"
    tables.write_text('["https://pacs.example/dicom-web"]\nauth = "bearer"\n')
    with pytest.raises(SettingsError, match="needs secret_file"):
        Settings(data_dir=tmp_path, dicomweb_destinations_file=tables)
    tables.write_text('["https://pacs.example/dicom-web"]\nauth = "bearer"\nsecret_file = "token"\nca = "/etc/ca.pem"\n')
    (tmp_path / "token").write_text("t0ken\n")
    own = Settings(data_dir=tmp_path, dicomweb_destinations_file=tables)
    auth, verify = own.dicomweb_auth_and_verify("https://pacs.example/dicom-web")
    assert (auth.kind, auth.secret, verify) == ("bearer", "t0ken", "/etc/ca.pem")
    assert own.dicomweb_auth_and_verify("https://other.example/dicom-web")[0].kind == "none"
    settings = Settings(data_dir=tmp_path, allowed_callers="A=https://pacs.example/dicom-web/,B=B@10.0.0.5:104")
    assert str(settings.return_address("A")) == "https://pacs.example/dicom-web"
    assert str(settings.return_address("B")) == "B@10.0.0.5:104"


# -- ingest: STOW-RS into the node ----------------------------------------------------


@pytest.fixture(scope="module")
def web_site(tmp_path_factory):
    """PACS -> node -> PACS over DICOMweb alone: Orthanc (no DICOM server at all) sends studies
    to the node's STOW-RS endpoint with a sender's API token, and gets the results back by
    STOW-RS at its own DICOMweb root."""
    from db.access import AccessStore
    from worker.admin import users

    root = tmp_path_factory.mktemp("dicomweb-site")
    stow_port = free_port()
    settings = Settings(data_dir=root / "node", host="127.0.0.1", port=free_port(), quiet_period_s=1.0,
                        stow_port=stow_port, stow_host="127.0.0.1")
    store = JobStore(settings.database_url, create=True)
    access = AccessStore(store)
    setup = users.Actor("cli:test-setup", "cli")
    users.add(access, CALLER, "sender", "the-pacs-sends-studies", setup)
    users.add(access, "reader", "viewer", "a-viewer-cannot-send", setup)
    token = users.issue_token(access, CALLER, "orthanc", 1, setup)
    viewer_token = users.issue_token(access, "reader", "tests", 1, setup)
    orthanc = Orthanc(root / "orthanc", dicom=False, dicomweb_servers={
        "lumbarnode": {"Url": f"http://127.0.0.1:{stow_port}/dicom-web/",
                       "HttpHeaders": {"Authorization": f"Bearer {token}"}}})
    settings = settings.with_(allowed_callers=f"{CALLER}={orthanc.base}/dicom-web")
    log = open(root / "node.log", "w")
    node = subprocess.Popen([sys.executable, "-m", "worker.cli", "serve"], env={**os.environ, **settings.environment()},
                            stdout=log, stderr=subprocess.STDOUT)
    wait_until(lambda: echo(settings.ae_title, "127.0.0.1", settings.port, calling_ae="SCU") or
               _answers(f"http://127.0.0.1:{stow_port}/dicom-web/studies"), 60, "the node", node)
    yield orthanc, settings, store, token, viewer_token
    store.dispose()
    node.send_signal(signal.SIGTERM)
    node.wait(timeout=120)
    log.close()
    orthanc.stop()


def _answers(url: str) -> bool:
    import httpx

    try:
        return httpx.post(url, timeout=5).status_code == 401  # up, and asking for a token
    except httpx.TransportError:
        return False


def test_a_study_goes_pacs_to_node_to_pacs_over_dicomweb_alone(web_site, tmp_path):
    orthanc, settings, store, _, _ = web_site
    study = write_phantom_study(PhantomParams(lla_deg=50.0, seed=2401, slices=9), tmp_path / "study")
    uploaded = orthanc.upload(sorted(study.dicom_dir.glob("*.dcm")))
    answer = orthanc.request("POST", "/dicom-web/servers/lumbarnode/stow",
                             {"Resources": [uploaded[0]["ParentStudy"]], "Synchronous": True})
    assert answer is not None  # HTTP 200 from Orthanc's own STOW-RS client, else urlopen raises
    job = final_job(store, study.truth["series_instance_uid"], timeout_s=240)
    assert (job.status, job.calling_ae, job.instance_count) == ("done", CALLER, 9), job.error
    assert store.exports(job.id)[-1].http_status == 200
    url = f"{orthanc.base}/dicom-web"
    expected = sorted([job.seg_sop_instance_uid, job.sr_sop_instance_uid, job.key_sop_instance_uid])
    assert _results_at(url, job.study_instance_uid) == expected


def test_stow_rs_with_dicomweb_client_answers_what_was_stored_and_what_was_refused(web_site, tmp_path):
    import pydicom
    import requests

    _, settings, store, token, viewer_token = web_site
    study = write_phantom_study(PhantomParams(lla_deg=40.0, seed=2402, slices=9), tmp_path / "study")
    datasets = [pydicom.dcmread(path) for path in sorted(study.dicom_dir.glob("*.dcm"))]
    plan = pydicom.dcmread(sorted(study.dicom_dir.glob("*.dcm"))[0])
    plan.SOPClassUID = plan.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.481.5"  # RT Plan
    plan.SOPInstanceUID = plan.file_meta.MediaStorageSOPInstanceUID = f"{plan.SOPInstanceUID}.99"
    url = f"http://127.0.0.1:{settings.stow_port}/dicom-web"

    def client(secret: str | None) -> DICOMwebClient:
        session = requests.Session()
        if secret:
            session.headers["Authorization"] = f"Bearer {secret}"
        web = DICOMwebClient(url, session=session)
        web.set_http_retry_params(retry=False)
        return web

    with pytest.raises(requests.HTTPError) as refused:
        client(None).store_instances(datasets[:1])
    assert refused.value.response.status_code == 401
    with pytest.raises(requests.HTTPError) as refused:
        client(viewer_token).store_instances(datasets[:1])
    assert refused.value.response.status_code == 403  # a viewer may not send
    answer = client(token).store_instances([*datasets, plan])  # 202: stored, but for the RT Plan
    stored = sorted(item.ReferencedSOPInstanceUID for item in answer.ReferencedSOPSequence)
    assert stored == sorted(ds.SOPInstanceUID for ds in datasets)
    failed = answer.FailedSOPSequence
    assert [(f.ReferencedSOPInstanceUID, f.FailureReason) for f in failed] == [(plan.SOPInstanceUID, 0x0122)]
    job = final_job(store, study.truth["series_instance_uid"], timeout_s=240)
    assert job.status == "done" and job.instance_count == 9
    assert (Path(settings.spool_dir) / job.study_instance_uid / job.series_instance_uid).is_dir()
    again = client(token).store_instances(datasets[:2])  # duplicates: harmless, answered stored
    assert len(again.ReferencedSOPSequence) == 2
