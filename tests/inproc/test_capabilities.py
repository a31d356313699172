"""Capabilities checked at the router, before any node is called (no node is registered
here: a request that got past the check would wait for one and fail otherwise). Every
dialect's image reaches the check: OpenAI's image_url, Anthropic's image block, the
Responses API's input_image."""

from __future__ import annotations

from typing import Any

from tests.inproc.conftest import InProcessRouter

PNG = (
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQAAAABJRU5E"
    "rkJggg=="
)  # one pixel
DATA_URL = f"data:image/png;base64,{PNG}"
TEXT_MODEL = "gemma-3-270m"  # the catalog: chat, completion, embedding; no vision
CHAT_ONLY = "qwen2.5-0.5b-instruct-q4_k_m"  # the catalog: chat, completion


def error_of(body: dict[str, Any]) -> dict[str, Any]:
    return dict(body["error"])


async def test_an_image_to_a_text_model_is_a_400_naming_the_capability(
    router: InProcessRouter,
) -> None:
    image = {"type": "image_url", "image_url": {"url": DATA_URL}}
    chat = {"model": TEXT_MODEL, "max_tokens": 8, "messages": [
        {"role": "user", "content": [{"type": "text", "text": "What is it?"}, image]}]}  # fmt: skip
    async with router.client() as client:
        answer = await client.post("/v1/chat/completions", json=chat)
        assert answer.status_code == 400
        error = error_of(answer.json())
        assert error["code"] == "model_lacks_capability" and error["param"] == "messages"
        assert "'vision' capability" in error["message"]

        anthropic = {"model": TEXT_MODEL, "max_tokens": 8, "messages": [{"role": "user",
                                                                         "content": [
            {"type": "image", "source": {"type": "base64", "media_type": "image/png",
                                         "data": PNG}},
            {"type": "text", "text": "What is it?"}]}]}  # fmt: skip
        answer = await client.post("/v1/messages", json=anthropic,
                                   headers={"anthropic-version": "2023-06-01"})  # fmt: skip
        assert answer.status_code == 400
        assert answer.json()["type"] == "error"  # Anthropic's shape
        assert "'vision' capability" in answer.json()["error"]["message"]

        responses = {"model": TEXT_MODEL, "input": [{"role": "user", "content": [
            {"type": "input_text", "text": "What is it?"},
            {"type": "input_image", "image_url": DATA_URL}]}]}  # fmt: skip
        answer = await client.post("/v1/responses", json=responses)
        assert answer.status_code == 400
        assert "'vision' capability" in error_of(answer.json())["message"]


async def test_embeddings_to_a_model_that_cannot_embed_are_refused_before_a_node(
    router: InProcessRouter,
) -> None:
    async with router.client() as client:
        answer = await client.post("/v1/embeddings", json={"model": CHAT_ONLY, "input": "x"})
    assert answer.status_code == 400
    error = error_of(answer.json())
    assert error["code"] == "model_lacks_capability" and error["param"] == "model"
    assert "'embedding' capability" in error["message"]


async def test_an_unknown_model_is_still_a_404_whatever_the_request_holds(
    router: InProcessRouter,
) -> None:
    chat = {"model": "no-such-model", "messages": [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": DATA_URL}}]}]}  # fmt: skip
    async with router.client() as client:
        answer = await client.post("/v1/chat/completions", json=chat)
    assert answer.status_code == 404
