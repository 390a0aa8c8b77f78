"""The storage SCP: C-ECHO, and C-STORE of MR images into the spool.

Small pynetdicom event handlers on one AE. Each instance is written to
`<spool>/<StudyUID>/<SeriesUID>/<SOPInstanceUID>.dcm` through a temporary file, flushed to
disk and renamed, before the success status goes back: a success means the instance is on
disk. The encoded dataset is written as received, behind file meta encoded directly; only
its first elements, up to the UIDs of the path, are parsed (dicom_io/part10.py).

- Calling AE titles not in the allow-list are rejected at association time (pynetdicom's
  `require_calling_aet`), and so is a wrong called AE title. An empty allow-list rejects
  every caller (and the C-STORE handler checks the caller again).
- Each association's end says whether it was released or ended otherwise (aborted by
  either side, the connection dropped): instances from an association that did not release
  may be a series cut short.
- SOP classes we store: MR and Enhanced MR images and what a PACS sends with them in a spine
  study (CT, presentation states, SR, key objects, secondary captures, spectroscopy, raw
  data): the series the method cannot use become `skipped` jobs with their reason, and the
  PACS sees no error for a whole study pushed to the node. Any other storage SOP class gets
  the refusal status 0x0122 (SOP class not supported) instead of an abort, so that a PACS
  pushing an unusual study sees clearly what was not taken.
- A duplicate SOP Instance UID is answered with success and keeps the file already stored.
- Below a free-space watermark on the spool's disk, instances are refused with 0xA700
  (out of resources) before anything is written: nothing is ever stored truncated.
- With an `ssl_context` (see `dicom_io.tls`) the listener speaks DICOM TLS only. The TLS
  handshake runs in the connection's own thread with the ARTIM timeout, not in pynetdicom's
  accept loop, where a caller that connects and sends nothing would block every other caller
  for good. A failed handshake (no or untrusted client certificate, plain TCP) is logged
  with the peer's address and closes that connection only.
- Several listener processes may share one port (worker/listeners.py): the node accepts and
  hands each connection to one of them, which serves it with `take(connection, done)` after
  `start_taking()` (no socket of its own), numbering its associations from
  `first_association`.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import socket
import ssl
import tempfile
import threading
import time
from collections.abc import Callable, Collection
from dataclasses import dataclass
from pathlib import Path
from typing import cast

from pydicom.dataset import Dataset
from pynetdicom import AE, AllStoragePresentationContexts, evt
from pynetdicom.sop_class import Verification
from pynetdicom.transport import RequestHandler, ThreadedAssociationServer

from dicom_io.part10 import file_meta, leading_uids

log = logging.getLogger("lumbarnode.scp")

MR_IMAGE_CLASSES = {
    "1.2.840.10008.5.1.4.1.1.4",  # MR Image Storage
    "1.2.840.10008.5.1.4.1.1.4.1",  # Enhanced MR Image Storage
    "1.2.840.10008.5.1.4.1.1.4.3",  # Enhanced MR Color Image Storage
    "1.2.840.10008.5.1.4.1.1.4.4",  # Legacy Converted Enhanced MR Image Storage
}
COMPANION_CLASSES = {
    "1.2.840.10008.5.1.4.1.1.2",  # CT Image Storage (CT of the spine in the same study)
    "1.2.840.10008.5.1.4.1.1.2.1",  # Enhanced CT Image Storage
    "1.2.840.10008.5.1.4.1.1.4.2",  # MR Spectroscopy Storage
    "1.2.840.10008.5.1.4.1.1.7",  # Secondary Capture Image Storage
    "1.2.840.10008.5.1.4.1.1.11.1",  # Grayscale Softcopy Presentation State Storage
    "1.2.840.10008.5.1.4.1.1.88.11",  # Basic Text SR
    "1.2.840.10008.5.1.4.1.1.88.22",  # Enhanced SR
    "1.2.840.10008.5.1.4.1.1.88.33",  # Comprehensive SR
    "1.2.840.10008.5.1.4.1.1.88.34",  # Comprehensive 3D SR
    "1.2.840.10008.5.1.4.1.1.88.59",  # Key Object Selection Document
    "1.2.840.10008.5.1.4.1.1.66",  # Raw Data Storage
    "1.2.840.10008.5.1.4.1.1.66.4",  # Segmentation Storage
}
STORED_CLASSES = MR_IMAGE_CLASSES | COMPANION_CLASSES

SUCCESS = 0x0000
NOT_AUTHORIZED = 0x0124
SOP_CLASS_NOT_SUPPORTED = 0x0122
OUT_OF_RESOURCES = 0xA700
CANNOT_UNDERSTAND = 0xC000
_UID = re.compile(r"^[0-9]+(\.[0-9]+)*$")
# pynetdicom reads an empty `require_calling_aet` as "anyone": with nobody allowed, this
# placeholder keeps the door shut (a caller using it still gets NOT_AUTHORIZED for every instance).
_NOBODY = "NO-CALLER-SET"


@dataclass
class _Tally:
    """What one association delivered, for its log line at the end."""

    number: int
    calling_ae: str
    started: float  # time.monotonic() of its first C-STORE
    stored: int = 0  # acknowledged (duplicates included)
    refused: int = 0


@dataclass(frozen=True)
class StoredInstance:
    """One instance safely in the spool."""

    study_uid: str
    series_uid: str
    sop_instance_uid: str
    sop_class_uid: str
    path: Path
    calling_ae: str
    association: int  # an id of the association it came on
    duplicate: bool
    received_at: float  # time.monotonic()


def spool_path(spool: Path, study_uid: str, series_uid: str, sop_instance_uid: str) -> Path:
    return spool / study_uid / series_uid / f"{sop_instance_uid}.dcm"


def is_uid(value: object) -> bool:
    """A syntactically valid UID, which is also safe as a file name."""
    return isinstance(value, str) and 0 < len(value) <= 64 and bool(_UID.match(value))


def write_atomically(path: Path, data: bytes) -> None:
    """Temporary file in the same folder, flushed to disk, renamed into place, and the rename
    itself made durable (the folder flushed too): after a power cut the instance is there
    whole or not at all, and it is there if the sender was told success."""
    _make_folders_durably(path.parent)
    fd, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".part")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    fsync_folder(path.parent)


def remove_stale_temporaries(folder: Path, older_than_s: float) -> int:
    """write_atomically's temporary files left by a crash mid-write (never acknowledged: the
    rename comes before success); only old ones, so that a write in progress is never touched."""
    removed = 0
    for part in folder.glob(".*.part"):
        try:
            if time.time() - part.stat().st_mtime > older_than_s:
                part.unlink()
                removed += 1
        except FileNotFoundError:
            pass
    return removed


def _touch(path: Path) -> bool:
    """True when the instance is already in the spool; its modification time moves on, which
    tells a cleaner deleting the series at this moment that it was acknowledged again."""
    try:
        os.utime(path)
    except FileNotFoundError:
        return False
    return True


def fsync_folder(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _make_folders_durably(folder: Path) -> None:
    """mkdir -p, flushing the parent of every folder it creates (a study's first instance)."""
    if folder.is_dir():
        return
    missing = []
    while not folder.exists():
        missing.append(folder)
        folder = folder.parent
    for created in reversed(missing):
        created.mkdir(exist_ok=True)
        fsync_folder(created.parent)


@dataclass(frozen=True)
class Refusal:
    """An instance not stored: its status (DIMSE, and STOW-RS's Failure Reason), a reason
    code for the node's record, and a sentence for the sender."""

    status: int
    reason: str
    comment: str


def header_uids(ds: Dataset) -> tuple:
    """Study, series and instance UIDs; pydicom parses lazily, so nothing else is decoded."""
    return ds.get("StudyInstanceUID"), ds.get("SeriesInstanceUID"), ds.get("SOPInstanceUID")


@dataclass(frozen=True)
class Spooled:
    """An instance in the spool (or already there: a duplicate)."""

    path: Path
    duplicate: bool
    study_uid: str
    series_uid: str
    sop_instance_uid: str


def store_instance(spool: Path, min_free_bytes: int, sop_class: str, uids: Callable[[], tuple],
                   encoded: Callable[[], bytes], sender: str, expected_sop_uid: str | None = None) -> Spooled | Refusal:
    """What C-STORE and STOW-RS share, in order: the SOP class taken; the study, series and
    instance UIDs (`uids()`, read lazily) valid and safe as a path, and the instance's the one
    announced; room on the spool's disk; the instance written atomically (a duplicate is kept
    as it is). Returns where it is, or the Refusal."""
    if sop_class not in STORED_CLASSES:
        log.info("refused SOP class %s (instance %s) from %s", sop_class, expected_sop_uid or "?", sender)
        return Refusal(SOP_CLASS_NOT_SUPPORTED, f"sop_class_not_supported:{sop_class}",
                       f"SOP class {sop_class} is not stored by this node")
    try:
        study_uid, series_uid, sop_uid = (None if v is None else str(v) for v in uids())
    except Exception as exc:  # a dataset pydicom cannot even walk
        log.warning("instance %s from %s could not be parsed: %s", expected_sop_uid or "?", sender, type(exc).__name__)
        return Refusal(CANNOT_UNDERSTAND, "unparseable_dataset", f"dataset could not be parsed ({type(exc).__name__})")
    bad = [name for name, v in (("StudyInstanceUID", study_uid), ("SeriesInstanceUID", series_uid),
                                ("SOPInstanceUID", sop_uid)) if not is_uid(v)]
    if bad:
        return Refusal(CANNOT_UNDERSTAND, "invalid_uids", f"missing or invalid {', '.join(bad)}")
    if expected_sop_uid is not None and sop_uid != expected_sop_uid:
        return Refusal(CANNOT_UNDERSTAND, "sop_instance_uid_mismatch", "SOPInstanceUID differs from the C-STORE request's")
    path = spool_path(spool, study_uid, series_uid, sop_uid)
    duplicate = _touch(path)
    if not duplicate and min_free_bytes and shutil.disk_usage(spool).free < min_free_bytes:
        log.error("spool nearly full: refusing instance %s (watermark %d MiB)", sop_uid, min_free_bytes >> 20)
        return Refusal(OUT_OF_RESOURCES, "spool_nearly_full", "the node's spool is nearly full; send again later")
    if not duplicate:
        try:
            write_atomically(path, encoded())
        except OSError as exc:
            log.error("could not write instance %s to the spool: %s", sop_uid, exc.strerror)
            return Refusal(OUT_OF_RESOURCES, "spool_write_failed",
                           f"the node could not store the instance ({exc.strerror})")
    return Spooled(path, duplicate, study_uid, series_uid, sop_uid)


class StorageSCP:
    """The node's DICOM listener. Callbacks are called from pynetdicom's threads."""

    def __init__(
        self,
        ae_title: str,
        spool: Path,
        *,
        allowed_callers: Collection[str] | None,
        transfer_syntaxes: Collection[str],
        on_stored: Callable[[StoredInstance], None] = lambda instance: None,
        on_association_end: Callable[[int, bool], None] = lambda association, released: None,
        on_refused: Callable[[str, str], None] = lambda what, reason: None,
        on_rejected: Callable[[str, str, str], None] = lambda calling_ae, reason, peer_host: None,
        min_free_bytes: int = 0,
        ssl_context: ssl.SSLContext | None = None,
        first_association: int = 1,
    ):
        self.spool = Path(spool)
        self.min_free_bytes = min_free_bytes
        self.ssl_context = ssl_context
        self._on_stored = on_stored
        self._on_end = on_association_end
        self._on_refused = on_refused
        self._on_rejected = on_rejected
        self._server = None
        self._ids: dict[int, _Tally] = {}
        self._next_id = first_association - 1
        self._lock = threading.Lock()
        self.ae = AE(ae_title=ae_title)
        self.ae.require_called_aet = True
        self.allowed_callers = None if allowed_callers is None else frozenset(allowed_callers)
        if self.allowed_callers is not None:
            self.ae.require_calling_aet = sorted(self.allowed_callers) or [_NOBODY]
        self.ae.maximum_associations = 32
        self.ae.network_timeout = self.ae.dimse_timeout = 60
        self.ae.acse_timeout = 10  # ARTIM: a connection that never completes association frees its slot soon
        self.ae.add_supported_context(Verification)
        syntaxes = list(transfer_syntaxes)
        for context in AllStoragePresentationContexts:
            self.ae.add_supported_context(context.abstract_syntax, syntaxes)

    # --- handlers -------------------------------------------------------------------------

    def _tally(self, event) -> _Tally:
        key = id(event.assoc)
        with self._lock:
            if key not in self._ids:
                self._next_id += 1
                self._ids[key] = _Tally(self._next_id, str(event.assoc.requestor.ae_title).strip(), time.monotonic())
            return self._ids[key]

    def _association_id(self, event) -> int:
        return self._tally(event).number

    def _handle_store(self, event) -> int | Dataset:
        tally = self._tally(event)
        status = self._store(event)
        with self._lock:
            if status == SUCCESS:
                tally.stored += 1
            else:
                tally.refused += 1
        return status

    def _store(self, event) -> int | Dataset:
        calling_ae = str(event.assoc.requestor.ae_title).strip()
        sop_class = str(event.request.AffectedSOPClassUID)
        affected_uid = str(event.request.AffectedSOPInstanceUID)
        if self.allowed_callers is not None and calling_ae not in self.allowed_callers:
            self._on_refused(affected_uid, "caller_not_allowed")
            return _status(NOT_AUTHORIZED, f"calling AE title {calling_ae!r} is not an allowed caller")
        received = event.request.DataSet.getvalue()  # the dataset's bytes as sent, never re-encoded
        syntax = str(event.context.transfer_syntax)
        outcome = store_instance(
            self.spool, self.min_free_bytes, sop_class,
            lambda: leading_uids(received, syntax) or header_uids(event.dataset),
            lambda: file_meta(sop_class, affected_uid, syntax) + received, calling_ae, expected_sop_uid=affected_uid)
        if isinstance(outcome, Refusal):
            self._on_refused(affected_uid, outcome.reason)
            return _status(outcome.status, outcome.comment)
        self._on_stored(StoredInstance(outcome.study_uid, outcome.series_uid, outcome.sop_instance_uid, sop_class,
                                       outcome.path, calling_ae, self._association_id(event), outcome.duplicate,
                                       time.monotonic()))
        return SUCCESS

    def _handle_released(self, event) -> None:
        self._end(event, released=True)

    def _handle_ended_otherwise(self, event) -> None:
        """Aborted (A-ABORT, A-P-ABORT) or the connection closed; after a release, a no-op."""
        self._end(event, released=False)

    def _end(self, event, released: bool) -> None:
        with self._lock:
            tally = self._ids.pop(id(event.assoc), None)
        if tally is not None:
            # one line per association that stored anything (C-ECHO health checks are not logged)
            log.info("association %d from %s %s after %.1f s: %d instances stored, %d refused", tally.number,
                     tally.calling_ae, "released" if released else "aborted", time.monotonic() - tally.started,
                     tally.stored, tally.refused)
            self._on_end(tally.number, released)

    def _handle_rejected(self, event) -> None:
        request = event.assoc.requestor.primitive
        calling, called = str(request.calling_ae_title).strip(), str(request.called_ae_title).strip()
        if self.allowed_callers is not None and calling not in self.allowed_callers:
            reason = f"calling AE title {calling!r} is not an allowed caller"
        elif called != str(self.ae.ae_title).strip():
            reason = f"called AE title {called!r} is not this node's ({str(self.ae.ae_title).strip()!r})"
        else:
            reason = "too many associations"
        log.warning("association from %s rejected: %s", event.assoc.requestor.address, reason)
        self._on_rejected(calling, reason, str(event.assoc.requestor.address))

    def _handle_tls_open(self, event) -> None:
        """The TLS handshake of a new connection, in its own thread (see _HandshakeLater)."""
        connection = event.assoc.dul.socket
        sock = connection.socket
        if not isinstance(sock, ssl.SSLSocket):
            return
        try:
            sock.settimeout(self.ae.acse_timeout)
            sock.do_handshake()
            sock.settimeout(None)  # pynetdicom polls a blocking socket
            return
        except TimeoutError:
            reason = f"no handshake within {self.ae.acse_timeout:g} s"
        except (OSError, ValueError) as exc:  # ssl.SSLError is an OSError
            reason = getattr(exc, "verify_message", None) or getattr(exc, "reason", None) or type(exc).__name__
        log.warning("TLS handshake with %s:%s failed: %s", *event.address[:2], reason)
        connection.close()  # the association ends before it began

    # --- server ---------------------------------------------------------------------------

    def start(self, host: str, port: int, taking: bool = False) -> None:
        """Listen on host:port."""
        handlers = [
            (evt.EVT_C_STORE, self._handle_store),
            (evt.EVT_RELEASED, self._handle_released),
            (evt.EVT_ABORTED, self._handle_ended_otherwise),
            (evt.EVT_CONN_CLOSE, self._handle_ended_otherwise),
            (evt.EVT_REJECTED, self._handle_rejected),
        ]
        tls = None
        if self.ssl_context is not None:
            handlers.append((evt.EVT_CONN_OPEN, self._handle_tls_open))
            tls = cast(ssl.SSLContext, _HandshakeLater(self.ssl_context))  # pynetdicom only calls wrap_socket
        if not taking:
            self._server = self.ae.start_server((host, port), block=False, evt_handlers=handlers, ssl_context=tls)
            return
        self._server = self.ae.make_server((host, port), evt_handlers=handlers, ssl_context=tls,
                                           server_class=_TakingServer, request_handler=_UntilReleased)

    def start_taking(self) -> None:
        """Serve connections accepted by another process and handed over (`take`), no socket
        of its own."""
        self.start("127.0.0.1", 0, taking=True)

    def take(self, connection: socket.socket, done: Callable[[], None]) -> None:
        """Serve one accepted connection in its own thread; `done()` when it has closed."""
        self._server.take(connection, done)

    @property
    def port(self) -> int:
        return self._server.server_address[1]

    def stop(self) -> None:
        if self._server is not None:
            if not isinstance(self._server, _TakingServer):  # it never listened: nothing to shut down
                self._server.shutdown()
            self._server = None


class _TakingServer(ThreadedAssociationServer):
    """pynetdicom's server without a socket: it serves connections another process accepted,
    each as its own accept loop would have (wrapped for TLS, one handler thread)."""

    daemon_threads = True  # a listener process told to stop does not wait for its associations
    block_on_close = False

    def server_bind(self) -> None:
        self.done: dict[int, Callable[[], None]] = {}
        self.socket.close()  # the one socketserver made: this server never listens
        self.server_address = ("127.0.0.1", 0)

    def server_activate(self) -> None:
        pass

    def server_close(self) -> None:
        pass

    def take(self, connection: socket.socket, done: Callable[[], None]) -> None:
        peer = connection.getpeername()  # before wrapping: the TLS socket takes the descriptor over
        request = self.ssl_context.wrap_socket(connection, server_side=True) if self.ssl_context else connection
        self.done[id(request)] = done  # called by _UntilReleased
        self.service_actions()  # pynetdicom's collection of ended association threads
        self.process_request(request, peer)


class _UntilReleased(RequestHandler):
    """pynetdicom's handler (the association in its own thread), waiting for the association
    to end, so that the process that handed the connection over learns it has closed."""

    def handle(self) -> None:
        try:
            association = self._create_association()
            evt.trigger(association, evt.EVT_CONN_OPEN, {"address": self.client_address})
            association.start()
            association.join()
        finally:
            self.server.done.pop(id(self.request))()


class _HandshakeLater:
    """Stands in for the SSLContext given to pynetdicom, which wraps each accepted socket in
    its accept loop: here without the handshake, which `_handle_tls_open` does afterwards."""

    def __init__(self, context: ssl.SSLContext):
        self.context = context

    def wrap_socket(self, sock, server_side: bool = True) -> ssl.SSLSocket:
        return self.context.wrap_socket(sock, server_side=server_side, do_handshake_on_connect=False)


def _status(code: int, comment: str) -> Dataset:
    status = Dataset()
    status.Status = code
    status.ErrorComment = comment[:64]
    return status
