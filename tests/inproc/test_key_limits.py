"""Per-key limits through the client API: requests per minute (429 with Retry-After, in
OpenAI's shape) and the models a key may use (403), checked before anything is forwarded."""

from __future__ import annotations

from tests.inproc.conftest import InProcessRouter

ASK = [{"role": "user", "content": "hi"}]


async def make_key(router: InProcessRouter, limits: dict[str, object]) -> dict[str, str]:
    async with router.client() as client:
        made = await client.post("/api/keys", json={"name": "limited", "limits": limits})
        assert made.status_code == 201, made.text
        assert made.json()["limits"]["requests_per_minute"] == limits.get("requests_per_minute")
        return {"authorization": f"Bearer {made.json()['secret']}"}


async def test_a_key_gets_its_requests_per_minute_then_429_with_retry_after(
    router: InProcessRouter,
) -> None:
    key = await make_key(router, {"requests_per_minute": 3})
    async with router.client() as client:
        body = {"model": "gemma-3-270m", "messages": ASK}
        answers = [await client.post("/v1/chat/completions", json=body, headers=key)
                   for _ in range(4)]  # fmt: skip
    assert [a.status_code for a in answers[:3]] != [429] * 3  # let through (no node: 503)
    refused = answers[3]
    assert refused.status_code == 429
    error = refused.json()["error"]
    assert error["code"] == "rate_limit_exceeded" and error["type"] == "requests"
    assert 1 <= int(refused.headers["retry-after"]) <= 20  # one request refills in 20 s


async def test_a_key_uses_only_its_models_by_any_of_their_names(router: InProcessRouter) -> None:
    key = await make_key(router, {"models": ["gemma3:270m"]})
    async with router.client() as client:
        for name in ("gemma-3-270m", "gemma3:270m"):
            allowed = await client.post(
                "/v1/chat/completions", json={"model": name, "messages": ASK}, headers=key
            )
            assert allowed.status_code != 403, allowed.text
        other = await client.post(
            "/v1/chat/completions", json={"model": "llama3.2:1b", "messages": ASK}, headers=key
        )
        assert other.status_code == 403
        assert other.json()["error"]["code"] == "model_not_allowed"
        assert "gemma-3-270m" in other.json()["error"]["message"]


async def test_limits_and_names_are_checked_when_a_key_is_made(router: InProcessRouter) -> None:
    async with router.client() as client:
        for body in (
            {"limits": {"requests_per_minute": 0}},
            {"limits": {"models": ["../etc:passwd"]}},
            {"limits": {"burst": 5}},
            {"name": "a\x00b"},
            {"name": "x" * 201},
        ):
            answer = await client.post("/api/keys", json=body)
            assert answer.status_code == 400, (body, answer.text)
