"""Orthanc (Debian's package) as the tests' PACS and DICOMweb server: free loopback ports, its
own storage, DICOMweb at /dicom-web/ (and WADO-URI at /wado), no authentication; it refuses
remote hosts (RemoteAccessAllowed false). Used by tests/system/test_orthanc.py (DICOM to and
from the node) and tests/viewer (OHIF reading DICOMweb)."""

from __future__ import annotations

import base64
import json
import subprocess
import urllib.error
import urllib.request
from collections.abc import Iterable
from pathlib import Path

from tests.helpers.tools import DCMTK_ENV, free_port, require_tool, wait_until

DICOMWEB_PLUGIN = Path("/usr/share/orthanc/plugins/libOrthancDicomWeb.so")


class Orthanc:
    def __init__(self, root: Path, name: str = "lumbarnode-test-pacs", modalities: dict | None = None,
                 dicom: bool = True, users: dict[str, str] | None = None, dicomweb_servers: dict | None = None):
        """`modalities`: the DICOM peers it may send to ({"name": [AE, host, port]}); `dicom`: its
        own DICOM server (AE ORTHANC) on, or REST and DICOMweb only; `users`: HTTP basic
        authentication on, with these users and passwords (the helper signs in as the first);
        `dicomweb_servers`: the DICOMweb peers it may send to by STOW-RS ({"name": {"Url": ...,
        "HttpHeaders": {...}}}, the plugin's DicomWeb.Servers)."""
        if not DICOMWEB_PLUGIN.is_file():
            raise FileNotFoundError(f"{DICOMWEB_PLUGIN} is missing: install Debian's orthanc-dicomweb (`make test` does)")
        root.mkdir(parents=True, exist_ok=True)
        self.root = root
        self.http_port, self.dicom_port = free_port(), free_port()
        config = {
            "Name": name,
            "StorageDirectory": str(root / "storage"),
            "IndexDirectory": str(root / "index"),
            "HttpPort": self.http_port,
            "DicomServerEnabled": dicom,
            "DicomPort": self.dicom_port,
            "DicomAet": "ORTHANC",
            "DicomModalities": modalities or {},
            "RemoteAccessAllowed": False,
            "AuthenticationEnabled": bool(users),
            "RegisteredUsers": users or {},
            "HttpCompressionEnabled": False,  # loopback: gzip only costs CPU
            "HttpThreadsCount": 20,
            "Plugins": [str(DICOMWEB_PLUGIN)],
            "DicomWeb": {"Enable": True, "Root": "/dicom-web/", "EnableWado": True, "WadoRoot": "/wado",
                         "Servers": dicomweb_servers or {}},
            "StableAge": 1,
        }
        self.config_path = root / "orthanc.json"
        self.config_path.write_text(json.dumps(config, indent=2))
        self.log_path = root / "orthanc.log"
        self._auth = None
        if users:
            user, password = next(iter(users.items()))
            self._auth = "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()
        self.start()

    def start(self) -> None:
        """Start it (again, after `stop`: the same ports, storage and configuration)."""
        self._log = open(self.log_path, "a")
        self.process = subprocess.Popen([require_tool("Orthanc"), str(self.config_path)], env=DCMTK_ENV,
                                        stdout=self._log, stderr=subprocess.STDOUT)
        wait_until(self._ready, 60, "Orthanc to answer over REST", self.process)

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    def _ready(self) -> bool:
        try:
            return "dicom-web" in self.get("/plugins")  # up, and the DICOMweb plugin is loaded
        except (urllib.error.URLError, ConnectionError):
            return False

    def request(self, method: str, path: str, body: bytes | str | dict | None = None, content_type: str | None = None):
        """JSON answers decoded, anything else as bytes; an HTTP error raises (urllib)."""
        if isinstance(body, dict):
            body, content_type = json.dumps(body).encode(), content_type or "application/json"
        elif isinstance(body, str):
            body = body.encode()
        headers = {"Content-Type": content_type} if content_type else {}
        if self._auth:
            headers["Authorization"] = self._auth
        req = urllib.request.Request(self.base + path, data=body, method=method, headers=headers)
        with urllib.request.urlopen(req, timeout=120) as response:
            payload = response.read()
            kind = response.headers.get("Content-Type", "")
        return json.loads(payload) if "json" in kind else payload

    def get(self, path: str):
        return self.request("GET", path)

    def upload(self, paths: Iterable[Path]) -> list[dict]:
        """POST each file to /instances (Orthanc's REST upload); every one must be stored."""
        answers = []
        for path in paths:
            answer = self.request("POST", "/instances", path.read_bytes(), "application/dicom")
            if answer.get("Status") not in ("Success", "AlreadyStored"):
                raise AssertionError(f"Orthanc did not store {path}: {answer}")
            answers.append(answer)
        return answers

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)
        self._log.close()
