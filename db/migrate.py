"""Schema migrations (Alembic), run programmatically: no alembic.ini is needed.

The script directory is `db/migrations/` inside this package, so this works from any
working directory, installed in editable mode or not.

    from db.migrate import upgrade, current_revision
    upgrade("sqlite:////var/lib/lumbarnode/lumbarnode.db")   # a no-op when already at head

From the shell:

    python -m db.migrate upgrade  --url URL
    python -m db.migrate current  --url URL
    python -m db.migrate revision --url URL -m "add jobs.priority" --autogenerate

A new revision: change `db/models.py`, then run `revision --autogenerate` against a
database that is at head (e.g. a scratch SQLite file after `upgrade`). It writes
`db/migrations/versions/NNNN_<slug>.py` with the next number; read and fix what
autogenerate wrote (it cannot see renames, and check both backends), then run
`python -m pytest tests/test_db.py`, which checks that the migrated schema equals the
models on SQLite and on PostgreSQL.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory

from db.engine import make_engine, sqlite_file
from db.urls import redact

SCRIPT_LOCATION = Path(__file__).resolve().parent / "migrations"

# Serialises concurrent upgrades on PostgreSQL (listener and workers may all start at
# once); SQLite gets the same from BEGIN IMMEDIATE. Any constant 64-bit key will do.
_PG_LOCK_KEY = 0x6C756D62_6172_6E6F & 0x7FFFFFFFFFFFFFFF


def alembic_config(url: str) -> Config:
    config = Config()
    config.set_main_option("script_location", str(SCRIPT_LOCATION))
    config.set_main_option("file_template", "%%(rev)s_%%(slug)s")
    # ConfigParser interpolation: a '%' (URL-encoded password) must be doubled.
    config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return config


def _run(url: str, engine_options: Mapping[str, Any] | None, fn: Any, *args: Any, **kwargs: Any) -> None:
    """Run an Alembic command on one locked transaction of our own engine."""
    engine = make_engine(url, engine_options)
    try:
        with engine.connect() as conn:
            conn.execution_options(sqlite_begin="IMMEDIATE")
            with conn.begin():
                if conn.dialect.name == "postgresql":
                    conn.execute(sa.text("SELECT pg_advisory_xact_lock(:key)"), {"key": _PG_LOCK_KEY})
                config = alembic_config(url)
                config.attributes["connection"] = conn
                fn(config, *args, **kwargs)
    finally:
        engine.dispose()


def upgrade(url: str, *, engine_options: Mapping[str, Any] | None = None) -> None:
    """Bring the database at `url` to the newest revision (a no-op when it is there)."""
    _run(url, engine_options, command.upgrade, "head")


def current_revision(url: str, *, engine_options: Mapping[str, Any] | None = None) -> str | None:
    """The revision the database is at, None for a database never migrated."""
    engine = make_engine(url, engine_options)
    try:
        with engine.connect() as conn:
            return MigrationContext.configure(conn).get_current_revision()
    finally:
        engine.dispose()


def head_revision() -> str | None:
    return ScriptDirectory.from_config(alembic_config("sqlite://")).get_current_head()


class DatabaseNotReady(Exception):
    """The job database is missing, unreachable or not lumbarnode's; the message says which."""


def ready(url: str, *, create: bool = False, engine_options: Mapping[str, Any] | None = None) -> None:
    """Make sure `url` is lumbarnode's job database at the newest revision, or say why not.

    An older revision is migrated (the first use after an update). A database that is missing
    or empty is created only with `create` (the node); operator commands (`jobs`, `admin`) do
    not leave an empty database behind in a wrong place. A database with other tables and no
    lumbarnode revision, or a revision that is not ours, is left alone.
    """
    where = redact(url)
    path = sqlite_file(url)
    if path is not None and not path.exists() and not create:
        raise DatabaseNotReady(f"no job database at {path}: the node has not run with these settings "
                               "(set LUMBARNODE_DATA_DIR or LUMBARNODE_DATABASE_URL to the node's)")
    engine = make_engine(url, engine_options)
    try:
        with engine.connect() as conn:
            revision = MigrationContext.configure(conn).get_current_revision()
            tables = sorted(sa.inspect(conn).get_table_names())
    except sa.exc.SQLAlchemyError as exc:
        reason = str(getattr(exc, "orig", exc)).strip().splitlines()[0][:200]
        raise DatabaseNotReady(f"cannot open the job database {where}: {reason}") from None
    finally:
        engine.dispose()
    if revision is None and tables:
        raise DatabaseNotReady(f"{where} is not lumbarnode's job database: it has tables "
                               f"({', '.join(tables[:5])}{', ...' if len(tables) > 5 else ''}) but no lumbarnode "
                               "revision; point LUMBARNODE_DATABASE_URL at the node's database or an empty one")
    known = {script.revision for script in ScriptDirectory.from_config(alembic_config(url)).walk_revisions()}
    if revision is not None and revision not in known:
        raise DatabaseNotReady(f"{where} is at revision {revision!r}, which is not one of this lumbarnode's "
                               "migrations (a newer lumbarnode's database, or another application's)")
    if revision is None and not create:
        raise DatabaseNotReady(f"{where} is empty: start the node, or run `lumbarnode db upgrade`")
    if revision != head_revision():
        upgrade(url, engine_options=engine_options)


def revision(url: str, message: str, *, autogenerate: bool = False) -> None:
    """Write a new revision file numbered after the current head (0001, 0002, ...)."""
    head = head_revision()
    rev_id = f"{int(head) + 1:04d}" if head and head.isdigit() else None
    if autogenerate:
        _run(url, None, command.revision, message=message, autogenerate=True, rev_id=rev_id)
    else:
        command.revision(alembic_config(url), message=message, rev_id=rev_id)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m db.migrate", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    for name in ("upgrade", "current", "revision"):
        p = sub.add_parser(name)
        p.add_argument("--url", required=True, help="database URL, e.g. sqlite:////abs/path/lumbarnode.db")
        if name == "revision":
            p.add_argument("-m", "--message", required=True)
            p.add_argument("--autogenerate", action="store_true", help="diff the models against the database")
    args = parser.parse_args(argv)
    if args.cmd == "upgrade":
        upgrade(args.url)
    elif args.cmd == "current":
        print(current_revision(args.url) or "(none)")
    else:
        revision(args.url, args.message, autogenerate=args.autogenerate)
    return 0


if __name__ == "__main__":
    sys.exit(main())
