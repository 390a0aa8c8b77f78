"""Ingest by DICOMweb STOW-RS: `POST /dicom-web/studies` (and `/dicom-web/studies/{study}`)
on STOW_PORT, in the node's own process beside the DICOM listener, so that both feed one
spool, one series assembly and one job flow.

- Who may send: an API token (`Authorization: Bearer`, `lumbarnode users token`) of a user
  with the `sender` role (or `admin`); the user's name stands for the calling AE title: its
  return address comes from ALLOWED_CALLERS (or DESTINATION) as for a DICOM caller, and with
  REQUIRE_KNOWN_CALLER a name not in the list is refused (403), as an unknown AE is.
- Each part is stored as the listener stores an instance (dicom_io.scp.store_instance): the
  same SOP classes, UID checks, free-space watermark, and the file fsync'd and renamed before
  the response says stored. One request is one "association" for series completion (a
  request cut off mid-body counts as cut short).
- The response is PS3.18's: 200 all stored, 202 some refused, 409 none, with the Referenced
  and Failed SOP Sequences (Failure Reason: the DIMSE status a C-STORE would have had).
"""

from __future__ import annotations

import itertools
import logging
import socket
import threading
import time
from collections.abc import Callable

import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from starlette.requests import ClientDisconnect

from db.access import AccessStore, Role
from dicom_io.scp import CANNOT_UNDERSTAND, Refusal, StoredInstance, store_instance
from dicom_io.stow_request import BadRequest, PartReader, StoreResponse, read_part
from worker.admin.auth import PERMISSIONS, Permission, secret_hash
from worker.settings import Settings

log = logging.getLogger("lumbarnode.stow")
DICOM_JSON = "application/dicom+json"
STUDY_MISMATCH = 0xA900  # the instance is not of the study the request names


def create_stow_app(settings: Settings, access: AccessStore, on_stored: Callable[[StoredInstance], None],
                    on_request_end: Callable[[int, bool], None],
                    on_refused: Callable[[str, str], None] = lambda uid, reason: None) -> FastAPI:
    app = FastAPI(title="lumbarnode STOW-RS", docs_url=None, redoc_url=None, openapi_url=None)
    requests = itertools.count(1)

    def sender(request: Request) -> str | Response:
        """The token's user name, or the refusal to send back."""
        scheme, _, secret = request.headers.get("authorization", "").partition(" ")
        found = access.credential(secret_hash(secret.strip())) if scheme.lower() == "bearer" and secret else None
        address = request.client.host if request.client else ""
        if found is None or found[0].kind != "token":
            access.audit("stow_rejected", actor="", outcome="denied", address=address, detail="no valid API token")
            return JSONResponse({"detail": "an API token is required: Authorization: Bearer TOKEN"}, 401,
                                headers={"WWW-Authenticate": 'Bearer realm="lumbarnode"'})
        user = found[1]
        if Permission.STORE not in PERMISSIONS[Role(user.role)]:
            access.audit("stow_rejected", actor=user.username, outcome="denied", address=address,
                         detail=f"role {user.role} may not send studies")
            return JSONResponse({"detail": f"the role {user.role} may not send studies (a sender may)"}, 403)
        name = user.username[:16]
        if settings.require_known_caller and name not in settings.callers:
            access.audit("stow_rejected", actor=user.username, outcome="denied", address=address,
                         detail="not an allowed caller")
            return JSONResponse({"detail": f"{name!r} is not an allowed caller: add {name}=RETURN_ADDRESS to "
                                           "LUMBARNODE_ALLOWED_CALLERS"}, 403)
        return name

    async def store(request: Request, study: str | None) -> Response:
        who = sender(request)
        if isinstance(who, Response):
            return who
        try:
            reader = PartReader(request.headers.get("content-type", ""), settings.stow_max_mb * 2**20)
        except BadRequest as exc:
            return JSONResponse({"detail": str(exc)}, exc.status_code)
        number = -next(requests)  # negative: never one of the DICOM listener's association numbers
        answer = StoreResponse()
        released = False
        try:
            async for chunk in request.stream():
                for kind, data in reader.feed(chunk):
                    _store_part(kind, data, study, who, number, answer)
            for kind, data in reader.finish():
                _store_part(kind, data, study, who, number, answer)
            released = True
        except BadRequest as exc:
            return JSONResponse({"detail": str(exc)}, exc.status_code)
        except ClientDisconnect:
            log.warning("STOW-RS request from %s cut off after %d instances", who, len(answer.stored))
            return Response(status_code=400)
        finally:
            on_request_end(number, released)
        if not answer.stored and not answer.failed:
            return JSONResponse({"detail": "the request held no application/dicom part"}, 400)
        log.info("STOW-RS request from %s: %d instances stored, %d refused", who, len(answer.stored),
                 len(answer.failed))
        return JSONResponse(answer.as_json(), answer.status_code, media_type=DICOM_JSON)

    def _store_part(kind: str, data: bytes, study: str | None, who: str, number: int, answer: StoreResponse) -> None:
        if kind != "application/dicom":
            answer.failed.append(("", "", CANNOT_UNDERSTAND))
            return
        try:
            header = read_part(data)
        except Exception as exc:  # not a DICOM Part 10 file
            log.warning("STOW-RS part from %s is not a DICOM file (%s)", who, type(exc).__name__)
            on_refused("", "unparseable_dataset")
            answer.failed.append(("", "", CANNOT_UNDERSTAND))
            return
        uid = str(header.uids[2] or "")
        if study is not None and str(header.uids[0] or "") != study:
            answer.failed.append((header.sop_class_uid, uid, STUDY_MISMATCH))
            return
        outcome = store_instance(settings.spool_dir, settings.min_free_spool_mb * 2**20, header.sop_class_uid,
                                 lambda: header.uids, lambda: data, who)
        if isinstance(outcome, Refusal):
            on_refused(uid, outcome.reason)
            answer.failed.append((header.sop_class_uid, uid, outcome.status))
            return
        on_stored(StoredInstance(outcome.study_uid, outcome.series_uid, outcome.sop_instance_uid,
                                 header.sop_class_uid, outcome.path, who, number, outcome.duplicate,
                                 time.monotonic()))
        answer.stored.append((header.sop_class_uid, outcome.sop_instance_uid))

    @app.post("/dicom-web/studies")
    async def store_any(request: Request) -> Response:
        return await store(request, None)

    @app.post("/dicom-web/studies/{study}")
    async def store_study(request: Request, study: str) -> Response:
        return await store(request, study)

    return app


class StowServer:
    """The STOW-RS app served by uvicorn in a thread of the node."""

    def __init__(self, app: FastAPI, host: str, port: int):
        self.host, self.requested_port = host, port
        self._socket = socket.create_server((host, port), reuse_port=False)
        self.port = self._socket.getsockname()[1]
        self._server = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False))
        self._thread = threading.Thread(target=self._server.run, kwargs={"sockets": [self._socket]}, daemon=True,
                                        name="stow-rs")

    def start(self) -> None:
        self._thread.start()
        deadline = time.monotonic() + 30
        while not self._server.started:  # uvicorn sets it once it accepts
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"the STOW-RS endpoint did not start on {self.host}:{self.port}")
            time.sleep(0.02)

    def stop(self) -> None:
        self._server.should_exit = True
        self._thread.join(timeout=15)
        self._socket.close()
