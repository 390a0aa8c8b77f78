"""`make test` promises running PostgreSQL and Redis (scripts/start-services.sh starts them).
The node's tests use both for real; this checks the promise itself, on real connections."""

from __future__ import annotations

import os

import redis
import sqlalchemy as sa

from tests.helpers.tools import POSTGRES_URL, REDIS_URL


def test_postgresql_is_running_and_the_test_database_accepts_writes():
    engine = sa.create_engine(POSTGRES_URL)
    with engine.begin() as conn:
        conn.execute(sa.text("create temporary table probe (x int)"))
        conn.execute(sa.text("insert into probe values (41), (1)"))
        assert conn.execute(sa.text("select sum(x) from probe")).scalar_one() == 42
    engine.dispose()


def test_redis_is_running():
    client = redis.Redis.from_url(REDIS_URL)
    key = f"lumbarnode-test-{os.getpid()}"
    client.set(key, "ok", ex=10)
    assert client.get(key) == b"ok"
    client.delete(key)
