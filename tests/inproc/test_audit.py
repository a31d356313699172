"""The audit trail: every change through the admin API, who made it (a user, a key, loopback),
what, when, from where and how it ended; never a secret; readable, filtered and exported
through the API, kept as long as the history; nothing recorded for callers the API refused."""

from __future__ import annotations

import csv
import io
import json
import time
from typing import Any

import httpx

from tests.inproc.conftest import REMOTE, InProcessRouter
from tests.inproc.test_accounts import ADMIN, VIEWER, accounts, logged_in

SECRETS = ("user-pass-123", "sk-endpoint-secret", "root-pass-1")


async def trail(client: httpx.AsyncClient, **params: str) -> list[dict[str, Any]]:
    answer = await client.get("/api/audit", params=params)
    assert answer.status_code == 200, answer.text
    rows: list[dict[str, Any]] = answer.json()["data"]
    return rows


async def test_changes_are_recorded_with_who_what_where_and_the_result(
    router: InProcessRouter,
) -> None:
    await accounts(router)
    async with router.client(REMOTE) as client:
        csrf = await logged_in(client, ADMIN)
        headers = {"x-csrf-token": csrf}
        made = await client.post("/api/keys", json={"name": "ci", "scopes": ["api"]},
                                 headers=headers)  # fmt: skip
        assert made.status_code == 201
        key_id, key_secret = made.json()["id"], made.json()["secret"]
        await client.post("/api/users", json={"username": "ana", "password": "user-pass-123",
                                              "role": "viewer"}, headers=headers)  # fmt: skip
        endpoint = {"url": "http://127.0.0.1:9/v1", "key": "sk-endpoint-secret"}
        await client.post("/api/endpoints", json=endpoint, headers=headers)
        failed = await client.post("/api/models/distribute", json={"model": "no-such-model"},
                                   headers=headers)  # fmt: skip
        assert failed.status_code == 404
        await client.delete(f"/api/keys/{key_id}", headers=headers)
        rows = await trail(client)
    actions = [(r["action"], r["status"]) for r in reversed(rows)]
    assert actions == [
        ("POST /api/auth/login", 200), ("POST /api/keys", 201), ("POST /api/users", 201),
        ("POST /api/endpoints", 201), ("POST /api/models/distribute", 404),
        (f"DELETE /api/keys/{key_id}", 200),
    ], actions  # fmt: skip
    by_action = {r["action"]: r for r in rows}
    made_row = by_action["POST /api/keys"]
    assert made_row["user"] == ADMIN[0] and made_row["key_id"] is None
    assert made_row["source"] == REMOTE[0] and made_row["ts"] > time.time() - 60
    assert made_row["detail"] == {"name": "ci", "scopes": ["api"]}
    assert by_action[f"DELETE /api/keys/{key_id}"]["target"] == {"key_id": key_id}
    assert by_action["POST /api/users"]["detail"]["password"] == "[redacted]"
    assert by_action["POST /api/endpoints"]["detail"]["key"] == "[redacted]"
    assert by_action["POST /api/auth/login"]["detail"]["password"] == "[redacted]"
    everything = json.dumps(rows)
    assert all(secret not in everything for secret in (*SECRETS, key_secret))


async def test_keys_and_loopback_are_named_and_refused_callers_leave_nothing(
    router: InProcessRouter,
) -> None:
    async with router.client() as loopback:  # (no admin credential exists yet: open)
        await loopback.post("/api/nodes/n1/drain", json={})
    _, admin_key = await router.service.keys.create("ops", ["admin"])
    await accounts(router)
    async with router.client(REMOTE) as client:
        key = {"authorization": f"Bearer {admin_key}"}
        assert (await client.put("/api/logs/levels", json={"logger": "llmlb", "level": "info"},
                                 headers=key)).status_code == 200  # fmt: skip
        anonymous = await client.post("/api/keys", json={"name": "x"})
        assert anonymous.status_code == 401
        csrf = await logged_in(client, VIEWER)
        refused = await client.post("/api/keys", json={"name": "x"},
                                    headers={"x-csrf-token": csrf})  # fmt: skip
        assert refused.status_code == 403
    async with router.client(REMOTE) as client:
        await logged_in(client, ADMIN)
        rows = await trail(client)
        by_key = await trail(client, key_id=str(rows[-2]["key_id"]))
    actions = [r["action"] for r in reversed(rows)]
    assert actions[:2] == ["POST /api/nodes/n1/drain", "PUT /api/logs/levels"], actions
    assert "POST /api/keys" not in actions  # the anonymous and the viewer's attempts
    drained, levels = rows[-1], rows[-2]
    assert drained["user"] is None and drained["key_id"] is None and drained["status"] == 404
    assert levels["key_id"] and levels["user"] is None
    assert [r["action"] for r in by_key] == ["PUT /api/logs/levels"]


async def test_the_trail_is_filtered_exported_and_pruned(router: InProcessRouter) -> None:
    async with router.client() as client:
        for name in ("a", "b", "c"):
            await client.post("/api/keys", json={"name": f"=cmd|{name}", "scopes": ["api"]})
        await client.post("/api/nodes/n1/drain", json={})
        keys_only = await trail(client, action="POST /api/keys")
        assert len(keys_only) == 3
        exported = await client.get("/api/audit/export", params={"format": "csv"})
        assert exported.status_code == 200
        assert exported.headers["content-disposition"].startswith("attachment;")
        table = list(csv.DictReader(io.StringIO(exported.text)))
        assert len(table) == 4 and table[-1]["action"] == "POST /api/keys"
        # A detail that starts with = is text to a spreadsheet, not a formula.
        assert all(not row["detail"].startswith("=") for row in table)
        lines = (await client.get("/api/audit/export", params={"format": "json"})).text
        first = json.loads(lines.splitlines()[0])
        assert first["action"] == "POST /api/nodes/n1/drain"
        assert (await client.get("/api/audit/export", params={"format": "xml"})).status_code == 400
    trail_store = router.service.audit
    trail_store._retention = 0.0  # (as if history_days had passed)
    await trail_store.prune()
    async with router.client() as client:
        assert await trail(client) == []
