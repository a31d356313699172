"""Single sign-on against a real OpenID Connect provider (tests/oidc.py: oidc-provider-mock on
127.0.0.1), the router in process, on SQLite and PostgreSQL. The browser's part (following
redirects, posting the provider's form) is done by hand here; tests/e2e/test_dashboard_sso.py
does it in Chromium.
"""

from __future__ import annotations

import base64
import hashlib
import socket
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
from argon2 import PasswordHasher
from sqlalchemy import update

from llmlb.common.settings import OidcSettings, RouterSettings
from llmlb.router.service import RouterService
from llmlb.router.storage.db import users
from llmlb.router.telemetry.audit import AuditFilter
from tests.inproc.conftest import REMOTE, InProcessRouter
from tests.oidc import ADMINS, CLIENT_ID, SECRET, SECRET_ENV, VIEWERS, IdentityProvider

USERS = {
    "alice": {"preferred_username": "alice", "groups": [ADMINS, "staff"]},
    "victor": {"preferred_username": "victor", "groups": [VIEWERS]},
    "nobody": {"preferred_username": "nobody", "groups": ["staff"]},
    "admin-twin": {"preferred_username": "admin", "groups": [VIEWERS]},
}


@pytest.fixture(scope="module")
def idp() -> Iterator[IdentityProvider]:
    with IdentityProvider(USERS) as provider:
        yield provider


@pytest.fixture(autouse=True)
def client_secret(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(SECRET_ENV, SECRET)


async def _router(tmp_path: Path, database_url: str, **oidc: Any) -> RouterService:
    settings = RouterSettings(
        home=tmp_path, allow_cpu_nodes=True, auto_distribute="none", database_url=database_url,
        admin_password="local-admin-1", oidc=OidcSettings(**oidc),
    )  # fmt: skip
    service = await RouterService.open(settings)
    await service.start()
    return service


@pytest.fixture
async def router(
    tmp_path: Path, database_url: str, idp: IdentityProvider
) -> AsyncIterator[InProcessRouter]:
    service = await _router(tmp_path, database_url, **idp.settings())
    try:
        yield InProcessRouter(service, tmp_path)
    finally:
        await service.close()


async def sign_in(
    client: httpx.AsyncClient, sub: str | None, *, deny: bool = False
) -> httpx.Response:
    """What a browser does: to the provider, its form, back to the router's callback."""
    start = await client.get("/api/auth/oidc/login")
    assert start.status_code == 303, start.text
    to_provider = start.headers["location"]
    if not to_provider.startswith("http://127.0.0.1"):
        return start  # (the router sent it back to the dashboard: a failure)
    form = {"action": "deny"} if deny else {"sub": sub}
    async with httpx.AsyncClient() as browser:
        answer = await browser.post(to_provider, data=form)
    assert answer.status_code == 302, answer.text
    back = urlsplit(answer.headers["location"])
    return await client.get(f"{back.path}?{back.query}")


def sso_error(response: httpx.Response) -> str | None:
    location = urlsplit(response.headers["location"])
    assert location.path == "/dashboard/"
    return parse_qs(location.query).get("sso_error", [None])[0]


async def test_the_login_offers_single_sign_on_by_its_label(router: InProcessRouter) -> None:
    async with router.client(REMOTE) as client:
        methods = (await client.get("/api/auth/methods")).json()
    assert methods == {"password": True,
                       "sso": {"label": "Test IdP", "url": "/api/auth/oidc/login"}}  # fmt: skip


async def test_an_admin_group_signs_in_as_admin_with_pkce(
    router: InProcessRouter, idp: IdentityProvider
) -> None:
    async with router.client(REMOTE) as client:
        done = await sign_in(client, "alice")
        assert done.status_code == 303 and sso_error(done) is None
        me = (await client.get("/api/auth/me")).json()
        assert me["role"] == "admin" and me["user"]["username"] == "alice" and me["user"]["sso"]
        # The session works for the admin API, with its CSRF token for writes.
        made = await client.post("/api/keys", json={"name": "from-sso", "scopes": ["api"]},
                                 headers={"x-csrf-token": me["csrf_token"]})  # fmt: skip
        assert made.status_code == 201, made.text
    # What the router sent the provider: S256 PKCE, a nonce, the state, its client id.
    asked = idp.requests_to("/oauth2/authorize")[-1]
    traded = idp.requests_to("/oauth2/token")[-1]
    assert asked["code_challenge_method"] == ["S256"] and asked["client_id"] == [CLIENT_ID]
    assert asked["nonce"] and asked["state"] and "openid" in asked["scope"][0].split()
    verifier = traded["code_verifier"][0]
    challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest())
    assert challenge.rstrip(b"=").decode() == asked["code_challenge"][0]
    basic = base64.b64encode(f"{CLIENT_ID}:{SECRET}".encode()).decode()
    assert traded["authorization"] == [f"Basic {basic}"]  # the secret, from its variable
    assert (
        traded["redirect_uri"] == asked["redirect_uri"] == ["http://router/api/auth/oidc/callback"]
    )
    # The login is in the audit trail, under the user's name.
    _, rows = await router.service.audit.query(AuditFilter())
    assert any(r["user"] == "alice" and "oidc/callback" in r["action"] for r in rows)


async def test_a_viewer_group_gets_viewer_and_no_group_is_refused(router: InProcessRouter) -> None:
    async with router.client(REMOTE) as client:
        await sign_in(client, "victor")
        me = (await client.get("/api/auth/me")).json()
        assert me["role"] == "viewer"
        refused = await client.post("/api/keys", json={"name": "x", "scopes": ["api"]},
                                    headers={"x-csrf-token": me["csrf_token"]})  # fmt: skip
        assert refused.status_code == 403
    async with router.client(REMOTE) as client:
        done = await sign_in(client, "nobody")
        assert sso_error(done) == "no_role"
        assert "llmlb_session" not in done.cookies
        assert (await client.get("/api/auth/me")).status_code == 401


async def test_the_role_follows_the_provider_at_each_login(
    tmp_path: Path, database_url: str, idp: IdentityProvider
) -> None:
    service = await _router(tmp_path, database_url, **idp.settings())
    router = InProcessRouter(service, tmp_path)
    try:
        async with router.client(REMOTE) as client:
            await sign_in(client, "victor")
            first = (await client.get("/api/auth/me")).json()["user"]
        # The provider moves victor to the admins (its API for that), and he signs in again.
        async with httpx.AsyncClient() as http:
            claims = {**USERS["victor"], "groups": [ADMINS]}
            assert (await http.put(f"{idp.issuer}/users/victor", json=claims)).is_success
        try:
            async with router.client(REMOTE) as client:
                await sign_in(client, "victor")
                again = (await client.get("/api/auth/me")).json()
        finally:
            async with httpx.AsyncClient() as http:
                await http.put(f"{idp.issuer}/users/victor", json=USERS["victor"])
        assert again["role"] == "admin" and again["user"]["id"] == first["id"]
        names = [u.username for u in await service.accounts.list()]
        assert names.count("victor") == 1
    finally:
        await service.close()


async def test_a_provider_user_cannot_take_a_local_accounts_name(router: InProcessRouter) -> None:
    """``admin`` is the local admin (admin_password); the provider's user who calls itself
    admin gets an account of its own, as a viewer, and the local one is untouched."""
    local = await router.service.accounts.get("admin")
    async with router.client(REMOTE) as client:
        await sign_in(client, "admin-twin")
        me = (await client.get("/api/auth/me")).json()
    assert me["user"]["username"].startswith("admin-") and me["role"] == "viewer"
    assert me["user"]["id"] != local.id
    assert (await router.service.accounts.get("admin")).role == "admin"
    # Nor does the provider's account have a password here: not even a hash planted in its
    # row opens it (the row's provider subject is what refuses).
    twin = me["user"]["username"]
    async with router.service.engine.begin() as connection:
        planted = PasswordHasher().hash("planted-pass-1")
        await connection.execute(
            update(users).where(users.c.username == twin).values(password_hash=planted)
        )
    async with router.client(REMOTE) as client:
        guess = {"username": twin, "password": "planted-pass-1"}
        guessed = await client.post("/api/auth/login", json=guess)
        assert guessed.status_code == 401
        await sign_in(client, "admin-twin")
        csrf = (await client.get("/api/auth/me")).json()["csrf_token"]
        changed = await client.post(
            "/api/auth/password", headers={"x-csrf-token": csrf},
            json={"current_password": "whatever1", "new_password": "another-1"},
        )  # fmt: skip
        assert changed.status_code == 400 and changed.json()["error"]["code"] == "sso_account"


async def test_a_refused_sign_in_and_a_forged_answer_open_no_session(
    router: InProcessRouter,
) -> None:
    async with router.client(REMOTE) as client:
        denied = await sign_in(client, None, deny=True)
        assert sso_error(denied) == "denied"
    # A callback with no login under way in this browser (another's code and state).
    async with router.client(REMOTE) as client:
        start = await client.get("/api/auth/oidc/login")
        state = parse_qs(urlsplit(start.headers["location"]).query)["state"][0]
    async with router.client(REMOTE) as stranger:
        forged = await stranger.get(f"/api/auth/oidc/callback?code=abc&state={state}")
        assert sso_error(forged) == "expired"
        assert (await stranger.get("/api/auth/me")).status_code == 401
    # The right browser with the wrong state.
    async with router.client(REMOTE) as client:
        await client.get("/api/auth/oidc/login")
        wrong = await client.get("/api/auth/oidc/callback?code=abc&state=not-it")
        assert sso_error(wrong) == "expired"


async def test_what_the_provider_says_reaches_the_log_only_checked(
    router: InProcessRouter, caplog: pytest.LogCaptureFixture
) -> None:
    async with router.client(REMOTE) as client:
        odd = await client.get("/api/auth/oidc/callback?error=%3Cscript%3E%0Aforged+line")
        plain = await client.get("/api/auth/oidc/callback?error=access_denied")
    assert sso_error(odd) == sso_error(plain) == "denied"
    logged = "\n".join(r.getMessage() for r in caplog.records)
    assert "access_denied" in logged and "(an unreadable error)" in logged
    assert "<script>" not in logged and "\nforged" not in logged


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_a_provider_that_is_down_sends_the_browser_back_with_the_reason(
    tmp_path: Path, database_url: str
) -> None:
    service = await _router(tmp_path, database_url, issuer=f"http://127.0.0.1:{_closed_port()}",
                            client_id=CLIENT_ID, admin_values=[ADMINS])  # fmt: skip
    try:
        async with InProcessRouter(service, tmp_path).client(REMOTE) as client:
            start = await client.get("/api/auth/oidc/login")
            assert start.status_code == 303 and sso_error(start) == "provider_unreachable"
            # Local accounts still log in.
            local_admin = {"username": "admin", "password": "local-admin-1"}
            local = await client.post("/api/auth/login", json=local_admin)
            assert local.status_code == 200, local.text
    finally:
        await service.close()


async def test_without_single_sign_on_its_routes_say_so(tmp_path: Path) -> None:
    settings = RouterSettings(home=tmp_path, auto_distribute="none")
    service = await RouterService.open(settings)
    await service.start()
    try:
        async with InProcessRouter(service, tmp_path).client(REMOTE) as client:
            assert (await client.get("/api/auth/methods")).json()["sso"] is None
            missing = await client.get("/api/auth/oidc/login")
            assert missing.status_code == 404 and "[router.oidc]" in missing.text
    finally:
        await service.close()


@pytest.mark.parametrize(
    ("oidc", "complaint"),
    [
        ({"client_secret": "s3cret"}, "client_secret_env"),
        ({"issuer": "http://idp.example.com"}, "must be https"),
        ({"scopes": ["profile"]}, "'openid'"),
    ],
)
def test_settings_refuse_a_secret_in_the_file_and_plain_http(
    oidc: dict[str, Any], complaint: str
) -> None:
    with pytest.raises(ValueError, match=complaint):
        OidcSettings(**{"issuer": "https://idp.example.com", "client_id": "x", **oidc})


async def test_someone_the_provider_no_longer_gives_a_role_loses_their_account(
    router: InProcessRouter, idp: IdentityProvider
) -> None:
    async with router.client(REMOTE) as earlier:
        await sign_in(earlier, "victor")
        assert (await earlier.get("/api/auth/me")).status_code == 200
        async with httpx.AsyncClient() as http:
            staff_only = {**USERS["victor"], "groups": ["staff"]}
            assert (await http.put(f"{idp.issuer}/users/victor", json=staff_only)).is_success
        try:
            async with router.client(REMOTE) as client:
                assert sso_error(await sign_in(client, "victor")) == "no_role"
        finally:
            async with httpx.AsyncClient() as http:
                await http.put(f"{idp.issuer}/users/victor", json=USERS["victor"])
        # The session opened before is over (the account and its sessions are gone).
        assert (await earlier.get("/api/auth/me")).status_code == 401
    assert "victor" not in [u.username for u in await router.service.accounts.list()]


async def test_a_token_endpoint_that_fails_mid_login_sends_the_browser_back(
    tmp_path: Path, database_url: str
) -> None:
    """The provider answers discovery and its page, then goes away (or errs) before the
    router trades the code: a redirect with the reason, never a 500."""
    with IdentityProvider(USERS) as provider:
        service = await _router(tmp_path, database_url, **provider.settings())
        router = InProcessRouter(service, tmp_path)
        client = router.client(REMOTE)
        start = await client.get("/api/auth/oidc/login")
        async with httpx.AsyncClient() as browser:
            answer = await browser.post(start.headers["location"], data={"sub": "alice"})
    try:
        back = urlsplit(answer.headers["location"])  # the provider is down from here on
        done = await client.get(f"{back.path}?{back.query}")
        assert done.status_code == 303 and sso_error(done) == "provider_unreachable"
        assert (await client.get("/api/auth/me")).status_code == 401
    finally:
        await client.aclose()
        await service.close()


async def test_a_token_endpoint_that_errs_sends_the_browser_back(
    router: InProcessRouter, idp: IdentityProvider
) -> None:
    idp.broken.add("/oauth2/token")
    try:
        async with router.client(REMOTE) as client:
            done = await sign_in(client, "alice")
            # (a provider answering 500 is one in trouble: "try again later")
            assert done.status_code == 303 and sso_error(done) == "provider_unreachable"
    finally:
        idp.broken.clear()


async def test_the_answer_may_come_back_to_another_router_on_the_same_database(
    tmp_path: Path, database_url: str, idp: IdentityProvider
) -> None:
    """Two routers behind one address: the login starts on one, the provider's redirect
    back lands on the other (the pending login is in the browser's cookie, not in memory)."""
    first = await _router(tmp_path / "a", database_url, **idp.settings())
    second = await _router(tmp_path / "b", database_url, **idp.settings())
    try:
        async with InProcessRouter(first, tmp_path).client(REMOTE) as on_first:
            start = await on_first.get("/api/auth/oidc/login")
            async with httpx.AsyncClient() as browser:
                answer = await browser.post(start.headers["location"], data={"sub": "alice"})
            async with InProcessRouter(second, tmp_path).client(REMOTE) as on_second:
                on_second.cookies = on_first.cookies  # (one browser, one address)
                back = urlsplit(answer.headers["location"])
                done = await on_second.get(f"{back.path}?{back.query}")
                assert sso_error(done) is None
                assert (await on_second.get("/api/auth/me")).json()["role"] == "admin"
            # The session is in the database: the first router knows it too.
            on_first.cookies = on_second.cookies
            assert (await on_first.get("/api/auth/me")).json()["user"]["username"] == "alice"
    finally:
        await first.close()
        await second.close()
