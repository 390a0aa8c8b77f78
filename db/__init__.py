"""The job database: series received, jobs, export attempts and an event log.

SQLAlchemy 2 models (`db.models`), Alembic migrations (`db.migrate`, scripts in
`db/migrations/`) and the API the rest of lumbarnode uses (`db.store.JobStore`).
This package knows nothing of DICOM: UIDs are plain strings.
"""

from db.lifecycle import Status, TransitionRefused
from db.store import (
    EXPORT_STATUSES,
    FINISHED_STATUSES,
    STATUSES,
    UPDATABLE_FIELDS,
    EventView,
    ExportView,
    JobStore,
    JobView,
)
from db.urls import redact

__all__ = [
    "EXPORT_STATUSES",
    "FINISHED_STATUSES",
    "STATUSES",
    "UPDATABLE_FIELDS",
    "EventView",
    "ExportView",
    "JobStore",
    "JobView",
    "Status",
    "TransitionRefused",
    "redact",
]
