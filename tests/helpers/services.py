"""Where the tests (and bench/) find this machine's PostgreSQL and Redis."""

from __future__ import annotations

import os
from pathlib import Path

URL_FILE = Path(__file__).resolve().parents[2] / "build" / "test-postgres.url"


def postgres_url() -> str:
    """LUMBARNODE_TEST_POSTGRES_URL if set; else the URL that scripts/start-services.sh wrote
    (a test-only role with a generated password, so that a stock Debian PostgreSQL, which asks
    for passwords over TCP, lets the tests in); else the trusting local server of old."""
    if url := os.environ.get("LUMBARNODE_TEST_POSTGRES_URL"):
        return url
    url_file = Path(os.environ.get("LUMBARNODE_TEST_POSTGRES_URL_FILE", URL_FILE))
    if url_file.is_file() and (url := url_file.read_text().strip()):
        return url
    return "postgresql+psycopg://postgres@127.0.0.1:5432/test"


def redis_url(database: int = 0) -> str:
    return os.environ.get("LUMBARNODE_TEST_REDIS_URL", f"redis://127.0.0.1:6379/{database}")
