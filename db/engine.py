"""Engine construction shared by the store and the migrations.

SQLite is used by several processes at once (the DICOM listener and the Celery
workers), so every SQLite connection gets WAL (readers never block the writer), a
30 s busy timeout (writers queue instead of failing), enforced foreign keys and
synchronous=NORMAL (safe with WAL, much faster than FULL).

SQLite transactions: the sqlite3 driver's own BEGIN handling is switched off and
SQLAlchemy emits BEGIN itself. A transaction that will write can ask for
``BEGIN IMMEDIATE`` with the execution option ``sqlite_begin="IMMEDIATE"``: it takes
the write lock up front and waits (busy_timeout) for it. With a plain deferred BEGIN a
read-then-write transaction can fail at once with "database is locked" when another
process wrote in between, and busy_timeout does not help in that case.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine, make_url

SQLITE_PRAGMAS = (
    "PRAGMA busy_timeout=30000",  # first, so that switching to WAL can wait for a lock
    "PRAGMA journal_mode=WAL",
    "PRAGMA foreign_keys=ON",
    "PRAGMA synchronous=NORMAL",
)


def sqlite_file(url: str) -> Path | None:
    """The database file of a file-based SQLite URL, else None."""
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite" or not parsed.database or parsed.database == ":memory:":
        return None
    if parsed.database.startswith("file:"):  # URI form: leave it to the caller
        return None
    return Path(parsed.database)


def make_engine(url: str, engine_options: Mapping[str, Any] | None = None) -> Engine:
    """`sa.create_engine(url, **engine_options)` plus the SQLite settings above.

    `engine_options` is passed to `create_engine` as is, e.g.
    ``{"connect_args": {"options": "-csearch_path=myschema"}}`` to keep everything,
    Alembic's version table included, in one PostgreSQL schema.
    """
    options: dict[str, Any] = {"pool_pre_ping": True, **(engine_options or {})}
    engine = sa.create_engine(url, **options)
    if engine.dialect.name == "sqlite":
        path = sqlite_file(url)
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
        _configure_sqlite(engine)
    return engine


def _configure_sqlite(engine: Engine) -> None:
    @sa.event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None  # we emit BEGIN ourselves (see module doc)
        cursor = dbapi_connection.cursor()
        try:
            for pragma in SQLITE_PRAGMAS:
                cursor.execute(pragma)
        finally:
            cursor.close()

    @sa.event.listens_for(engine, "begin")
    def _on_begin(conn: sa.Connection) -> None:
        mode = conn.get_execution_options().get("sqlite_begin", "DEFERRED")
        if mode not in ("DEFERRED", "IMMEDIATE", "EXCLUSIVE"):
            raise ValueError(f"sqlite_begin must be DEFERRED, IMMEDIATE or EXCLUSIVE, not {mode!r}")
        conn.exec_driver_sql(f"BEGIN {mode}")
