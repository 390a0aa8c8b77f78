"""The node: the storage SCP, series assembly and, for `serve`, the embedded workers.

`listen` runs the listener alone (workers run elsewhere with `lumbarnode worker`); `serve`
also starts one Celery worker process per queue (inference, export) on the same broker,
the zero-server default. Both stop cleanly on SIGINT/SIGTERM: the listener stops taking
associations (a spool file is renamed into place whole or not at all), and the workers get
a warm shutdown (the running job finishes, or goes back to the queue with acks_late).
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable

from db import JobStore
from db.access import AccessStore
from db.migrate import ready
from worker import jobs, retention, tasks
from worker.assembly import SeriesAssembler
from worker.bookkeeper import Bookkeeper
from worker.listeners import Handlers, make_listener
from worker.settings import Settings, SettingsError, variable
from worker.stow_server import StowServer, create_stow_app

log = logging.getLogger("lumbarnode.node")
POLL_S = 0.2
SWEEP_S = 2.0  # how often lost jobs are looked for and dead workers restarted
CLEAN_S = 60.0  # how often the retention cleaner looks for jobs due


class Node:
    def __init__(self, settings: Settings, enqueue: Callable[[int], None] | None = None):
        self.settings = settings
        settings.spool_dir.mkdir(parents=True, exist_ok=True)
        ready(settings.database_url, create=True)  # migrated on first use; another application's is refused
        self.store = JobStore(settings.database_url)
        self.access = AccessStore(self.store)
        tasks.configure(settings)
        self.bookkeeper = Bookkeeper(self.store, settings, enqueue or tasks.enqueue_process, tasks.enqueue_export)
        self.assembler = SeriesAssembler(self.store, settings, self.bookkeeper.queue)
        # one StorageSCP in this process, or LISTENER_PROCESSES children on one socket
        self.scp = make_listener(settings, Handlers(self.assembler.instance_stored, self.assembler.association_ended,
                                                    self._refused, self._rejected))
        self.stow = None
        if settings.stow_port:
            app = create_stow_app(settings, self.access, self.assembler.instance_stored,
                                  self.assembler.association_ended, self._refused)
            try:
                self.stow = StowServer(app, settings.stow_host, settings.stow_port)
            except OSError as exc:
                raise SettingsError(f"cannot listen on {settings.stow_host}:{settings.stow_port} for STOW-RS "
                                    f"({exc.strerror}): set {variable('stow_port')}") from None
        self._stop = threading.Event()
        self._broker_instance: str | None = None
        self.on_sweep: Callable[[], None] | None = None  # serve: restart workers that died

    def _refused(self, sop_instance_uid: str, reason: str) -> None:
        self._record("instance_refused", f"instance {sop_instance_uid}: {reason}")

    def _rejected(self, calling_ae: str, reason: str, peer_host: str) -> None:
        try:  # the audit trail: who was turned away; a database hiccup must not break the listener
            self.access.audit("association_rejected", actor=calling_ae, actor_kind="dicom", outcome="denied",
                              address=peer_host, detail=reason[:300])
        except Exception:
            log.warning("could not record the rejected association in the audit trail")
        if calling_ae and calling_ae not in self.settings.callers and self.settings.require_known_caller:
            log.warning("to accept %r, add %s=%s@%s:<its DICOM port> to %s (where its results go)", calling_ae,
                        calling_ae, calling_ae, peer_host, variable("allowed_callers"))

    def _record(self, kind: str, message: str) -> None:
        """An event for the admin page; the listener's log already has it, so a database
        hiccup here must not break the listener."""
        try:
            self.store.add_event(kind, message)
        except Exception:
            log.warning("could not record the event %s", kind)

    def start(self) -> None:
        self.assembler.recover()
        # The broker may have lost messages while the node was down (a Redis restarted without
        # persistence); a second message for a job is harmless.
        self.bookkeeper.resend_all("node started: messages of queued and exporting jobs sent again")
        try:
            self.scp.start(self.settings.host, self.settings.port)
        except OSError as exc:
            raise SettingsError(f"cannot listen on {self.settings.host}:{self.settings.port} ({exc.strerror}): "
                                f"another program has the port, or set {variable('port')} / "
                                f"{variable('host')}") from None
        if self.settings.require_known_caller and not self.settings.callers:
            log.warning("no caller is allowed yet, so every association is rejected: set %s=CALLING_AE="
                        "RETURN_AE@host:port (e.g. PACS=PACS@10.0.0.5:104: who may send, and where its results "
                        "go), or %s=false to accept any caller", variable("allowed_callers"),
                        variable("require_known_caller"))
        log.info("listening as %s on %s:%d%s (spool %s)", self.settings.ae_title, self.settings.host, self.scp.port,
                 self.tls_note, self.settings.spool_dir)
        if self.stow is not None:
            self.stow.start()
            log.info("STOW-RS on http://%s:%d/dicom-web/studies (API tokens of senders)", self.settings.stow_host,
                     self.stow.port)

    @property
    def tls_note(self) -> str:
        if self.scp.ssl_context is None:
            return ""
        return ", DICOM TLS on" + (" (client certificates required)" if self.settings.tls_ca else "")

    def run(self) -> None:
        """Assemble series until stop() is called."""
        last_sweep = last_clean = 0.0
        while not self._stop.is_set():
            self.assembler.poll()
            if time.monotonic() - last_sweep > SWEEP_S:
                last_sweep = time.monotonic()
                try:
                    self._resend_if_the_broker_restarted()
                    self.bookkeeper.sweep()
                except Exception:
                    log.exception("could not look for jobs to queue again")
                if self.on_sweep is not None:
                    self.on_sweep()
            if time.monotonic() - last_clean > CLEAN_S:
                last_clean = time.monotonic()
                try:
                    retention.clean(self.store, self.settings)
                except Exception:
                    log.exception("the retention cleaner failed; it tries again in %.0f s", CLEAN_S)
            self._stop.wait(POLL_S)

    def _resend_if_the_broker_restarted(self) -> None:
        instance = tasks.broker_instance()
        if instance is None:
            return  # not a Redis broker, or not reachable now (new jobs go back to `received`)
        if self._broker_instance not in (None, instance):
            log.warning("the broker restarted (run_id %s -> %s)", self._broker_instance, instance)
            self.bookkeeper.resend_all("the broker restarted: the messages it held may be lost")
        self._broker_instance = instance

    def stop(self) -> None:
        self._stop.set()
        self.scp.stop()
        if self.stow is not None:
            self.stow.stop()
        self.store.dispose()


def _worker_commands(settings: Settings) -> list[list[str]]:
    return [
        ["worker", "--queues", tasks.INFERENCE_QUEUE, "--concurrency", str(settings.inference_workers)],
        ["worker", "--queues", tasks.EXPORT_QUEUE, "--concurrency", "2"],
    ]


def _start_worker(settings: Settings, command: list[str]) -> subprocess.Popen:
    env = {**os.environ, **settings.environment()}
    return subprocess.Popen([sys.executable, "-m", "worker.cli", *command], env=env)


def start_workers(settings: Settings) -> list[subprocess.Popen]:
    """One worker process per queue, on the same settings (passed as LUMBARNODE_* variables)."""
    return [_start_worker(settings, command) for command in _worker_commands(settings)]


def restart_dead_workers(settings: Settings, workers: list[subprocess.Popen]) -> None:
    """A worker that died (killed, out of memory) is started again; its job is not lost:
    the message comes back (acks_late) or the sweep queues the silent job again."""
    for index, (process, command) in enumerate(zip(workers, _worker_commands(settings))):
        if process.poll() is not None:
            log.warning("worker %s exited with %s; starting it again", " ".join(command[1:3]), process.returncode)
            workers[index] = _start_worker(settings, command)


def stop_workers(workers: list[subprocess.Popen], timeout_s: float = 120.0) -> None:
    for process in workers:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)  # Celery's warm shutdown
    for process in workers:
        try:
            process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def run_node(settings: Settings, with_workers: bool) -> int:
    node = Node(settings)
    workers: list[subprocess.Popen] = []

    def shut_down(signum, frame):
        log.info("stopping (signal %d)", signum)
        node._stop.set()

    previous = {sig: signal.signal(sig, shut_down) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        node.start()  # the port first: a port in use is said before any worker starts
        if with_workers:
            workers += start_workers(settings)
            node.on_sweep = lambda: restart_dead_workers(settings, workers)
        print(f"lumbarnode: {settings.ae_title} listening on {settings.host}:{node.scp.port}{node.tls_note}"
              f"{' with embedded workers' if workers else ''}; data in {settings.data_dir}; Ctrl-C stops",
              flush=True)
        node.run()
    finally:
        node.stop()
        stop_workers(workers)
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return 0


def run_worker(settings: Settings, queues: str, concurrency: int) -> int:
    app = tasks.configure(settings)
    started = time.monotonic()
    if tasks.INFERENCE_QUEUE not in queues.split(","):
        pool = "threads"  # export waits on the network
    elif concurrency == 1:
        pool = "solo"  # the method is CPU/GPU bound: one process that loads the networks now
        jobs.models(settings)
    else:
        pool = "prefork"  # processes that each load the networks as they start, before their first job
        from celery.signals import worker_process_init

        worker_process_init.connect(lambda **_: jobs.models(settings), weak=False)
    _record_ready(settings, queues, time.monotonic() - started)
    app.worker_main(["worker", "--queues", queues, "--concurrency", str(concurrency), "--pool", pool,
                     "--hostname", f"lumbarnode-{queues.replace(',', '-')}-{os.getpid()}@%h",
                     "--loglevel", "INFO", "--without-gossip", "--without-mingle", "--without-heartbeat"])
    return 0


def _record_ready(settings: Settings, queues: str, load_s: float) -> None:
    """A `worker_ready` event once the worker takes messages (its networks loaded), so that the
    demo, a test or an admin sees when the first job will not wait for TensorFlow."""
    from celery.signals import worker_ready

    def ready(**_) -> None:
        try:
            store = JobStore(settings.database_url)
            store.add_event("worker_ready", f"worker for {queues} ready (pid {os.getpid()}, started in {load_s:.1f} s)")
            store.dispose()
        except Exception:
            log.warning("could not record that the worker is ready")

    worker_ready.connect(ready, weak=False)
