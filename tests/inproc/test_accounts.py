"""Dashboard accounts through the API: logins, sessions, CSRF, roles, throttling, history files."""

from __future__ import annotations

import asyncio
import csv
import io
import json
import logging
import re
import time
from pathlib import Path

import httpx
import pytest
from starlette.routing import Route

from llmlb.router.api.ollama import CLIENT_PATHS as OLLAMA_PATHS, OPERATOR_PATHS
from llmlb.router.app import ROUTES
from llmlb.router.telemetry.history import RequestRecord
from tests.inproc.conftest import LOOPBACK, REMOTE, InProcessRouter

ADMIN = ("root", "root-pass-1")
VIEWER = ("val", "val-pass-12")


async def accounts(router: InProcessRouter) -> None:
    await router.service.accounts.create(*ADMIN, "admin")
    await router.service.accounts.create(*VIEWER, "viewer")


async def logged_in(client: httpx.AsyncClient, user: tuple[str, str]) -> str:
    """Logs the client in (its cookie jar keeps the session); the CSRF token."""
    answer = await client.post("/api/auth/login", json={"username": user[0], "password": user[1]})
    assert answer.status_code == 200, answer.text
    cookie = answer.headers["set-cookie"].lower()
    assert "httponly" in cookie and "samesite=strict" in cookie
    return str(answer.json()["csrf_token"])


async def change_password(
    client: httpx.AsyncClient, csrf: str, current: str, new: str
) -> httpx.Response:
    return await client.post(
        "/api/auth/password", headers={"x-csrf-token": csrf},
        json={"current_password": current, "new_password": new},
    )  # fmt: skip


async def test_a_session_reads_and_its_writes_need_the_csrf_token(router: InProcessRouter) -> None:
    await accounts(router)
    async with router.client(REMOTE) as client:
        assert (await client.get("/api/nodes")).status_code == 401
        csrf = await logged_in(client, ADMIN)
        assert (await client.get("/api/nodes")).status_code == 200
        forged = await client.post("/api/keys", json={"name": "k"})
        assert forged.status_code == 403
        assert forged.json()["error"]["code"] == "csrf_failed"
        made = await client.post("/api/keys", json={"name": "k"}, headers={"x-csrf-token": csrf})
        assert made.status_code == 201
        assert (await client.post("/api/auth/logout")).status_code == 204
        assert (await client.get("/api/nodes")).status_code == 401


async def test_every_admin_write_refuses_a_viewer(router: InProcessRouter) -> None:
    await accounts(router)
    writes = [
        (route.path, method)
        for route in ROUTES
        if isinstance(route, Route) and route.path.startswith("/api/")
        and not route.path.startswith(("/api/auth/", "/api/nodes/{node_id}/heartbeat"))
        and route.path != "/api/nodes"  # registration is the node's, not an operator's
        and route.path not in OLLAMA_PATHS  # Ollama's API: a client's, scope api
        for method in (route.methods or set()) - {"GET", "HEAD"}
    ]  # fmt: skip
    assert len(writes) >= 12
    async with router.client(REMOTE) as client:
        csrf = await logged_in(client, VIEWER)
        for path, method in writes:
            url = path.format(node_id="n1", key_id="k1", name="m1", username="root", task_id="t")
            answer = await client.request(method, url, json={}, headers={"x-csrf-token": csrf})
            assert answer.status_code == 403, (method, path, answer.text)
            if path in OPERATOR_PATHS:  # (Ollama's shape: the message alone)
                assert "viewer" in answer.json()["error"], answer.text
            else:
                assert answer.json()["error"]["code"] == "read_only"
        assert (await client.get("/api/users")).status_code == 200  # reading is allowed
    basic = httpx.BasicAuth(*VIEWER)
    async with router.client(REMOTE) as client:
        answer = await client.post("/api/keys", json={"name": "k"}, auth=basic)
        assert answer.status_code == 403


async def test_repeated_wrong_passwords_lock_the_login(router: InProcessRouter) -> None:
    await accounts(router)
    right = {"username": ADMIN[0], "password": ADMIN[1]}
    async with router.client(("192.0.2.1", 1)) as client:
        unknown = await client.post("/api/auth/login", json={"username": "nobody", "password": "x"})
        # One message whether the name or the password was wrong.
        assert unknown.json()["error"]["message"] == "wrong user name or password"
    async with router.client(("192.0.2.2", 1)) as client:
        for _ in range(5):
            answer = await client.post("/api/auth/login", json={**right, "password": "nope-nope"})
            assert answer.status_code == 401
            assert answer.json()["error"]["message"] == "wrong user name or password"
        locked = await client.post("/api/auth/login", json=right)
        assert locked.status_code == 429
        assert 0 < int(locked.headers["retry-after"]) <= 30
    async with router.client(("192.0.2.3", 1)) as other:  # another address, same name: locked
        assert (await other.post("/api/auth/login", json=right)).status_code == 429
    async with router.client(("192.0.2.4", 1)) as other:  # another name from there: not locked
        viewer = {"username": VIEWER[0], "password": VIEWER[1]}
        assert (await other.post("/api/auth/login", json=viewer)).status_code == 200


async def test_a_burst_of_parallel_guesses_is_counted_before_it_is_checked(
    router: InProcessRouter,
) -> None:
    await accounts(router)
    wrong = {"username": ADMIN[0], "password": "guess-guess"}
    async with router.client(("192.0.2.5", 1)) as client:
        answers = await asyncio.gather(
            *(client.post("/api/auth/login", json=wrong) for _ in range(12))
        )
        statuses = sorted(a.status_code for a in answers)
        assert statuses == [401] * 5 + [429] * 7  # not 12 hashes checked
        right = {"username": ADMIN[0], "password": ADMIN[1]}
        assert (await client.post("/api/auth/login", json=right)).status_code == 429


async def test_basic_auth_and_password_changes_share_the_login_throttle(
    router: InProcessRouter,
) -> None:
    await accounts(router)
    async with router.client(("192.0.2.6", 1)) as client:
        for _ in range(5):
            guess = await client.get("/api/nodes", auth=(VIEWER[0], "guess-guess"))
            assert guess.status_code == 401
        locked = await client.get("/api/nodes", auth=VIEWER)
        assert locked.status_code == 429
        assert locked.json()["error"]["code"] == "too_many_login_attempts"
    async with router.client(("192.0.2.7", 1)) as client:
        csrf = await logged_in(client, ADMIN)
        for _ in range(5):
            wrong = await change_password(client, csrf, "guess-guess", "root-pass-9")
            assert wrong.status_code == 401
        locked = await change_password(client, csrf, ADMIN[1], "root-pass-9")
        assert locked.status_code == 429


async def test_every_refused_password_costs_one_hash(
    router: InProcessRouter, monkeypatch: pytest.MonkeyPatch
) -> None:
    """So that the time a refusal takes does not tell which user names exist."""
    await accounts(router)
    store = router.service.accounts
    hashed: list[str] = []
    verify = store._verify

    async def counted(password_hash: str, password: str) -> bool:
        hashed.append(password)
        return await verify(password_hash, password)

    monkeypatch.setattr(store, "_verify", counted)
    for username, password in [
        ("nobody", "guess-guess"), (ADMIN[0], "guess-guess"), (ADMIN[0], "x" * 300),
        ("nobody", "x" * 300), ("n" * 100, "guess-guess"),
    ]:  # fmt: skip
        hashed.clear()
        assert await store.check(username, password) is None
        assert len(hashed) == 1, (username, len(password))


async def test_a_viewer_changes_their_own_password(router: InProcessRouter) -> None:
    await accounts(router)
    async with router.client(REMOTE) as client:
        csrf = await logged_in(client, VIEWER)
        changed = await change_password(client, csrf, VIEWER[1], "val-pass-new")
        assert changed.status_code == 200, changed.text
        refused = await client.post(
            "/api/keys", json={"name": "k"}, headers={"x-csrf-token": changed.json()["csrf_token"]}
        )
        assert refused.json()["error"]["code"] == "read_only"  # still a viewer
    async with router.client(REMOTE) as client:
        await logged_in(client, (VIEWER[0], "val-pass-new"))


async def test_another_sites_page_cannot_change_anything(router: InProcessRouter) -> None:
    """A page the operator visits can post forms to the router's loopback address, where
    nothing may need a credential; such posts are refused and change nothing."""
    async with router.client(LOOPBACK) as client:
        assert (await client.get("/api/auth/me")).json()["open"] is True
        attempts = [
            {"content": b'{"name":"k"}', "headers": {"content-type": "text/plain"}},
            {
                "content": b"name=k",
                "headers": {"content-type": "application/x-www-form-urlencoded"},
            },
            {"json": {"name": "k"}, "headers": {"sec-fetch-site": "cross-site"}},
            {"json": {"name": "k"}, "headers": {"sec-fetch-site": "same-site"}},
        ]
        for attempt in attempts:
            refused = await client.post("/api/keys", **attempt)  # type: ignore[arg-type]
            assert refused.status_code == 403, attempt
            assert refused.json()["error"]["code"] == "cross_site_request"
        names = [k["name"] for k in (await client.get("/api/keys")).json()["data"]]
        assert "k" not in names
        await accounts(router)
        login = await client.post(
            "/api/auth/login", content=json.dumps({"username": ADMIN[0], "password": ADMIN[1]}),
            headers={"content-type": "text/plain;charset=UTF-8"},
        )  # fmt: skip
        assert login.status_code == 403 and "set-cookie" not in login.headers
        own = await client.post(
            "/api/auth/login", json={"username": ADMIN[0], "password": ADMIN[1]},
            headers={"sec-fetch-site": "same-origin"},
        )  # fmt: skip
        assert own.status_code == 200


async def test_a_new_password_ends_the_other_sessions(router: InProcessRouter) -> None:
    await accounts(router)
    async with router.client(REMOTE) as first, router.client(REMOTE) as second:
        csrf = await logged_in(first, ADMIN)
        await logged_in(second, ADMIN)
        wrong = await change_password(first, csrf, "guess-guess", "root-pass-2")
        assert wrong.status_code == 401
        changed = await change_password(first, csrf, ADMIN[1], "root-pass-2")
        assert changed.status_code == 200
        router.service.accounts._recent.clear()  # another router's cache would expire in 5 s
        assert (await first.get("/api/nodes")).status_code == 200  # renewed
        assert (await second.get("/api/nodes")).status_code == 401
    async with router.client(REMOTE) as client:
        assert (await client.get("/api/nodes", auth=ADMIN)).status_code == 401
        assert (await client.get("/api/nodes", auth=(ADMIN[0], "root-pass-2"))).status_code == 200


async def test_the_last_admin_stays_and_bad_names_are_refused(router: InProcessRouter) -> None:
    await accounts(router)
    async with router.client(REMOTE) as client:
        auth = httpx.BasicAuth(*ADMIN)
        last = await client.patch("/api/users/root", json={"role": "viewer"}, auth=auth)
        assert last.status_code == 409
        assert last.json()["error"]["code"] == "last_admin"
        assert (await client.delete("/api/users/root", auth=auth)).status_code == 409
        for name in ("../etc", "a b", "", "x" * 65, "<b>"):
            made = await client.post(
                "/api/users", json={"username": name, "password": "long-enough"}, auth=auth
            )
            assert made.status_code == 400, name
        short = await client.post(
            "/api/users", json={"username": "ok", "password": "short"}, auth=auth
        )
        assert short.status_code == 400
        assert short.json()["error"]["param"] == "password"
        taken = await client.post(
            "/api/users", json={"username": "val", "password": "long-enough"}, auth=auth
        )
        assert taken.status_code == 409


async def test_the_first_admin_comes_from_the_admin_password(router: InProcessRouter) -> None:
    router.service.settings.admin_password = "first-pass-1"
    await router.service.provisioning.ensure_first_admin()
    users = await router.service.accounts.list()
    assert [(u.username, u.role) for u in users] == [("admin", "admin")]
    async with router.client(REMOTE) as client:
        await logged_in(client, ("admin", "first-pass-1"))


async def test_loopback_is_open_until_an_account_exists(router: InProcessRouter) -> None:
    async with router.client(LOOPBACK) as client:
        me = (await client.get("/api/auth/me")).json()
        assert me["open"] is True and me["role"] == "admin"
        await accounts(router)
        router.service.accounts._any_user = (0.0, False)  # as 5 s later
        assert (await client.get("/api/auth/me")).status_code == 401


async def test_history_exports_csv_that_spreadsheets_read_as_text(router: InProcessRouter) -> None:
    now = time.time()
    for index, model in enumerate(["m1", "=HYPERLINK(1)", "m1", "\t=1+1"]):
        router.service.history.add(RequestRecord(
            ts=now - index, request_id=f"r{index}", key_id=None, endpoint="chat",
            model=model, node_id="n", status=200, latency_ms=5.0,
            request_body='{"secret": "body"}',
        ))  # fmt: skip
    async with router.client() as client:
        answer = await client.get("/api/requests/export", params={"format": "csv"})
        assert answer.headers["content-disposition"].startswith("attachment;")
        rows = list(csv.DictReader(io.StringIO(answer.text)))
        assert [r["model"] for r in rows] == ["m1", "'=HYPERLINK(1)", "m1", "'\t=1+1"]
        only = await client.get("/api/requests/export", params={"format": "json", "model": "m1"})
        assert len(only.text.splitlines()) == 2
        # A file of summaries: bodies stay in the detail view (a page of them is unbounded).
        assert "request_body" not in json.loads(only.text.splitlines()[0])
        assert "secret" not in answer.text + only.text
        first = (await client.get("/api/requests")).json()["data"][0]
        detail = await client.get(f"/api/requests/{first['id']}")
        assert detail.json()["request_id"] == "r0"
        assert (await client.get("/api/requests/999999")).status_code == 404
        assert (await client.get("/api/requests/export?format=xml")).status_code == 400


async def test_the_router_log_page_reads_recent_lines(
    router: InProcessRouter, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="llmlb")
    async with router.client() as client:
        await client.get("/api/nodes/no-such-node")  # logged as a 404
        lines = (await client.get("/api/logs", params={"limit": 50})).json()["data"]
        assert any("/api/nodes/no-such-node 404" in line["msg"] for line in lines)
        warnings = (await client.get("/api/logs", params={"level": "warning"})).json()["data"]
        assert all(line["level"] in ("warning", "error") for line in warnings)
        assert (await client.get("/api/logs", params={"level": "loud"})).status_code == 400


async def test_the_grafana_dashboard_reads_metrics_the_router_exports(
    router: InProcessRouter,
) -> None:
    dashboard = json.loads((Path(__file__).parents[2] / "docs/grafana/llmlb.json").read_text())
    wanted = {
        re.sub(r"_bucket$", "", name)
        for panel in dashboard["panels"]
        for target in panel["targets"]
        for name in re.findall(r"llmlb_[a-z_]+", target["expr"])
    }
    async with router.client() as client:
        text = (await client.get("/metrics")).text
    exported = set(re.findall(r"^# (?:HELP|TYPE) (\S+)", text, re.M))
    assert len(wanted) >= 10
    missing = {n for n in wanted if n not in exported and n.removesuffix("_total") not in exported}
    assert not missing
