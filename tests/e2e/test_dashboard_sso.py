"""Single sign-on in a real browser: Chromium, a real router process with [router.oidc] in its
settings file, and a real OpenID Connect provider (tests/oidc.py) on 127.0.0.1. The user clicks
"Sign in with ...", picks their account on the provider's page, lands on the dashboard with
the role their group maps to, and logs out; with the provider down, the login says so.
"""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Page, expect

from tests.oidc import ADMINS, SECRET, SECRET_ENV, VIEWERS, IdentityProvider
from tests.support import Process, start_router

USERS = {
    "ada": {"preferred_username": "ada", "groups": [ADMINS]},
    "val": {"preferred_username": "val", "groups": [VIEWERS]},
    "pat": {"preferred_username": "pat", "groups": ["staff"]},
}


def _toml(table: dict[str, Any]) -> str:
    return "[router.oidc]\n" + "".join(f"{k} = {json.dumps(v)}\n" for k, v in table.items())


def _router(home: Path, logs: Path, oidc: dict[str, Any]) -> Process:
    (home / "config.toml").write_text(_toml(oidc))
    return start_router(home, logs, env={SECRET_ENV: SECRET, "LLMLB_AUTO_DISTRIBUTE": "none",
                                         "LLMLB_ADMIN_PASSWORD": "local-admin-1"})  # fmt: skip


@pytest.fixture(scope="module")
def idp() -> Iterator[IdentityProvider]:
    with IdentityProvider(USERS) as provider:
        yield provider


@pytest.fixture(scope="module")
def router(idp: IdentityProvider, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Process]:
    process = _router(tmp_path_factory.mktemp("sso-router"), tmp_path_factory.mktemp("sso-logs"),
                      idp.settings())  # fmt: skip
    yield process
    process.stop()


def sign_in_as(page: Page, router: Process, sub: str) -> None:
    page.goto(f"{router.url}/dashboard/")
    page.get_by_role("link", name="Sign in with Test IdP").click()
    expect(page.get_by_role("heading", name="Authorize Client")).to_be_visible()  # the provider
    page.get_by_role("button", name=sub, exact=True).click()


def test_a_user_signs_in_through_the_provider_with_their_role_and_logs_out(
    page: Page, router: Process
) -> None:
    sign_in_as(page, router, "ada")
    expect(page.locator("#whoami")).to_have_text("ada (admin)")
    assert page.url == f"{router.url}/dashboard/"
    page.click("a[data-page=keys]")
    expect(page.get_by_role("button", name="Create", exact=True)).to_be_visible()  # an admin's
    page.click("a[data-page=users]")
    expect(page.locator("tr[data-user=ada]")).to_contain_text("ada (single sign-on)")
    expect(page.get_by_text("My password")).to_have_count(0)  # the provider's, not ours
    page.get_by_role("button", name="Log out").click()
    expect(page.get_by_role("link", name="Sign in with Test IdP")).to_be_visible()
    expect(page.locator("#whoami")).to_have_count(0)
    page.reload()  # the session is gone, not only the page
    expect(page.get_by_role("link", name="Sign in with Test IdP")).to_be_visible()


def test_a_viewer_group_gets_the_viewers_dashboard(page: Page, router: Process) -> None:
    sign_in_as(page, router, "val")
    expect(page.locator("#whoami")).to_have_text("val (viewer)")


def test_a_user_without_a_mapped_group_is_told_why(page: Page, router: Process) -> None:
    sign_in_as(page, router, "pat")
    expect(page.get_by_role("alert")).to_contain_text("has no role here")
    assert "sso_error" not in page.url  # (taken out of the address once shown)
    expect(page.locator("#whoami")).to_have_count(0)


def test_local_accounts_still_log_in_beside_single_sign_on(page: Page, router: Process) -> None:
    page.goto(f"{router.url}/dashboard/")
    page.fill("input[name=username]", "admin")
    page.fill("input[name=password]", "local-admin-1")
    page.click("form button[type=submit]")
    expect(page.locator("#whoami")).to_have_text("admin (admin)")


def test_with_the_provider_down_the_login_says_so(
    page: Page, tmp_path_factory: pytest.TempPathFactory
) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed = s.getsockname()[1]
    oidc = {"issuer": f"http://127.0.0.1:{closed}", "client_id": "llmlb", "label": "Test IdP",
            "admin_values": [ADMINS]}  # fmt: skip
    router = _router(tmp_path_factory.mktemp("sso-down"), tmp_path_factory.mktemp("logs"), oidc)
    try:
        page.goto(f"{router.url}/dashboard/")
        page.get_by_role("link", name="Sign in with Test IdP").click()
        expect(page.get_by_role("alert")).to_contain_text("could not be reached")
        expect(page.locator("input[name=username]")).to_be_visible()  # local login remains
    finally:
        router.stop()
