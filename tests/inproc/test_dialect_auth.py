"""Anthropic's clients authenticate with ``x-api-key``: the router takes it like a bearer key,
and answers /v1/messages errors in a shape both kinds of client read."""

from __future__ import annotations

from tests.inproc.conftest import REMOTE, InProcessRouter

ASK = {"model": "no-such-model", "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}]}


async def test_x_api_key_is_a_key_and_errors_have_both_shapes(router: InProcessRouter) -> None:
    _, secret = await router.service.keys.create("anthropic client", ["api"])
    async with router.client(REMOTE) as http:
        refused = await http.post("/v1/messages", json=ASK, headers={"x-api-key": "wrong"})
        assert refused.status_code == 401
        body = refused.json()
        assert body["type"] == "error" and body["error"]["type"] == "authentication_error"
        assert body["error"]["message"]
        known = await http.post("/v1/messages", json=ASK, headers={"x-api-key": secret})
        assert known.status_code == 404  # past the key: the model is what is wrong
        assert known.json()["error"]["code"] == "model_not_supported"
        bearer = await http.post("/v1/responses", headers={"authorization": f"Bearer {secret}"},
                                 json={"model": "no-such-model", "input": "hi"})  # fmt: skip
        assert bearer.status_code == 404 and "type" not in bearer.json()
