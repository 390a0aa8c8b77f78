"""Printing database and broker URLs without their secrets (e.g. `lumbarnode config`)."""

from __future__ import annotations

from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

MASK = "***"
_SECRET_PARAMS = frozenset({"password", "passwd", "pwd", "secret", "token"})


def redact(url: str) -> str:
    """`url` with its password replaced by ***, for any scheme:

    >>> redact("postgresql+psycopg://user:s3cret@host:5432/db")
    'postgresql+psycopg://user:***@host:5432/db'
    >>> redact("redis://:s3cret@localhost:6379/0")
    'redis://:***@localhost:6379/0'

    A password in the query string (``?password=...``) is hidden too. URLs without a
    password come back unchanged.
    """
    parts = urlsplit(url)
    netloc = parts.netloc
    # The password may itself contain '@' or ':' when not escaped: the user info ends at
    # the last '@' and the user name at the first ':'.
    userinfo, at, hostport = netloc.rpartition("@")
    if at and ":" in userinfo:
        user = userinfo.split(":", 1)[0]
        netloc = f"{user}:{MASK}@{hostport}"
    query = parts.query
    if query:
        pairs = parse_qsl(query, keep_blank_values=True)
        if any(k.lower() in _SECRET_PARAMS for k, _ in pairs):
            query = urlencode([(k, MASK if k.lower() in _SECRET_PARAMS else v) for k, v in pairs], safe="*")
    if netloc == parts.netloc and query == parts.query:
        return url
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))
