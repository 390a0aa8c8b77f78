"""DICOM listener processes: ingest that scales with cores.

One Python process holds the GIL for every association it serves, so the node binds its
port once (a second node on the same port fails as before: no SO_REUSEPORT) and starts
`LISTENER_PROCESSES` child processes, each a `dicom_io.scp.StorageSCP` without a socket of
its own. The node accepts every connection and hands it (SCM_RIGHTS, on the child's
socketpair) to the child serving the fewest: children sharing the listening socket would
race for each connection, and one busy child took all four of four parallel associations in
a measurement. A child writes every instance to the spool durably before it answers success,
exactly as in one process, then tells the node on the same socketpair, one JSON line per
event: stored, association ended, refused, rejected, connection closed. The node keeps the
one series assembler, so a series whose instances arrive on different processes is still
seen once.

A child that dies (killed, out of memory) is started again; the associations it held end as
not released (their series wait for the rest, as for any cut-short transfer), and an
instance it stored but could not report is in the spool, where `recover` finds it at the
next start. Children leave when the node does: their socketpair closes. Connections accepted
while no child is ready are closed at once (the sender sees the connection refused and sends
again), never queued unserved.

With one process (`LISTENER_PROCESSES=1`) the listener runs inside the node, no children.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from dicom_io.scp import StorageSCP, StoredInstance
from dicom_io.series import decodable_transfer_syntaxes
from worker.settings import Settings

log = logging.getLogger("lumbarnode.listeners")
READY_TIMEOUT_S = 60.0
RESTART_DELAY_S = 1.0  # a child that dies at once is not restarted in a tight loop
ACCEPT_POLL_S = 0.05  # how soon the accept loop sees that the node stops
ASSOCIATIONS_PER_CHILD = 1 << 40  # each child start numbers its associations in its own block


@dataclass(frozen=True)
class Handlers:
    """What the node does with the listener's events (the same in one process or many)."""

    stored: Callable[[StoredInstance], None]
    association_ended: Callable[[int, bool], None]
    refused: Callable[[str, str], None]
    rejected: Callable[[str, str, str], None]


def make_scp(settings: Settings, handlers: Handlers, first_association: int = 1) -> StorageSCP:
    return StorageSCP(
        settings.ae_title, settings.spool_dir,
        allowed_callers=set(settings.callers) if settings.require_known_caller else None,
        transfer_syntaxes=[str(ts) for ts in decodable_transfer_syntaxes()],
        on_stored=handlers.stored, on_association_end=handlers.association_ended, on_refused=handlers.refused,
        on_rejected=handlers.rejected, min_free_bytes=settings.min_free_spool_mb * 2**20,
        ssl_context=settings.listener_tls(), first_association=first_association,
    )


def make_listener(settings: Settings, handlers: Handlers) -> StorageSCP | ListenerPool:
    processes = settings.listener_count
    return make_scp(settings, handlers) if processes == 1 else ListenerPool(settings, handlers, processes)


@dataclass
class _Child:
    slot: int
    process: subprocess.Popen
    events: socket.socket
    ready: threading.Event = field(default_factory=threading.Event)
    reader: threading.Thread | None = None
    open_associations: set[int] = field(default_factory=set)
    connections: int = 0  # handed over and not yet closed


class ListenerPool:
    """The node's side: the listening socket, the children, their events."""

    def __init__(self, settings: Settings, handlers: Handlers, processes: int):
        self.settings = settings
        self.handlers = handlers
        self.processes = processes
        self.ssl_context = settings.listener_tls()  # read here, so that a bad certificate stops the node itself
        self._socket: socket.socket | None = None
        self._children: list[_Child] = []
        self._starts = 0
        self._acceptor: threading.Thread | None = None
        self._stopping = threading.Event()
        self._lock = threading.Lock()

    def start(self, host: str, port: int) -> None:
        listening = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            listening.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as pynetdicom's server does
            listening.bind((host, port))
            listening.listen(128)
        except OSError:
            listening.close()
            raise
        listening.settimeout(ACCEPT_POLL_S)
        self._socket = listening
        self._children = [self._spawn(slot) for slot in range(self.processes)]
        deadline = time.monotonic() + READY_TIMEOUT_S
        for child in self._children:
            if not child.ready.wait(max(0.0, deadline - time.monotonic())):
                log.warning("listener process %d (pid %d) not ready after %.0f s", child.slot, child.process.pid,
                            READY_TIMEOUT_S)
        self._acceptor = threading.Thread(target=self._accept, name="listener-accept", daemon=True)
        self._acceptor.start()
        log.info("%d listener processes serve %s:%d", self.processes, host, self.port)

    @property
    def port(self) -> int:
        return self._socket.getsockname()[1]

    @property
    def pids(self) -> list[int]:
        return [child.process.pid for child in self._children]

    @property
    def connections(self) -> dict[int, int]:
        """Connections each child (by pid) serves now."""
        with self._lock:
            return {child.process.pid: child.connections for child in self._children}

    def stop(self) -> None:
        self._stopping.set()
        if self._acceptor is not None:
            self._acceptor.join()
        for child in self._children:
            if child.process.poll() is None:
                child.process.terminate()
        for child in self._children:
            try:
                child.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                child.process.kill()
                child.process.wait()
            child.reader.join(timeout=5)  # its last events handled
            child.events.close()
        if self._socket is not None:
            self._socket.close()
            self._socket = None

    def _spawn(self, slot: int) -> _Child:
        with self._lock:
            self._starts += 1
            first_association = self._starts * ASSOCIATIONS_PER_CHILD
        ours, theirs = socket.socketpair()
        command = [sys.executable, "-m", "worker.listeners", "--events-fd", str(theirs.fileno()),
                   "--first-association", str(first_association)]
        process = subprocess.Popen(command, pass_fds=(theirs.fileno(),),
                                   env={**os.environ, **self.settings.environment()})
        theirs.close()
        child = _Child(slot, process, ours)
        child.reader = threading.Thread(target=self._read, args=(child,), name=f"listener-{slot}-events", daemon=True)
        child.reader.start()
        return child

    def _accept(self) -> None:
        while not self._stopping.is_set():
            try:
                connection, peer = self._socket.accept()
            except TimeoutError:
                continue
            except OSError as exc:  # out of descriptors, say: the next connection may fare better
                log.error("accepting a connection failed: %s", exc)
                time.sleep(ACCEPT_POLL_S)
                continue
            with connection:  # the node's copy is closed once the child has its own
                self._hand_over(connection, peer[0])

    def _hand_over(self, connection: socket.socket, peer_host: str) -> None:
        """To the ready child serving the fewest connections (the first of them on a tie)."""
        with self._lock:
            children = sorted((c for c in self._children if c.ready.is_set() and c.process.poll() is None),
                              key=lambda c: c.connections)
        for child in children:
            try:
                socket.send_fds(child.events, [b"c"], [connection.fileno()])
            except OSError:  # it died since: the next one
                continue
            with self._lock:
                child.connections += 1
            return
        log.error("no listener process ready: connection from %s closed", peer_host)

    def _read(self, child: _Child) -> None:
        with child.events.makefile("r", encoding="utf-8") as lines:
            for line in lines:
                try:
                    self._dispatch(child, json.loads(line))
                except Exception:  # the node's side failed (the database away): the listener goes on
                    log.exception("listener event not handled: %s", line[:200])
        # the child is gone: what it held open was cut short
        for association in sorted(child.open_associations):
            self.handlers.association_ended(association, False)
        child.open_associations.clear()
        if self._stopping.is_set():
            return
        code = child.process.wait()
        log.error("listener process %d (pid %d) exited with %s; starting another", child.slot, child.process.pid, code)
        time.sleep(RESTART_DELAY_S)
        if not self._stopping.is_set():
            self._children[child.slot] = self._spawn(child.slot)

    def _dispatch(self, child: _Child, event: dict) -> None:
        kind = event.pop("event")
        if kind == "stored":
            event["path"] = Path(event["path"])
            instance = StoredInstance(**event)
            child.open_associations.add(instance.association)
            self.handlers.stored(instance)
        elif kind == "ended":
            child.open_associations.discard(event["association"])
            self.handlers.association_ended(event["association"], event["released"])
        elif kind == "closed":
            with self._lock:
                child.connections = max(0, child.connections - 1)
        elif kind == "refused":
            self.handlers.refused(event["sop_instance_uid"], event["reason"])
        elif kind == "rejected":
            self.handlers.rejected(event["calling_ae"], event["reason"], event["peer_host"])
        elif kind == "ready":
            child.ready.set()


# --- the child ----------------------------------------------------------------------------------


class _Events:
    """The child's side of its socketpair: one JSON line per event, from any thread."""

    def __init__(self, sock: socket.socket, gone: threading.Event):
        self.sock = sock
        self.gone = gone
        self.lock = threading.Lock()

    def send(self, kind: str, **fields) -> None:
        line = (json.dumps({"event": kind, **fields}) + "\n").encode()
        try:
            with self.lock:
                self.sock.sendall(line)
        except OSError:  # the node is gone; what was stored is in the spool, where its restart finds it
            self.gone.set()

    def handlers(self) -> Handlers:
        def stored(instance: StoredInstance) -> None:
            self.send("stored", study_uid=instance.study_uid, series_uid=instance.series_uid,
                      sop_instance_uid=instance.sop_instance_uid, sop_class_uid=instance.sop_class_uid,
                      path=str(instance.path), calling_ae=instance.calling_ae, association=instance.association,
                      duplicate=instance.duplicate, received_at=instance.received_at)  # monotonic: machine-wide

        return Handlers(
            stored=stored,
            association_ended=lambda association, released: self.send("ended", association=association,
                                                                        released=released),
            refused=lambda uid, reason: self.send("refused", sop_instance_uid=uid, reason=reason),
            rejected=lambda calling_ae, reason, peer_host: self.send("rejected", calling_ae=calling_ae, reason=reason,
                                                                      peer_host=peer_host),
        )


def child_main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m worker.listeners", description="a listener process of the node "
                                     "(started by it, not by hand)")
    parser.add_argument("--events-fd", type=int, required=True)
    parser.add_argument("--first-association", type=int, required=True)
    args = parser.parse_args(argv)
    from worker.cli import configure_logging

    configure_logging()
    settings = Settings.from_env()
    gone = threading.Event()
    events = _Events(socket.socket(fileno=args.events_fd), gone)
    signal.signal(signal.SIGTERM, lambda *_: gone.set())
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the node, which stops its children
    scp = make_scp(settings, events.handlers(), args.first_association)
    scp.start_taking()
    threading.Thread(target=_take_connections, args=(events, scp), daemon=True).start()
    events.send("ready", pid=os.getpid())
    gone.wait()
    scp.stop()
    return 0


def _take_connections(events: _Events, scp: StorageSCP) -> None:
    """Connections the node accepted, one descriptor a message; end of file: the node has gone."""
    try:
        while True:
            message, descriptors, _, _ = socket.recv_fds(events.sock, 64, 16)
            if not message:
                break
            for descriptor in descriptors:
                connection = socket.socket(fileno=descriptor)
                try:
                    scp.take(connection, lambda: events.send("closed"))
                except Exception:  # this connection only (its peer gone already, say)
                    log.exception("a connection handed over could not be served")
                    connection.close()
                    events.send("closed")
    except OSError:
        log.exception("connections from the node")
    events.gone.set()


if __name__ == "__main__":
    raise SystemExit(child_main())
