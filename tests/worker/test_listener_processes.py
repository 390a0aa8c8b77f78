"""Several listener processes on one port (worker/listeners.py): instances of one series that
arrive on different processes still make one job; a listener process killed mid-transfer is
replaced, its association counts as cut short, and nothing acknowledged is lost; rejected
callers are audited by the node whichever process turned them away.

The real node (`worker.node.Node`) runs in this process with real child processes and real
associations (pynetdicom, DCMTK's storescu); the Celery queue is a list of job ids (a
stand-in: the queue is tested in test_node.py). The node hands each connection to the child
serving the fewest (the first on a tie); the tests decide which child takes one by holding
an association open on each of the others.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
from contextlib import contextmanager
from dataclasses import replace

import pydicom
import pytest

from dicom_io.scu import send_files
from tests.helpers.dicom_files import write_series
from tests.helpers.node import NodesInThreads
from tests.helpers.tools import DCMTK_ENV, require_tool, wait_until
from worker.listeners import ASSOCIATIONS_PER_CHILD, ListenerPool
from worker.node import Node
from worker.settings import Settings


@pytest.fixture
def node_factory(tmp_path):
    nodes = NodesInThreads(tmp_path / "node", quiet_period_s=0.5, incomplete_wait_s=1.5)

    def start(processes: int = 2, **changes) -> tuple[Settings, Node, list[int]]:
        return nodes.start(listener_processes=processes, **changes)

    yield start
    nodes.stop_all()


def series_uid(path) -> str:
    return str(pydicom.dcmread(path, stop_before_pixels=True).SeriesInstanceUID)


def pool(node: Node) -> ListenerPool:
    assert isinstance(node.scp, ListenerPool)
    return node.scp


def idle(node: Node) -> None:
    wait_until(lambda: not any(pool(node).connections.values()), 20, "every connection closed")


def hold(settings: Settings):
    """An open association from PACS (C-ECHO only), as a PACS keeps one between studies."""
    from pynetdicom import AE
    from pynetdicom.sop_class import Verification

    ae = AE(ae_title="PACS")
    ae.add_requested_context(Verification)
    assoc = ae.associate("127.0.0.1", settings.port, ae_title=settings.ae_title)
    assert assoc.is_established
    return assoc


@contextmanager
def only(node: Node, settings: Settings, pid: int):
    """Every other listener process serving one held association meanwhile: the node hands the
    next connections to `pid`, the only one serving none."""
    idle(node)
    held = {}
    for child in pool(node).pids:  # one each, in the children's order (the fewest, the first on a tie)
        held[child] = hold(settings)
        wait_until(lambda: pool(node).connections[child] == 1, 10, "the association handed over")
    held.pop(pid).release()
    wait_until(lambda: pool(node).connections[pid] == 0, 10, "its connection closed")
    try:
        yield
    finally:
        for assoc in held.values():
            assoc.release()


def recorded_associations(node: Node) -> list[int]:
    """The association numbers the assembler saw, by wrapping its handler."""
    seen: list[int] = []
    original = pool(node).handlers.stored

    def stored(instance):
        seen.append(instance.association)
        original(instance)

    pool(node).handlers = replace(original_handlers := pool(node).handlers, stored=stored)
    assert original_handlers.stored is original
    return seen


def test_a_series_sent_to_two_listener_processes_makes_one_job(node_factory, tmp_path):
    settings, node, queued = node_factory(processes=2)
    assert len(set(pool(node).pids)) == 2 and os.getpid() not in pool(node).pids
    seen = recorded_associations(node)
    files = write_series(tmp_path / "src", "split", slices=12)
    from pynetdicom import AE
    from pynetdicom.sop_class import MRImageStorage

    ae = AE(ae_title="PACS")
    ae.add_requested_context(MRImageStorage)
    idle(node)
    # both associations open before either sends: the first goes to one child, the second to
    # the other (the fewest connections), and no quiet period passes between the halves
    halves = [ae.associate("127.0.0.1", settings.port, ae_title=settings.ae_title) for _ in range(2)]
    assert all(assoc.is_established for assoc in halves)
    for assoc, part in zip(halves, (files[:6], files[6:])):
        assert all(assoc.send_c_store(pydicom.dcmread(path)).Status == 0 for path in part)
    for assoc in halves:
        assoc.release()
    job = wait_until(lambda: (j := node.store.latest_job(series_uid(files[0]))) and j, 30, "the job")
    assert job.status == "queued" and job.instance_count == 12 and queued == [job.id]
    assert len({a // ASSOCIATIONS_PER_CHILD for a in seen}) == 2, seen  # numbered by two different processes
    assert len(set(seen)) == 2 and len(seen) == 12
    # the same series again on both processes at once: duplicates only, no new job
    procs = [subprocess.Popen([require_tool("storescu"), "-aet", "STORESCU", "-aec", settings.ae_title, "127.0.0.1",
                               str(settings.port), *map(str, part)], env=DCMTK_ENV, stderr=subprocess.PIPE)
             for part in (files[::2], files[1::2])]
    assert all(p.wait(timeout=60) == 0 for p in procs)
    wait_until(lambda: len(seen) == 24, 20, "the duplicates reported")
    assert node.store.latest_job(series_uid(files[0])).id == job.id and queued == [job.id]


def test_a_killed_listener_process_is_replaced_and_its_transfer_is_cut_short(node_factory, tmp_path):
    from pynetdicom import AE
    from pynetdicom.sop_class import MRImageStorage

    settings, node, queued = node_factory(processes=2)
    files = write_series(tmp_path / "src", "killed", slices=8)
    victim = pool(node).pids[0]
    ae = AE(ae_title="PACS")
    ae.add_requested_context(MRImageStorage)
    with only(node, settings, victim):
        assoc = ae.associate("127.0.0.1", settings.port, ae_title=settings.ae_title)
        assert assoc.is_established
        for path in files[:4]:
            assert assoc.send_c_store(pydicom.dcmread(path)).Status == 0
        os.kill(victim, signal.SIGKILL)  # mid-transfer: the association never ends
    assoc.abort()
    replaced = wait_until(lambda: victim not in pool(node).pids and len(pool(node).pids) == 2, 30, "a new process")
    assert replaced
    job = wait_until(lambda: (j := node.store.latest_job(series_uid(files[0]))) and j.status != "received" and j,
                     30, "the cut-short series judged")
    assert job.status == "skipped" and job.reason == "incomplete_series" and job.instance_count == 4
    assert "cut short" in job.error
    # the acknowledged instances are in the spool; the series sent whole is measured
    assert send_files(files, settings.ae_title, "127.0.0.1", settings.port, calling_ae="PACS").ok
    job = wait_until(lambda: (j := node.store.latest_job(series_uid(files[0]))) and j.version == 2
                     and j.status != "received" and j, 30, "the second version")
    assert job.status == "queued" and job.instance_count == 8 and queued == [job.id]


def test_a_caller_rejected_by_a_listener_process_is_audited_by_the_node(node_factory, tmp_path):
    from pynetdicom import AE
    from pynetdicom.sop_class import Verification

    settings, node, _ = node_factory(processes=2)
    for pid in pool(node).pids:
        with only(node, settings, pid):
            ae = AE(ae_title="INTRUDER")
            ae.add_requested_context(Verification)
            assert not ae.associate("127.0.0.1", settings.port, ae_title=settings.ae_title).is_established
    rows = wait_until(lambda: len(r := node.access.audit_entries(action="association_rejected")) == 2 and r, 20,
                      "two audit rows")
    assert {row.actor for row in rows} == {"INTRUDER"} and all(row.outcome == "denied" for row in rows)


def test_parallel_associations_are_spread_over_the_listener_processes(node_factory, tmp_path):
    """Four senders at once on two processes: two each (the node hands each connection to the
    child serving the fewest; children racing for a shared socket gave one of them all four)."""
    settings, node, queued = node_factory(processes=2)
    seen = recorded_associations(node)
    series = [write_series(tmp_path / f"src{k}", f"spread{k}", slices=20) for k in range(4)]
    idle(node)
    senders = [subprocess.Popen([require_tool("storescu"), "-aet", "STORESCU", "-aec", settings.ae_title, "127.0.0.1",
                                 str(settings.port), *map(str, files)], env=DCMTK_ENV, stderr=subprocess.PIPE)
               for files in series]
    assert all(p.wait(timeout=120) == 0 for p in senders)
    wait_until(lambda: len(seen) == 80, 20, "every instance reported")
    by_process: dict[int, set[int]] = {}
    for association in seen:
        by_process.setdefault(association // ASSOCIATIONS_PER_CHILD, set()).add(association)
    assert sorted(len(associations) for associations in by_process.values()) == [2, 2], by_process
    jobs = wait_until(lambda: len(queued) == 4 and queued, 30, "four jobs")
    assert len(set(jobs)) == 4


def test_one_port_one_node_even_with_listener_processes(node_factory):
    settings, node, _ = node_factory(processes=2)
    second = Node(settings.with_(data_dir=settings.data_dir.parent / "second"), enqueue=lambda job_id: None)
    with pytest.raises(Exception, match="cannot listen on"):
        second.start()
    second.stop()
    with socket.create_connection(("127.0.0.1", settings.port), timeout=5):
        pass  # the first still listens


def test_one_process_runs_the_listener_inside_the_node(node_factory, tmp_path):
    settings, node, queued = node_factory(processes=1)
    assert not isinstance(node.scp, ListenerPool)
    files = write_series(tmp_path / "src", "inside", slices=4)
    assert send_files(files, settings.ae_title, "127.0.0.1", settings.port, calling_ae="PACS").ok
    job = wait_until(lambda: node.store.latest_job(series_uid(files[0])), 30, "the job")
    assert job.instance_count == 4 and queued == [job.id]
