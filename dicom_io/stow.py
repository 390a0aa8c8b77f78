"""Sending results by DICOMweb STOW-RS (PS3.18 section 10.5), through dicomweb-client.

`stow` posts the files as one multipart/related request to `<url>/studies` and reads the
store response: the SOP instances stored (Referenced SOP Sequence) and those refused (Failed
SOP Sequence, with the Failure Reason). A destination that is down, refuses the credentials
or answers an HTTP error raises `StowError` with what is known (the HTTP status, the refused
instances), so the caller records the attempt and retries, as for C-STORE. dicomweb-client's
own retries are off: the export worker's backoff is the one policy.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pydicom
import requests
from dicomweb_client.api import DICOMwebClient

AUTH_KINDS = ("none", "basic", "bearer")
FAILED_SOP_SEQUENCE = 0x00081198
REFERENCED_SOP_SEQUENCE = 0x00081199


@dataclass(frozen=True)
class WebAuth:
    """How to authenticate to a DICOMweb server: none, basic (user name and password) or a
    bearer token (`secret`)."""

    kind: str = "none"
    username: str = ""
    secret: str = field(default="", repr=False)


@dataclass(frozen=True)
class StowResult:
    http_status: int
    stored: tuple[str, ...]
    failed: tuple[tuple[str, str], ...]  # (SOP Instance UID, reason)

    @property
    def ok(self) -> bool:
        return not self.failed


class StowError(Exception):
    """The request failed: no answer, or an HTTP error status."""

    def __init__(self, message: str, http_status: int | None = None,
                 failed: tuple[tuple[str, str], ...] = ()):
        super().__init__(message)
        self.http_status = http_status
        self.failed = failed


def _session(auth: WebAuth, verify: bool | str) -> requests.Session:
    session = requests.Session()
    session.verify = verify
    if auth.kind == "basic":
        session.auth = (auth.username, auth.secret)
    elif auth.kind == "bearer":
        session.headers["Authorization"] = f"Bearer {auth.secret}"
    elif auth.kind != "none":
        raise ValueError(f"DICOMweb authentication must be one of {', '.join(AUTH_KINDS)}, not {auth.kind!r}")
    return session


def _failures(response: pydicom.Dataset) -> tuple[tuple[str, str], ...]:
    failed = []
    for item in response.get(FAILED_SOP_SEQUENCE, pydicom.DataElement(FAILED_SOP_SEQUENCE, "SQ", [])).value or []:
        reason = item.get("FailureReason")
        failed.append((str(item.get("ReferencedSOPInstanceUID", "")),
                       f"0x{int(reason):04X}" if reason is not None else "no reason given"))
    return tuple(failed)


def _response_dataset(response: requests.Response | None) -> pydicom.Dataset:
    if response is None or not response.content:
        return pydicom.Dataset()
    if response.headers.get("Content-Type", "").split(";")[0].strip() in ("application/dicom+json", "application/json"):
        try:
            return pydicom.Dataset.from_json(response.json())
        except (ValueError, TypeError):
            return pydicom.Dataset()
    return pydicom.Dataset()


def stow(files: Sequence[Path], url: str, auth: WebAuth = WebAuth(), verify: bool | str = True,
         timeout_s: float = 60.0) -> StowResult:
    """POST `files` to the DICOMweb service at `url` (its root, e.g. https://pacs/dicom-web)."""
    session = _session(auth, verify)
    statuses: list[int] = []  # dicomweb-client returns the dataset only: the status, from the session
    session.hooks["response"].append(lambda response, *args, **kwargs: statuses.append(response.status_code))
    client = DICOMwebClient(url=url.rstrip("/"), session=session, timeout=timeout_s)
    client.set_http_retry_params(retry=False)
    datasets = [pydicom.dcmread(path) for path in files]
    try:
        response = client.store_instances(datasets)
    except requests.HTTPError as exc:
        answer = exc.response
        status = answer.status_code if answer is not None else None
        failed = _failures(_response_dataset(answer))
        hint = {401: "the credentials were refused", 403: "not allowed", 404: "no STOW-RS service at this URL",
                413: "the request is too large"}.get(status or 0, "")
        raise StowError(f"HTTP {status}{': ' + hint if hint else ''} from {url}", status, failed) from None
    except requests.RequestException as exc:
        raise StowError(f"{type(exc).__name__}: {url} did not answer ({str(exc)[:200]})") from None
    stored = tuple(str(item.get("ReferencedSOPInstanceUID", ""))
                   for item in (response.get(REFERENCED_SOP_SEQUENCE).value
                                if REFERENCED_SOP_SEQUENCE in response else []))
    return StowResult(statuses[-1] if statuses else 200, stored, _failures(response))
