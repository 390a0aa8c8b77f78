"""Rendering the admin pages: one Jinja environment, and what every page is given (the
signed-in user, what their role allows, the CSRF token its forms echo)."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from fastapi import Request
from fastapi.responses import HTMLResponse
from jinja2 import Environment, FileSystemLoader, StrictUndefined

from db import STATUSES, JobStore
from db.access import ROLES, AccessStore
from dicom_io.codes import flag_meaning
from worker.admin.auth import CSRF_FIELD, Guard, Permission
from worker.admin.metrics import stage_name
from worker.settings import Settings

TEMPLATES = Path(__file__).resolve().parent / "templates"
SINCE_CHOICES = (("all", "any time"), ("1h", "last hour"), ("24h", "last 24 h"), ("7d", "last 7 days"),
                 ("30d", "last 30 days"))
_DURATION = re.compile(r"(\d{1,6})([smhd])")
_UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": 86400}
ERROR_TITLES = {400: "Bad request", 403: "Not allowed", 404: "Not found", 409: "Nothing to do", 429: "Too many attempts"}


def parse_since(text: str | None, now: datetime | None = None) -> datetime | None:
    """'' or 'all' -> None; '30m', '24h', '7d' -> that long before now; else an ISO date or
    date-time (UTC unless it says otherwise). ValueError for anything else."""
    text = (text or "").strip()
    if text in ("", "all"):
        return None
    match = _DURATION.fullmatch(text)
    if match:
        return (now or datetime.now(UTC)) - timedelta(seconds=int(match[1]) * _UNIT_S[match[2]])
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(f"since={text!r}: expected all, a duration (30m, 24h, 7d) or an ISO date") from None
    return when if when.tzinfo else when.replace(tzinfo=UTC)


def _utc(value: datetime | None) -> str:
    return "" if value is None else value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S")


def _short(value: str | None, width: int = 60) -> str:
    value = value or ""
    return value if len(value) <= width else value[: width - 1] + "\u2026"


def environment() -> Environment:
    env = Environment(loader=FileSystemLoader(TEMPLATES), autoescape=True, undefined=StrictUndefined,
                      trim_blocks=True, lstrip_blocks=True)
    env.filters.update(utc=_utc, short=_short, meaning=flag_meaning, stage=lambda k: stage_name(k).replace("_", " "))
    env.globals.update(STATUSES=STATUSES, SINCE_CHOICES=SINCE_CHOICES, ROLES=ROLES, CSRF_FIELD=CSRF_FIELD,
                       ERROR_TITLES=ERROR_TITLES)
    return env


class Web:
    """What the routes share: the stores, the guard and the templates."""

    def __init__(self, settings: Settings, store: JobStore, access: AccessStore, guard: Guard):
        self.settings = settings
        self.store = store
        self.access = access
        self.guard = guard
        self.env = environment()

    def page(self, request: Request, name: str, status_code: int = 200, **context: Any) -> HTMLResponse:
        principal = self.guard.principal(request)
        csrf = principal.credential.csrf_token if principal and principal.via == "session" else ""
        allowed = {p.value for p in Permission if principal and principal.may(p)}
        html = self.env.get_template(name).render(user=principal.user if principal else None, csrf=csrf,
                                                   can=allowed.__contains__, **context)
        return HTMLResponse(html, status_code=status_code)

    def error_page(self, request: Request, status_code: int, message: str) -> HTMLResponse:
        return self.page(request, "error.html", status_code, code=status_code, message=message)
