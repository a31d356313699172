"""Cloud settings as an operator meets them: a missing key, a provider that cannot list."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from pydantic import SecretStr

from llmlb.common.settings import RouterSettings
from llmlb.router.app import create_app
from llmlb.router.service import RouterService
from tests.support import free_port


@pytest.fixture
async def client(tmp_path: Path) -> AsyncIterator[httpx.AsyncClient]:
    """A router with an OpenAI key whose base URL answers nothing, and no other keys."""
    dead = f"http://127.0.0.1:{free_port()}/v1"
    settings = RouterSettings(home=tmp_path, auto_distribute="none",
                              openai_api_key=SecretStr("sk-x"), openai_base_url=dead)  # fmt: skip
    service = await RouterService.open(settings)
    await service.start()
    transport = httpx.ASGITransport(app=create_app(service), client=("127.0.0.1", 40000))
    try:
        async with httpx.AsyncClient(transport=transport, base_url="http://router") as http:
            yield http
    finally:
        await service.close()


@pytest.mark.parametrize(("model", "setting"), [("anthropic:claude", "ANTHROPIC_API_KEY"),
                                                ("google:gemini", "GOOGLE_API_KEY")])  # fmt: skip
async def test_a_provider_without_a_key_is_a_401_naming_the_setting(
    client: httpx.AsyncClient, model: str, setting: str
) -> None:
    reply = await client.post("/v1/chat/completions", json={
        "model": model, "messages": [{"role": "user", "content": "hi"}]})  # fmt: skip
    assert reply.status_code == 401
    error = reply.json()["error"]
    assert setting in error["message"] and error["code"] == "provider_not_configured"


async def test_a_provider_that_cannot_list_its_models_leaves_the_list_whole(
    client: httpx.AsyncClient,
) -> None:
    reply = await client.get("/v1/models")
    assert reply.status_code == 200
    ids = [m["id"] for m in reply.json()["data"]]
    assert "gemma-3-270m" in ids  # the catalog's models, without any of OpenAI's
    assert not any(i.startswith("openai:") for i in ids)


async def test_an_unreachable_provider_is_a_502_naming_it(client: httpx.AsyncClient) -> None:
    reply = await client.post("/v1/chat/completions", json={
        "model": "openai:gpt-4o", "messages": [{"role": "user", "content": "hi"}]})  # fmt: skip
    assert reply.status_code == 502
    assert reply.json()["error"]["message"].startswith("openai failed: ClientConnectorError")
