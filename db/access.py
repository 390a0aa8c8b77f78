"""`AccessStore`: users, their sessions and API tokens, and the audit trail.

Beside `JobStore` in the same database (it shares the store's engine). It stores what the
admin application decides, and decides nothing itself: passwords arrive hashed, secrets as
their SHA-256, and which role may do what is worker/admin/auth.py's table. Like the job
store, every method is one short transaction returning frozen snapshots.

The audit trail holds user names, AE titles, addresses, job ids and UIDs; never patient
names or IDs (callers are responsible, as for events).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import sessionmaker

from db.models import AuditEntry, Credential, Job, User
from db.store import JobStore, _View, utcnow


class Role(StrEnum):
    """Least to most: a viewer sees jobs, an operator also retries and resends them, an admin
    also manages users and reads the audit trail. Apart: a sender (a PACS or modality with an
    API token) may only send studies by STOW-RS."""

    VIEWER = "viewer"
    OPERATOR = "operator"
    ADMIN = "admin"
    SENDER = "sender"


ROLES = tuple(Role)
USER_SOURCES = ("local", "oidc")
CREDENTIAL_KINDS = ("session", "token")
ACTOR_KINDS = ("user", "dicom", "cli")
OUTCOMES = ("ok", "denied", "failed")


class UserExists(ValueError):
    """A user of that name is already there."""


@dataclass(frozen=True)
class UserView(_View):
    id: int
    username: str
    role: str
    source: str
    disabled: bool
    failed_logins: int
    locked_until: datetime | None
    created_at: datetime
    last_login_at: datetime | None
    has_password: bool

    def locked(self, now: datetime) -> bool:
        return self.locked_until is not None and self.locked_until > now


@dataclass(frozen=True)
class CredentialView(_View):
    id: int
    user_id: int
    kind: str
    label: str
    csrf_token: str | None
    created_at: datetime
    last_used_at: datetime
    expires_at: datetime
    revoked_at: datetime | None


@dataclass(frozen=True)
class AuditView(_View):
    id: int
    at: datetime
    actor: str
    actor_kind: str
    action: str
    outcome: str
    job_id: int | None
    target: str
    address: str
    detail: str


def _user(row: User) -> UserView:
    return UserView(id=row.id, username=row.username, role=row.role, source=row.source, disabled=row.disabled,
                    failed_logins=row.failed_logins, locked_until=row.locked_until, created_at=row.created_at,
                    last_login_at=row.last_login_at, has_password=row.password_hash is not None)


def _credential(row: Credential) -> CredentialView:
    return CredentialView(id=row.id, user_id=row.user_id, kind=row.kind, label=row.label, csrf_token=row.csrf_token,
                          created_at=row.created_at, last_used_at=row.last_used_at, expires_at=row.expires_at,
                          revoked_at=row.revoked_at)


def _audit(row: AuditEntry) -> AuditView:
    return AuditView(id=row.id, at=row.at, actor=row.actor, actor_kind=row.actor_kind, action=row.action,
                     outcome=row.outcome, job_id=row.job_id, target=row.target, address=row.address,
                     detail=row.detail)


def _one_of(name: str, value: str, allowed: tuple[str, ...]) -> str:
    if value not in allowed:
        raise ValueError(f"{name} must be one of {', '.join(allowed)}, not {value!r}")
    return value


class AccessStore:
    def __init__(self, store: JobStore):
        self._session = sessionmaker(store.engine, expire_on_commit=False)
        self._write_session = sessionmaker(store.engine.execution_options(sqlite_begin="IMMEDIATE"),
                                           expire_on_commit=False)

    # -- users ------------------------------------------------------------------------

    def add_user(self, username: str, role: str, *, password_hash: str | None = None,
                 source: str = "local") -> UserView:
        username = username.strip()
        if not username or len(username) > 128:
            raise ValueError("a user name must be 1 to 128 characters")
        _one_of("role", role, ROLES)
        _one_of("source", source, USER_SOURCES)
        try:
            with self._write_session.begin() as session:
                row = User(username=username, role=role, source=source, password_hash=password_hash, disabled=False,
                           failed_logins=0, created_at=utcnow())
                session.add(row)
                session.flush()
                return _user(row)
        except IntegrityError:
            raise UserExists(f"there is already a user {username!r}") from None

    def user(self, username: str) -> UserView | None:
        with self._session.begin() as session:
            row = session.scalar(sa.select(User).where(User.username == username))
            return None if row is None else _user(row)

    def user_by_id(self, user_id: int) -> UserView | None:
        with self._session.begin() as session:
            row = session.get(User, user_id)
            return None if row is None else _user(row)

    def users(self) -> list[UserView]:
        with self._session.begin() as session:
            return [_user(row) for row in session.scalars(sa.select(User).order_by(User.username))]

    def count_users(self) -> int:
        with self._session.begin() as session:
            return int(session.scalar(sa.select(sa.func.count()).select_from(User)) or 0)

    def password_hash(self, username: str) -> str | None:
        """Kept out of UserView so that no view or JSON ever carries it."""
        with self._session.begin() as session:
            return session.scalar(sa.select(User.password_hash).where(User.username == username))

    def update_user(self, username: str, **fields: Any) -> UserView:
        """Set `role`, `password_hash` or `disabled`. KeyError for an unknown user."""
        unknown = set(fields) - {"role", "password_hash", "disabled"}
        if unknown:
            raise ValueError(f"cannot set {', '.join(sorted(unknown))} on a user")
        if "role" in fields:
            _one_of("role", fields["role"], ROLES)
        with self._write_session.begin() as session:
            row = session.scalar(sa.select(User).where(User.username == username).with_for_update())
            if row is None:
                raise KeyError(f"no user {username!r}")
            for name, value in fields.items():
                setattr(row, name, value)
            if "password_hash" in fields:
                row.failed_logins, row.locked_until = 0, None
            session.flush()
            return _user(row)

    def login_failed(self, user_id: int, *, max_failures: int, lockout: timedelta) -> UserView:
        """Count a wrong password; the `max_failures`-th in a row locks the account for `lockout`."""
        with self._write_session.begin() as session:
            row = session.get(User, user_id, with_for_update=True)
            if row is None:
                raise KeyError(f"no user with id {user_id}")
            row.failed_logins += 1
            if row.failed_logins >= max_failures:
                row.locked_until, row.failed_logins = utcnow() + lockout, 0
            session.flush()
            return _user(row)

    def login_succeeded(self, user_id: int) -> UserView:
        with self._write_session.begin() as session:
            row = session.get(User, user_id, with_for_update=True)
            if row is None:
                raise KeyError(f"no user with id {user_id}")
            row.failed_logins, row.locked_until, row.last_login_at = 0, None, utcnow()
            session.flush()
            return _user(row)

    def oidc_user(self, username: str, role: str) -> UserView:
        """The user an identity provider vouched for, created on first sign-in; the role is the
        provider's, every time. A local user of that name is never taken over (ValueError)."""
        _one_of("role", role, ROLES)
        for _ in range(2):  # a concurrent first sign-in of the same user: read what it wrote
            existing = self.user(username)
            if existing is not None:
                if existing.source != "oidc":
                    raise ValueError(f"{username!r} is a local user; the identity provider cannot sign in as it")
                return existing if existing.role == role else self.update_user(username, role=role)
            try:
                return self.add_user(username, role, source="oidc")
            except UserExists:
                continue
        raise RuntimeError(f"could not create the user {username!r}")

    # -- sessions and tokens ----------------------------------------------------------

    def add_credential(self, user_id: int, kind: str, secret_sha256: str, expires_at: datetime, *,
                       label: str = "", csrf_token: str | None = None) -> CredentialView:
        _one_of("kind", kind, CREDENTIAL_KINDS)
        now = utcnow()
        with self._write_session.begin() as session:
            if session.get(User, user_id) is None:
                raise KeyError(f"no user with id {user_id}")
            # Sessions long expired are of no use to anyone: sweep them while here.
            session.execute(sa.delete(Credential).where(Credential.kind == "session",
                                                        Credential.expires_at < now - timedelta(days=1)))
            row = Credential(user_id=user_id, kind=kind, secret_sha256=secret_sha256, label=label[:64],
                             csrf_token=csrf_token, created_at=now, last_used_at=now, expires_at=expires_at)
            session.add(row)
            session.flush()
            return _credential(row)

    def credential(self, secret_sha256: str, now: datetime | None = None) -> tuple[CredentialView, UserView] | None:
        """The live credential with that secret and its user: not revoked, not expired, the user
        not disabled. None otherwise."""
        now = now or utcnow()
        stmt = (sa.select(Credential, User).join(User, Credential.user_id == User.id)
                .where(Credential.secret_sha256 == secret_sha256, Credential.revoked_at.is_(None),
                       Credential.expires_at > now, User.disabled.is_(False)))
        with self._session.begin() as session:
            row = session.execute(stmt).one_or_none()
            return None if row is None else (_credential(row[0]), _user(row[1]))

    def touch_credential(self, credential_id: int, *, expires_at: datetime | None = None) -> None:
        """Record a use; a session's idle expiry moves on with it."""
        values: dict[str, Any] = {"last_used_at": utcnow()}
        if expires_at is not None:
            values["expires_at"] = expires_at
        with self._write_session.begin() as session:
            session.execute(sa.update(Credential).where(Credential.id == credential_id).values(values))

    def revoke_credential(self, credential_id: int) -> None:
        with self._write_session.begin() as session:
            session.execute(sa.update(Credential).where(Credential.id == credential_id,
                                                        Credential.revoked_at.is_(None)).values(revoked_at=utcnow()))

    def revoke_credentials(self, user_id: int, kind: str | None = None) -> int:
        """Sign a user out everywhere (and/or void their tokens). Returns how many were live."""
        stmt = sa.update(Credential).where(Credential.user_id == user_id, Credential.revoked_at.is_(None),
                                           Credential.expires_at > utcnow())
        if kind is not None:
            stmt = stmt.where(Credential.kind == _one_of("kind", kind, CREDENTIAL_KINDS))
        with self._write_session.begin() as session:
            return int(session.execute(stmt.values(revoked_at=utcnow())).rowcount or 0)

    def credentials(self, user_id: int, kind: str | None = None) -> list[CredentialView]:
        """The user's live credentials, newest first."""
        stmt = sa.select(Credential).where(Credential.user_id == user_id, Credential.revoked_at.is_(None),
                                           Credential.expires_at > utcnow())
        if kind is not None:
            stmt = stmt.where(Credential.kind == kind)
        with self._session.begin() as session:
            return [_credential(row) for row in session.scalars(stmt.order_by(Credential.id.desc()))]

    # -- the audit trail --------------------------------------------------------------

    def audit(self, action: str, *, actor: str, actor_kind: str = "user", outcome: str = "ok",
              job_id: int | None = None, target: str = "", address: str = "", detail: str = "") -> None:
        _one_of("actor_kind", actor_kind, ACTOR_KINDS)
        _one_of("outcome", outcome, OUTCOMES)
        with self._write_session.begin() as session:
            if job_id is not None and session.get(Job, job_id) is None:
                job_id = None  # a denied look at a job that does not exist is still recorded
            session.add(AuditEntry(at=utcnow(), actor=actor[:128], actor_kind=actor_kind, action=action[:32],
                                   outcome=outcome, job_id=job_id, target=target[:128], address=address[:64],
                                   detail=detail[:1000]))

    def audit_entries(self, *, limit: int = 200, since: datetime | None = None, actor: str | None = None,
                      action: str | None = None, job_id: int | None = None,
                      outcome: str | None = None) -> list[AuditView]:
        """Newest first."""
        stmt = sa.select(AuditEntry)
        if since is not None:
            stmt = stmt.where(AuditEntry.at >= since)
        if actor:
            stmt = stmt.where(AuditEntry.actor == actor)
        if action:
            stmt = stmt.where(AuditEntry.action == action)
        if job_id is not None:
            stmt = stmt.where(AuditEntry.job_id == job_id)
        if outcome:
            stmt = stmt.where(AuditEntry.outcome == outcome)
        with self._session.begin() as session:
            rows = session.scalars(stmt.order_by(AuditEntry.at.desc(), AuditEntry.id.desc()).limit(limit))
            return [_audit(row) for row in rows]
