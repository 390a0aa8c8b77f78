"""Send DICOM files to a storage SCP (C-STORE SCU): the results back to the PACS.

One association per call, proposing each file's SOP class in the transfer syntax it is
stored in (plus explicit and implicit VR little endian). The outcome of every file is
returned; a PACS that cannot be reached, rejects or aborts the association raises
`SendError` so that the caller can retry.

With `tls` (a client context from `dicom_io.tls`) the association runs over TLS: the peer's
certificate must verify and name `server_hostname` (default: `host`), else there is no
association: a PACS that cannot be verified is sent nothing.
"""

from __future__ import annotations

import ssl
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import pydicom
from pynetdicom import AE, build_context
from pynetdicom.sop_class import Verification
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian


class SendError(RuntimeError):
    """The files could not be sent (no association, or it broke); worth retrying later."""


@dataclass(frozen=True)
class SentFile:
    path: Path
    sop_instance_uid: str
    status: int | None  # DIMSE status; None: no response

    @property
    def ok(self) -> bool:
        return self.status is not None and (self.status == 0x0000 or self.status in (0xB000, 0xB007, 0xB006))


@dataclass(frozen=True)
class SendResult:
    files: tuple[SentFile, ...]

    @property
    def ok(self) -> bool:
        return all(f.ok for f in self.files)

    @property
    def statuses(self) -> str:
        return " ".join("none" if f.status is None else f"0x{f.status:04X}" for f in self.files)


def send_files(paths: Sequence[Path], ae_title: str, host: str, port: int, *, calling_ae: str = "LUMBARNODE",
               timeout_s: float = 30.0, tls: ssl.SSLContext | None = None,
               server_hostname: str | None = None) -> SendResult:
    headers = [(Path(p), pydicom.dcmread(p, stop_before_pixels=True)) for p in paths]
    ae = AE(ae_title=calling_ae)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = timeout_s
    ae.connection_timeout = timeout_s  # also bounds the TLS handshake, which has no other timeout
    contexts: dict[tuple[str, str], None] = {}
    for _, ds in headers:
        stored = str(ds.file_meta.TransferSyntaxUID)
        contexts[(str(ds.SOPClassUID), stored)] = None
    for sop_class, stored in contexts:
        syntaxes = list(dict.fromkeys([stored, ExplicitVRLittleEndian, ImplicitVRLittleEndian]))
        ae.requested_contexts = [*ae.requested_contexts, build_context(sop_class, syntaxes)]
    assoc = ae.associate(host, port, ae_title=ae_title, tls_args=_tls_args(tls, host, server_hostname))
    if not assoc.is_established:
        reason = "rejected" if assoc.is_rejected else "aborted" if assoc.is_aborted else "not established"
        raise SendError(f"association with {ae_title}@{host}:{port} {reason}")
    sent = []
    try:
        for path, ds in headers:
            status = assoc.send_c_store(path)
            if not assoc.is_established and not status:
                raise SendError(f"association with {ae_title}@{host}:{port} broke while sending {ds.SOPInstanceUID}")
            sent.append(SentFile(path, str(ds.SOPInstanceUID), int(status.Status) if status else None))
    finally:
        if assoc.is_established:
            assoc.release()
    return SendResult(tuple(sent))


def echo(ae_title: str, host: str, port: int, *, calling_ae: str = "LUMBARNODE", timeout_s: float = 10.0,
         tls: ssl.SSLContext | None = None, server_hostname: str | None = None) -> bool:
    """C-ECHO: True when the node answers with success."""
    ae = AE(ae_title=calling_ae)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = timeout_s
    ae.connection_timeout = timeout_s  # also bounds the TLS handshake, which has no other timeout
    ae.add_requested_context(Verification)
    assoc = ae.associate(host, port, ae_title=ae_title, tls_args=_tls_args(tls, host, server_hostname))
    if not assoc.is_established:
        return False
    try:
        status = assoc.send_c_echo()
        return bool(status) and status.Status == 0x0000
    finally:
        assoc.release()


def _tls_args(tls: ssl.SSLContext | None, host: str, server_hostname: str | None) -> tuple[ssl.SSLContext, str] | None:
    return None if tls is None else (tls, server_hostname or host)
