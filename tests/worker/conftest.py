"""Fixtures of the admin site (tests/helpers/admin_site.py): one seeded site per test module
and backend, and a browser (Debian's Chromium through Playwright)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import pytest
from playwright.sync_api import Browser, Page, sync_playwright

from tests.helpers.admin_site import Admin, chromium, close_site, open_site, sign_in
from tests.helpers.tools import postgres_schema, schema_url


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def admin(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Admin]:
    tmp = tmp_path_factory.mktemp(f"admin-{request.param}")
    with contextlib.ExitStack() as stack:
        if request.param == "sqlite":
            url = f"sqlite:///{tmp / 'var' / 'lumbarnode.db'}"
        else:
            url = schema_url(stack.enter_context(postgres_schema("lumbarnode_admin")))
        site, server, thread = open_site(request.param, tmp, url)
        try:
            yield site
        finally:
            close_site(site, server, thread)


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with sync_playwright() as playwright:
        chromium_browser = playwright.chromium.launch(executable_path=chromium(), headless=True)
        try:
            yield chromium_browser
        finally:
            chromium_browser.close()


@pytest.fixture
def anonymous_page(browser: Browser) -> Iterator[Page]:
    context = browser.new_context(viewport={"width": 1400, "height": 900})
    try:
        yield context.new_page()
    finally:
        context.close()


@pytest.fixture
def page(anonymous_page: Page, admin: Admin) -> Page:
    """A browser signed in as the viewer, through the login form."""
    sign_in(anonymous_page, admin.base, "vera")
    return anonymous_page
