"""DICOM TLS: the listener with mutual TLS, exports over TLS, the settings, the health check.

The certificates are made by the test with the openssl CLI: a test CA; the node's
certificate (127.0.0.1 and localhost, for server and client use: the node also presents it
to the PACS); a modality's client certificate and a PACS's server certificate from the same
CA; and a client certificate from a second CA that nobody trusts. Real associations
throughout: pynetdicom, DCMTK storescu as a modality and DCMTK storescp as the PACS."""

from __future__ import annotations

import logging
import socket
import ssl
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pydicom
import pytest

from dicom_io.scp import StorageSCP, StoredInstance
from dicom_io.scu import SendError, echo, send_files
from dicom_io.series import decodable_transfer_syntaxes
from dicom_io.tls import client_context, server_context
from pipeline.synthetic.phantom import PhantomParams
from tests.helpers.tools import DCMTK_ENV, free_port, require_tool, wait_until
from worker.node import Node
from worker.phantom_study import write_phantom_study
from worker.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
AE_TITLE = "LUMBARNODE"


@dataclass(frozen=True)
class Pki:
    folder: Path

    def cert(self, name: str) -> Path:
        return self.folder / f"{name}.pem"

    def key(self, name: str) -> Path:
        return self.folder / f"{name}.key"

    @property
    def ca(self) -> Path:
        return self.cert("ca")


def _issue(folder: Path, name: str, common_name: str, issuer: str | None, *extensions: str) -> None:
    """A P-256 key and a certificate, self-signed (a CA) or signed by `issuer`, valid 2 days."""
    config = folder / "req.cnf"  # an empty one: no extensions other than ours from the system's openssl.cnf
    config.write_text("[req]\ndistinguished_name = dn\n[dn]\n")
    signer = [] if issuer is None else ["-CA", str(folder / f"{issuer}.pem"), "-CAkey", str(folder / f"{issuer}.key")]
    subprocess.run([require_tool("openssl"), "req", "-x509", "-new", "-newkey", "ec", "-pkeyopt",
                    "ec_paramgen_curve:P-256", "-nodes", "-keyout", str(folder / f"{name}.key"),
                    "-out", str(folder / f"{name}.pem"), "-days", "2", "-subj", f"/CN={common_name}",
                    "-config", str(config), *signer, *(arg for ext in extensions for arg in ("-addext", ext))],
                   check=True, capture_output=True)


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> Pki:
    folder = tmp_path_factory.mktemp("pki")
    ca = ("basicConstraints=critical,CA:TRUE", "keyUsage=critical,keyCertSign,cRLSign")
    leaf = "basicConstraints=critical,CA:FALSE"
    here = "subjectAltName=IP:127.0.0.1,DNS:localhost"
    _issue(folder, "ca", "Test Hospital CA", None, *ca)
    _issue(folder, "node", "lumbarnode", "ca", leaf, here, "extendedKeyUsage=serverAuth,clientAuth")
    _issue(folder, "client", "MODALITY", "ca", leaf, "extendedKeyUsage=clientAuth")
    _issue(folder, "pacs", "pacs", "ca", leaf, here, "extendedKeyUsage=serverAuth")
    _issue(folder, "rogue_ca", "Somebody Else's CA", None, *ca)
    _issue(folder, "rogue", "MODALITY", "rogue_ca", leaf, "extendedKeyUsage=clientAuth")
    return Pki(folder)


@pytest.fixture(scope="module")
def study(tmp_path_factory) -> list[Path]:
    written = write_phantom_study(PhantomParams(seed=3101, slices=2), tmp_path_factory.mktemp("study"))
    return sorted(written.dicom_dir.glob("*.dcm"))


@pytest.fixture
def listener(tmp_path, pki) -> Iterator[tuple[StorageSCP, list[StoredInstance]]]:
    """A bare storage SCP with mutual TLS: callers need a certificate from the test CA."""
    stored: list[StoredInstance] = []
    scp = StorageSCP(AE_TITLE, tmp_path / "spool", allowed_callers={"SCU", "STORESCU"},
                     transfer_syntaxes=[str(t) for t in decodable_transfer_syntaxes()], on_stored=stored.append,
                     ssl_context=server_context(pki.cert("node"), pki.key("node"), pki.ca))
    scp.start("127.0.0.1", 0)
    yield scp, stored
    scp.stop()


def trusted(pki: Pki) -> ssl.SSLContext:
    """The modality's context: trusts the test CA, presents its certificate."""
    return client_context(pki.ca, pki.cert("client"), pki.key("client"))


def spooled(spool: Path) -> set[str]:
    return {p.stem for p in spool.rglob("*.dcm")}


def uid(path: Path) -> str:
    return str(pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID)


def tls_warnings(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "lumbarnode.scp" and "TLS handshake" in r.getMessage()]


# --- the listener -----------------------------------------------------------------------------


def test_a_client_with_a_trusted_certificate_stores_over_tls(listener, pki, study):
    scp, stored = listener
    result = send_files(study[:1], AE_TITLE, "127.0.0.1", scp.port, calling_ae="SCU", tls=trusted(pki),
                        server_hostname="localhost")
    assert result.ok and result.statuses == "0x0000"
    assert spooled(scp.spool) == {uid(study[0])}
    assert [(s.calling_ae, s.sop_instance_uid) for s in stored] == [("SCU", uid(study[0]))]
    assert pydicom.dcmread(stored[0].path).PixelData == pydicom.dcmread(study[0]).PixelData


def test_the_client_checks_the_name_in_the_listeners_certificate(listener, pki, study):
    scp, stored = listener
    with pytest.raises(SendError):
        send_files(study[:1], AE_TITLE, "127.0.0.1", scp.port, calling_ae="SCU", tls=trusted(pki),
                   server_hostname="pacs.example.org")  # the certificate names 127.0.0.1 and localhost only
    assert not spooled(scp.spool) and not stored


def test_dcmtk_storescu_stores_over_tls(listener, pki, study):
    scp, stored = listener
    run = subprocess.run([require_tool("storescu"), "+tls", str(pki.key("client")), str(pki.cert("client")),
                          "+cf", str(pki.ca), "-aec", AE_TITLE, "127.0.0.1", str(scp.port), str(study[0])],
                         env=DCMTK_ENV, capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    assert spooled(scp.spool) == {uid(study[0])}
    assert [s.calling_ae for s in stored] == ["STORESCU"]


def test_clients_without_a_certificate_or_with_an_untrusted_one_are_refused(listener, pki, study, caplog):
    caplog.set_level(logging.WARNING, logger="lumbarnode.scp")
    scp, stored = listener
    for context in (client_context(pki.ca), client_context(pki.ca, pki.cert("rogue"), pki.key("rogue"))):
        with pytest.raises(SendError):
            send_files(study[:1], AE_TITLE, "127.0.0.1", scp.port, calling_ae="SCU", tls=context)
    run = subprocess.run([require_tool("storescu"), "+tls", str(pki.key("rogue")), str(pki.cert("rogue")),
                          "+cf", str(pki.ca), "-aec", AE_TITLE, "127.0.0.1", str(scp.port), str(study[0])],
                         env=DCMTK_ENV, capture_output=True, text=True, timeout=60)
    assert run.returncode != 0
    assert not spooled(scp.spool) and not stored
    logged = wait_until(lambda: len(tls_warnings(caplog)) >= 3 and tls_warnings(caplog), 10, "three warnings")
    assert sum("PEER_DID_NOT_RETURN_A_CERTIFICATE" in line for line in logged) == 1, logged
    assert sum("unable to get local issuer certificate" in line for line in logged) == 2, logged  # the rogue CA's
    assert echo(AE_TITLE, "127.0.0.1", scp.port, calling_ae="SCU", tls=trusted(pki), timeout_s=10)


def test_plain_tcp_to_the_tls_port_fails_and_the_listener_stays_up(listener, pki, study, caplog):
    caplog.set_level(logging.WARNING, logger="lumbarnode.scp")
    scp, stored = listener
    with pytest.raises(SendError):
        send_files(study[:1], AE_TITLE, "127.0.0.1", scp.port, calling_ae="SCU", timeout_s=10)
    assert not spooled(scp.spool) and not stored
    wait_until(lambda: tls_warnings(caplog), 10, "the failed handshake logged")
    # A connection that never starts its handshake holds up nobody else (pynetdicom alone
    # would shake hands in its accept loop, and wait there for good).
    with socket.create_connection(("127.0.0.1", scp.port)):
        assert echo(AE_TITLE, "127.0.0.1", scp.port, calling_ae="SCU", tls=trusted(pki), timeout_s=5)


# --- exports ----------------------------------------------------------------------------------


@contextmanager
def tls_storescp(pki: Pki, folder: Path, log: Path) -> Iterator[int]:
    """DCMTK storescp as a PACS that speaks TLS only and requires a client certificate."""
    port = free_port()
    with open(log, "w") as output:
        process = subprocess.Popen([require_tool("storescp"), "+tls", str(pki.key("pacs")), str(pki.cert("pacs")),
                                    "+cf", str(pki.ca), "--require-peer-cert", "-aet", "PACS", "-od", str(folder),
                                    "+uf", str(port)], env=DCMTK_ENV, stdout=output, stderr=subprocess.STDOUT)
    probe = client_context(pki.ca, pki.cert("node"), pki.key("node"))
    try:
        wait_until(lambda: echo("PACS", "127.0.0.1", port, calling_ae="PROBE", tls=probe, timeout_s=5), 30,
                   "storescp over TLS", process)
        yield port
    finally:
        process.terminate()
        process.wait(timeout=10)


def test_exports_over_tls_reach_the_pacs_and_an_unverified_pacs_gets_nothing(tmp_path, pki, study):
    settings = Settings(data_dir=tmp_path / "node", tls_cert=pki.cert("node"), tls_key=pki.key("node"), tls_ca=pki.ca,
                        export_tls=True)
    folder = tmp_path / "pacs"
    folder.mkdir()
    with tls_storescp(pki, folder, tmp_path / "storescp.log") as port:
        result = send_files(study, "PACS", "127.0.0.1", port, tls=settings.export_tls_context(),
                            server_hostname="127.0.0.1")
        assert result.ok
        assert {uid(p) for p in folder.iterdir()} == {uid(p) for p in study}
        elsewhere = client_context(pki.cert("rogue_ca"), pki.cert("node"), pki.key("node"))
        with pytest.raises(SendError):  # trusting another CA: the PACS cannot be verified
            send_files(study, "PACS", "127.0.0.1", port, tls=elsewhere)
        with pytest.raises(SendError):  # no certificate: this PACS requires one
            send_files(study, "PACS", "127.0.0.1", port, tls=client_context(pki.ca))
        assert len(list(folder.iterdir())) == len(study)


# --- the node, the settings, the health check ------------------------------------------------------


def test_the_node_serves_mutual_tls_and_says_so(tmp_path, pki, study, caplog):
    caplog.set_level(logging.INFO, logger="lumbarnode.node")
    settings = Settings(data_dir=tmp_path / "node", host="127.0.0.1", port=free_port(), quiet_period_s=0.3,
                        allowed_callers="SCU", min_free_spool_mb=0, tls_cert=pki.cert("node"), tls_key=pki.key("node"),
                        tls_ca=pki.ca)
    queued: list[int] = []
    node = Node(settings, enqueue=queued.append)
    node.start()
    loop = threading.Thread(target=node.run, daemon=True)
    loop.start()
    try:
        assert "DICOM TLS on (client certificates required)" in caplog.text
        assert send_files(study, AE_TITLE, "127.0.0.1", settings.port, calling_ae="SCU", tls=trusted(pki)).ok
        job = wait_until(lambda: node.store.latest_job(pydicom.dcmread(study[0]).SeriesInstanceUID), 30, "the job")
        assert set(job.instance_uids) == {uid(p) for p in study}
        assert not echo(AE_TITLE, "127.0.0.1", settings.port, calling_ae="SCU", timeout_s=5)  # plain TCP
    finally:
        node.stop()
        loop.join(timeout=10)


def test_settings_validate_and_read_tls_from_the_environment(tmp_path, pki):
    with pytest.raises(ValueError, match="LUMBARNODE_TLS_CERT and LUMBARNODE_TLS_KEY go together"):
        Settings(data_dir=tmp_path, tls_cert=pki.cert("node"))
    with pytest.raises(ValueError, match="LUMBARNODE_TLS_CERT and LUMBARNODE_TLS_KEY go together"):
        Settings(data_dir=tmp_path, tls_key=pki.key("node"))
    with pytest.raises(ValueError, match="LUMBARNODE_EXPORT_TLS needs LUMBARNODE_TLS_CA"):
        Settings(data_dir=tmp_path, tls_cert=pki.cert("node"), tls_key=pki.key("node"), export_tls=True)
    plain = Settings(data_dir=tmp_path)
    assert plain.listener_tls() is None and plain.export_tls_context() is None
    assert Settings.from_env(plain.environment()) == plain  # unset paths survive the trip to a worker

    settings = Settings.from_env({"LUMBARNODE_DATA_DIR": str(tmp_path), "LUMBARNODE_TLS_CERT": str(pki.cert("node")),
                                  "LUMBARNODE_TLS_KEY": str(pki.key("node")), "LUMBARNODE_TLS_CA": str(pki.ca),
                                  "LUMBARNODE_EXPORT_TLS": "true"})
    assert (settings.tls_cert, settings.tls_key, settings.tls_ca) == tuple(
        p.resolve() for p in (pki.cert("node"), pki.key("node"), pki.ca))
    assert settings.export_tls is True
    assert Settings.from_env(settings.environment()) == settings
    listener = settings.listener_tls()
    assert listener.verify_mode == ssl.CERT_REQUIRED and listener.minimum_version == ssl.TLSVersion.TLSv1_2
    export = settings.export_tls_context()
    assert export.verify_mode == ssl.CERT_REQUIRED and export.check_hostname
    assert settings.with_(tls_ca=None, export_tls=False).listener_tls().verify_mode == ssl.CERT_NONE  # no client certs


def test_tls_files_are_checked_with_clear_messages(tmp_path, pki):
    with pytest.raises(ValueError, match=r"certificate .*missing\.pem: no such file"):
        server_context(tmp_path / "missing.pem", pki.key("node"))
    with pytest.raises(ValueError, match=r"CA certificate .*missing-ca\.pem: no such file"):
        client_context(tmp_path / "missing-ca.pem")
    with pytest.raises(ValueError, match="both a certificate and its private key"):
        client_context(pki.ca, pki.cert("client"), None)
    with pytest.raises(ValueError, match="not the certificate's key"):
        server_context(pki.cert("node"), pki.key("client"))


def run_healthcheck(env: dict[str, str]) -> subprocess.CompletedProcess:
    clean = {k: v for k, v in DCMTK_ENV.items() if not k.startswith("LUMBARNODE_")}
    return subprocess.run([sys.executable, str(ROOT / "compose" / "healthcheck.py"), "listener"], capture_output=True,
                          text=True, timeout=60, env={**clean, **env}, cwd=ROOT)


def test_the_health_check_echoes_over_tls_when_the_listener_does(tmp_path, pki, listener):
    scp, _ = listener
    env = {"LUMBARNODE_DATA_DIR": str(tmp_path), "LUMBARNODE_PORT": str(scp.port), "LUMBARNODE_ALLOWED_CALLERS": "SCU"}
    tls = {"LUMBARNODE_TLS_CERT": str(pki.cert("node")), "LUMBARNODE_TLS_KEY": str(pki.key("node")),
           "LUMBARNODE_TLS_CA": str(pki.ca)}
    check = run_healthcheck({**env, **tls})
    assert check.returncode == 0 and "listener: healthy" in check.stdout and "TLS" in check.stdout, check.stdout
    assert run_healthcheck(env).returncode == 1  # plain TCP to a TLS listener
