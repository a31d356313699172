"""What a signed-in user may do on the client API (the playground, basic auth): their role's
limits, no cloud models for viewers unless allowed, their name in history; and a key in a
header wins over a cookie that comes with it."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from pydantic import SecretStr

from llmlb.common.settings import RoleLimits, RouterSettings
from llmlb.router.service import RouterService
from tests.inproc.conftest import REMOTE, InProcessRouter
from tests.inproc.test_accounts import ADMIN, VIEWER, accounts, logged_in

CHAT = "/v1/chat/completions"


def chat(model: str) -> dict[str, object]:
    return {"model": model, "messages": [{"role": "user", "content": "hi"}]}


@pytest.fixture
async def limited(tmp_path: Path, database_url: str) -> AsyncIterator[InProcessRouter]:
    """A router whose viewers may send 3 requests a minute, and whose admins have no limit
    (the default), with an OpenAI key configured (no request reaches it here)."""
    settings = RouterSettings(
        home=tmp_path, auto_distribute="none", database_url=database_url,
        viewer_limits=RoleLimits(requests_per_minute=3), openai_api_key=SecretStr("sk-unused-0123"),
        openai_base_url="http://127.0.0.1:9/v1",
    )  # fmt: skip
    service = await RouterService.open(settings)
    await service.start()
    try:
        yield InProcessRouter(service, tmp_path)
    finally:
        await service.close()


async def test_a_viewers_session_may_not_reach_cloud_models(limited: InProcessRouter) -> None:
    await accounts(limited)
    async with limited.client(REMOTE) as client:
        csrf = await logged_in(client, VIEWER)
        refused = await client.post(CHAT, json=chat("openai:gpt-4o"),
                                    headers={"x-csrf-token": csrf})  # fmt: skip
    assert refused.status_code == 403
    assert refused.json()["error"]["code"] == "model_not_allowed"
    assert "cloud models" in refused.json()["error"]["message"]


async def test_an_admins_session_may(limited: InProcessRouter) -> None:
    await accounts(limited)
    async with limited.client(REMOTE) as client:
        csrf = await logged_in(client, ADMIN)
        answer = await client.post(CHAT, json=chat("openai:gpt-4o"), headers={"x-csrf-token": csrf})
    # Let through: it then fails to reach the (unreachable) provider, which is not a 403.
    assert answer.status_code in (502, 503, 504), answer.text


async def test_a_viewers_requests_count_against_the_roles_limit_per_user(
    limited: InProcessRouter,
) -> None:
    await accounts(limited)
    async with limited.client(REMOTE) as client:
        csrf = await logged_in(client, VIEWER)
        statuses = [
            (await client.post(CHAT, json=chat("nope"), headers={"x-csrf-token": csrf})).status_code
            for _ in range(4)
        ]
    assert statuses == [404, 404, 404, 429]
    # Basic auth is the same user: the same allowance, spent.
    async with limited.client(REMOTE) as script:
        again = await script.post(CHAT, json=chat("nope"), auth=VIEWER)
    assert again.status_code == 429
    assert "user 'val' (role viewer)" in again.json()["error"]["message"]


async def test_a_sessions_requests_carry_the_user_into_history(limited: InProcessRouter) -> None:
    await accounts(limited)
    async with limited.client(REMOTE) as client:
        csrf = await logged_in(client, ADMIN)
        await client.post(CHAT, json=chat("nope"), headers={"x-csrf-token": csrf})
        await limited.service.history.flush()
        rows = (await client.get("/api/requests", params={"user": ADMIN[0]})).json()["data"]
    assert [(row["user"], row["key_id"], row["model"]) for row in rows] == [
        (ADMIN[0], None, "nope")
    ]


async def test_a_key_in_a_header_wins_over_a_session_cookie(router: InProcessRouter) -> None:
    await accounts(router)
    key, secret = await router.service.keys.create("client", ["api"])
    async with router.client(REMOTE) as client:
        await logged_in(client, VIEWER)  # the browser's cookie comes along, with no CSRF token
        answer = await client.post(CHAT, json=chat("nope"),
                                   headers={"authorization": f"Bearer {secret}"})  # fmt: skip
        await router.service.history.flush()
        rows = (await client.get("/api/requests")).json()["data"]
    assert answer.status_code == 404  # served (no such model), not refused as csrf_failed
    assert rows[0]["key_id"] == key.id and rows[0]["user"] is None


async def test_a_known_route_with_a_slash_too_many_is_a_404_not_a_redirect(
    router: InProcessRouter,
) -> None:
    await accounts(router)
    async with router.client(REMOTE) as client:
        known = await client.post("/api/keys/", json={"name": "x"})
        unknown = await client.post("/api/nothing-here/", json={"name": "x"})
    assert (known.status_code, unknown.status_code) == (404, 404)
    assert "location" not in known.headers
