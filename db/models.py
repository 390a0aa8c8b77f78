"""Tables of the job database (SQLAlchemy 2 declarative).

One row in `series` per DICOM series received (UIDs are plain strings here: this
package knows nothing of DICOM). Each processing of a series is a `jobs` row with a
1-based `version`, so re-sending or re-running a series keeps the history. `exports`
records every attempt to send results to a destination; `events` is an audit trail.

`events.message` must never contain patient names or IDs, only UIDs and technical
text: the database is read by operators and shipped in bug reports. The callers are
responsible for this; nothing here can check it.

Any schema change needs an Alembic revision in `db/migrations/versions/` (see
`db/migrate.py`); a test checks that the migrated schema equals these models.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

# Explicit constraint names: Alembic can only alter or drop named constraints, and
# SQLite's batch migrations need them.
NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class UTCDateTime(sa.TypeDecorator[datetime]):
    """`DateTime(timezone=True)` that only accepts aware datetimes and always returns
    aware UTC ones. PostgreSQL stores timestamptz; SQLite has no time zones, so values
    are stored as naive UTC text and marked UTC again when read back."""

    impl = sa.DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None or value.utcoffset() is None:
            # A naive value would silently be taken as local time by one backend and
            # as UTC by the other; refuse it instead of guessing.
            raise ValueError(f"naive datetime {value!r}: pass a timezone-aware datetime")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value.astimezone(UTC)


class Base(DeclarativeBase):
    metadata = sa.MetaData(naming_convention=NAMING_CONVENTION)
    type_annotation_map = {datetime: UTCDateTime(), dict[str, Any]: sa.JSON(), list[str]: sa.JSON()}


class Series(Base):
    __tablename__ = "series"

    id: Mapped[int] = mapped_column(primary_key=True)
    study_instance_uid: Mapped[str] = mapped_column(sa.String(64), index=True)
    series_instance_uid: Mapped[str] = mapped_column(sa.String(64), unique=True)
    modality: Mapped[str] = mapped_column(sa.String(16))
    series_description: Mapped[str] = mapped_column(sa.String(64))
    body_part_examined: Mapped[str] = mapped_column(sa.String(64))
    accession_number: Mapped[str] = mapped_column(sa.String(64))
    calling_ae: Mapped[str] = mapped_column(sa.String(16))
    instance_count: Mapped[int]
    first_received_at: Mapped[datetime]
    last_received_at: Mapped[datetime]

    jobs: Mapped[list[Job]] = relationship(back_populates="series")


class Job(Base):
    __tablename__ = "jobs"
    __table_args__ = (sa.UniqueConstraint("series_id", "version"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    series_id: Mapped[int] = mapped_column(sa.ForeignKey("series.id"), index=True)
    version: Mapped[int]
    status: Mapped[str] = mapped_column(sa.String(16), index=True)
    reason: Mapped[str | None] = mapped_column(sa.String(64))  # short code, e.g. "not_sagittal"
    error: Mapped[str | None] = mapped_column(sa.Text)  # human-readable text
    attempts: Mapped[int] = mapped_column(default=0)
    instance_uids: Mapped[list[str]]
    instance_count: Mapped[int]
    destination: Mapped[str | None] = mapped_column(sa.String(128))  # e.g. "PACS@10.0.0.5:104"
    results_dir: Mapped[str | None] = mapped_column(sa.String(512))
    # Indexed: list_jobs sorts and filters by it.
    created_at: Mapped[datetime] = mapped_column(index=True)
    updated_at: Mapped[datetime]
    queued_at: Mapped[datetime | None]
    started_at: Mapped[datetime | None]
    finished_at: Mapped[datetime | None]
    # when the retention cleaner deleted the job's input and results (the row stays, the record)
    cleaned_at: Mapped[datetime | None]
    timings: Mapped[dict[str, Any]] = mapped_column(default=dict)  # stage name -> seconds
    lla_deg: Mapped[float | None] = mapped_column(sa.Float)
    # the range of the ensemble members' own angles; None with one network or none measured
    lla_spread_deg: Mapped[float | None] = mapped_column(sa.Float)
    lla_class: Mapped[str | None] = mapped_column(sa.String(16))
    cnn_class: Mapped[str | None] = mapped_column(sa.String(16))
    flags: Mapped[list[str]] = mapped_column(default=list)
    model_name: Mapped[str | None] = mapped_column(sa.String(64))
    model_version: Mapped[str | None] = mapped_column(sa.String(32))
    model_sha256: Mapped[str | None] = mapped_column(sa.String(64))
    seg_sop_instance_uid: Mapped[str | None] = mapped_column(sa.String(64))
    sr_sop_instance_uid: Mapped[str | None] = mapped_column(sa.String(64))
    key_sop_instance_uid: Mapped[str | None] = mapped_column(sa.String(64))

    series: Mapped[Series] = relationship(back_populates="jobs")


class Export(Base):
    __tablename__ = "exports"

    id: Mapped[int] = mapped_column(primary_key=True)
    job_id: Mapped[int] = mapped_column(sa.ForeignKey("jobs.id"), index=True)
    destination: Mapped[str] = mapped_column(sa.String(128))
    attempt: Mapped[int]
    status: Mapped[str] = mapped_column(sa.String(16))  # "sent" or "failed"
    dimse_status: Mapped[str | None] = mapped_column(sa.String(128))  # e.g. "0x0000 0x0000 0x0000"
    http_status: Mapped[int | None]  # STOW-RS: the HTTP status of the store response
    # STOW-RS: the instances the destination refused, [{"sop_instance_uid", "reason"}] (Failed SOP Sequence)
    failed_sops: Mapped[list[dict[str, str]] | None] = mapped_column(sa.JSON)
    error: Mapped[str | None] = mapped_column(sa.Text)
    started_at: Mapped[datetime]
    finished_at: Mapped[datetime]


class Event(Base):
    """Audit trail. UIDs only: never patient names or IDs (see the module docstring)."""

    __tablename__ = "events"

    id: Mapped[int] = mapped_column(primary_key=True)
    at: Mapped[datetime] = mapped_column(index=True)
    job_id: Mapped[int | None] = mapped_column(sa.ForeignKey("jobs.id"), index=True)
    series_id: Mapped[int | None] = mapped_column(sa.ForeignKey("series.id"))
    kind: Mapped[str] = mapped_column(sa.String(32))
    message: Mapped[str] = mapped_column(sa.Text)


class User(Base):
    """Someone who may use the admin page and its API (db/access.py). `password_hash` is an
    argon2 hash (worker/admin/passwords.py), None for users who sign in through OpenID Connect."""

    __tablename__ = "users"

    id: Mapped[int] = mapped_column(primary_key=True)
    username: Mapped[str] = mapped_column(sa.String(128), unique=True)
    role: Mapped[str] = mapped_column(sa.String(16))  # viewer, operator, admin (db.access.Role)
    source: Mapped[str] = mapped_column(sa.String(16))  # local or oidc
    password_hash: Mapped[str | None] = mapped_column(sa.String(255))
    disabled: Mapped[bool] = mapped_column(default=False)
    failed_logins: Mapped[int] = mapped_column(default=0)  # consecutive, reset by a good login
    locked_until: Mapped[datetime | None]
    created_at: Mapped[datetime]
    last_login_at: Mapped[datetime | None]


class Credential(Base):
    """A browser session or an API token. Only the SHA-256 of the random secret is stored:
    a copy of the database signs nobody in."""

    __tablename__ = "credentials"

    id: Mapped[int] = mapped_column(primary_key=True)
    user_id: Mapped[int] = mapped_column(sa.ForeignKey("users.id"), index=True)
    kind: Mapped[str] = mapped_column(sa.String(16))  # session or token
    secret_sha256: Mapped[str] = mapped_column(sa.String(64), unique=True)
    label: Mapped[str] = mapped_column(sa.String(64), default="")  # a token's name
    csrf_token: Mapped[str | None] = mapped_column(sa.String(64))  # sessions: what every form must echo
    created_at: Mapped[datetime]
    last_used_at: Mapped[datetime]
    expires_at: Mapped[datetime]
    revoked_at: Mapped[datetime | None]


class AuditEntry(Base):
    """Who did what: logins (good and failed), job views, retries, user changes, rejected
    associations. UIDs and user names only, never patient names or IDs."""

    __tablename__ = "audit"

    id: Mapped[int] = mapped_column(primary_key=True)
    at: Mapped[datetime] = mapped_column(index=True)
    actor: Mapped[str] = mapped_column(sa.String(128))  # a user name, a calling AE title, cli:<os user>
    actor_kind: Mapped[str] = mapped_column(sa.String(16))  # user, dicom, cli
    action: Mapped[str] = mapped_column(sa.String(32), index=True)
    outcome: Mapped[str] = mapped_column(sa.String(16))  # ok, denied, failed
    job_id: Mapped[int | None] = mapped_column(sa.ForeignKey("jobs.id"), index=True)
    target: Mapped[str] = mapped_column(sa.String(128), default="")  # e.g. the user acted on
    address: Mapped[str] = mapped_column(sa.String(64), default="")  # the client's IP address
    detail: Mapped[str] = mapped_column(sa.Text, default="")
