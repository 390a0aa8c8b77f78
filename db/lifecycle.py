"""A job's life: its states, and who may move it from which state to which.

    received --> queued --> running --> exporting --> done
       ^           |  ^        |  |         |  ^
       +-----------+  +--------+  |         v  |
      (no message    (worker      |     export_failed
       went)          presumed    v
                      lost)     skipped | failed

    operator: failed, done -> queued (run the method again)
              done, export_failed -> exporting (send the results again)

`received` and `skipped` are the only states a job is created in. Every move is checked
here by `JobStore` inside the transaction that makes it, with the job row locked (a
compare-and-set): a move this table does not name is refused, so a late or duplicate
message can never take a finished job back, and `running` means the method is running,
never "waiting for export" (a PACS that is down for hours does not get the method re-run).
"""

from __future__ import annotations

from enum import StrEnum


class Status(StrEnum):
    RECEIVED = "received"  # a complete series has a job; no message is on the queue yet
    QUEUED = "queued"  # a message is on the inference queue
    RUNNING = "running"  # a worker runs the method
    EXPORTING = "exporting"  # the results are written; they are being sent to the destination
    DONE = "done"  # the results were delivered
    SKIPPED = "skipped"  # the series is not for the method (reason says why)
    FAILED = "failed"  # the method could not run, or found no spine (reason, error)
    EXPORT_FAILED = "export_failed"  # the results are written but could not be delivered


CREATED_IN = frozenset({Status.RECEIVED, Status.SKIPPED})
FINISHED = frozenset({Status.DONE, Status.SKIPPED, Status.FAILED, Status.EXPORT_FAILED})

# (from, to): who makes that move. Nothing else is allowed.
TRANSITIONS: dict[tuple[Status, Status], str] = {
    (Status.RECEIVED, Status.QUEUED): "assembly or sweep: the message is sent",
    (Status.QUEUED, Status.RECEIVED): "assembly: the broker was away, no message went",
    (Status.QUEUED, Status.RUNNING): "worker: claims the job",
    (Status.RUNNING, Status.RUNNING): "worker: resumes its own claim after the job database was away",
    (Status.RUNNING, Status.QUEUED): "sweep: its worker is presumed lost",
    (Status.RUNNING, Status.EXPORTING): "worker: the results are written",
    (Status.RUNNING, Status.SKIPPED): "worker: the pixels show the series is not for the method",
    (Status.RUNNING, Status.FAILED): "worker: the method could not run or found no spine",
    (Status.EXPORTING, Status.DONE): "exporter: delivered",
    (Status.EXPORTING, Status.EXPORT_FAILED): "exporter: gave up after its retries",
    (Status.EXPORT_FAILED, Status.EXPORTING): "operator: resend",
    (Status.DONE, Status.EXPORTING): "operator: resend",
    (Status.FAILED, Status.QUEUED): "operator: retry (run the method again)",
    (Status.DONE, Status.QUEUED): "operator: retry (run the method again)",
}


class TransitionRefused(ValueError):
    """A move the lifecycle does not allow (the job is left as it was)."""


def status(value: str) -> Status:
    try:
        return Status(value)
    except ValueError:
        raise ValueError(f"unknown job status {value!r}; expected one of {', '.join(Status)}") from None


def check_move(current: str, new: str) -> None:
    if (status(current), status(new)) not in TRANSITIONS:
        raise TransitionRefused(f"a job cannot move from {current} to {new}")


def may_move(current: str, new: str) -> bool:
    return (status(current), status(new)) in TRANSITIONS
