"""Endpoints with the wire formats of servers that cannot run here (vLLM, Ollama): added by
the admin API, the CLI's local admin and the settings file, their models discovered, their
load read from vLLM's metrics, requests sent with each one's own model id and key, and the
key never shown. The router runs in this process; the endpoints are real loopback servers."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from llmlb.cli.local_admin import LocalAdmin
from llmlb.common.logs import configure_logging
from llmlb.common.settings import RouterSettings
from llmlb.common.wire import EndpointSpec
from llmlb.router.service import RouterService
from tests.fakeendpoints import OLLAMA_MODEL, VLLM_MODEL, FakeEndpoint
from tests.inproc.conftest import InProcessRouter
from tests.support import free_port

VLLM_KEY = "vllm-key-7d0f1c2b9e8a4f6b"
CHAT = [{"role": "user", "content": "What is the capital of France?"}]


@pytest.fixture
def vllm() -> Iterator[FakeEndpoint]:
    fake = FakeEndpoint("vllm", key=VLLM_KEY, running=3, waiting=2).start()
    yield fake
    fake.stop()


@pytest.fixture
def ollama() -> Iterator[FakeEndpoint]:
    fake = FakeEndpoint("ollama").start()
    yield fake
    fake.stop()


async def _add(router: InProcessRouter, body: dict[str, Any]) -> dict[str, Any]:
    async with router.client() as client:
        answer = await client.post("/api/endpoints", json=body)
    assert answer.status_code == 201, answer.text
    return dict(answer.json())


async def test_endpoints_serve_their_models_under_fleet_names_with_their_own_ids_and_keys(
    router: InProcessRouter, vllm: FakeEndpoint, ollama: FakeEndpoint,
    caplog: pytest.LogCaptureFixture,
) -> None:  # fmt: skip
    caplog.set_level(logging.DEBUG)
    configure_logging("debug")  # as a router run with --log-level debug logs
    added = await _add(router, {"url": vllm.url + "/v1", "kind": "vllm", "key": VLLM_KEY,
                                "max_concurrency": 8})  # fmt: skip
    assert added["kind"] == "vllm" and added["status"] == "ready"
    assert added["base_url"] == vllm.url  # (the /v1 operators copy is the router's own path)
    assert added["models_loaded"] == ["Qwen2.5-0.5B-Instruct"]
    # vLLM's metrics are its load: 3 running, 2 waiting.
    assert (added["active_requests"], added["queued_requests"]) == (3, 2)
    await _add(router, {"url": ollama.url, "kind": "ollama", "name": "mac-studio"})

    async with router.client() as client:
        listed = {m["id"] for m in (await client.get("/v1/models")).json()["data"]}
        assert {"Qwen2.5-0.5B-Instruct", "llama3.2-1b"} <= listed
        # Ollama's name with its tag, the fleet's name, and vLLM's own id all reach them.
        for model, fake, own in [(OLLAMA_MODEL, ollama, OLLAMA_MODEL),
                                 ("llama3.2-1b", ollama, OLLAMA_MODEL),
                                 (VLLM_MODEL, vllm, VLLM_MODEL),
                                 ("Qwen2.5-0.5B-Instruct", vllm, VLLM_MODEL)]:  # fmt: skip
            answer = await client.post("/v1/chat/completions",
                                       json={"model": model, "messages": CHAT})  # fmt: skip
            assert answer.status_code == 200, answer.text
            # The endpoint's answer as it sent it (its own model id, its fingerprint).
            assert answer.json()["system_fingerprint"] == f"fp_{fake.kind}"
            assert answer.json()["model"] == own
            assert fake.chats()[-1].model == own
        # An image to an endpoint's model: its server decides (vLLM serves vision models).
        image = {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0K"}}
        seen = await client.post("/v1/chat/completions", json={
            "model": VLLM_MODEL, "messages": [{"role": "user", "content": [image]}]})  # fmt: skip
        assert seen.status_code == 200, seen.text
        stream = await client.post("/v1/chat/completions", json={
            "model": "Qwen2.5-0.5B-Instruct", "messages": CHAT, "stream": True})  # fmt: skip
        assert stream.status_code == 200 and stream.text.endswith("data: [DONE]\n\n")
        assert "Paris, " in stream.text
        assert stream.headers["x-llmlb-node"] == f"{vllm.server.url[7:]}"  # type: ignore[union-attr]

        # Its key went with each of its requests, and to nobody else.
        assert {c.authorization for c in vllm.calls if c.path.startswith("/v1/")} == {
            f"Bearer {VLLM_KEY}"}  # fmt: skip
        assert {c.authorization for c in ollama.calls} == {None}
        # It is never shown back or logged.
        for path in ("/api/nodes", "/api/endpoints", "/api/models/available"):
            assert VLLM_KEY not in (await client.get(path)).text
        assert VLLM_KEY not in caplog.text
        shown = (await client.get("/api/endpoints")).json()["data"]
        assert {(e["kind"], e["has_key"]) for e in shown} == {("vllm", True), ("ollama", False)}

        # The router puts nothing on an endpoint.
        refused = await client.post("/api/models/distribute", json={
            "model": "gemma-3-270m", "target": "specific", "node_ids": [added["id"]]})  # fmt: skip
        assert refused.status_code == 400 and "endpoint" in refused.json()["error"]["message"]

        # Removed, it serves no more.
        assert (await client.delete(f"/api/endpoints/{added['id']}")).status_code == 204
        body = {"model": "Qwen2.5-0.5B-Instruct", "messages": CHAT}
        gone = await client.post("/v1/chat/completions", json=body)
        assert gone.status_code == 404


async def test_an_endpoint_gets_no_more_at_once_than_its_declared_concurrency(
    router: InProcessRouter, ollama: FakeEndpoint
) -> None:
    ollama.delay = 0.3
    await _add(router, {"url": ollama.url, "kind": "ollama", "max_concurrency": 1})
    body = {"model": OLLAMA_MODEL, "messages": CHAT}
    async with router.client() as client:
        answers = await asyncio.gather(
            *(client.post("/v1/chat/completions", json=body) for _ in range(3))
        )
    assert [a.status_code for a in answers] == [200] * 3  # the others waited their turn
    assert len(ollama.chats()) == 3 and ollama.peak == 1


async def test_a_catalog_model_no_node_holds_is_never_sent_to_an_endpoint_to_fetch(
    router: InProcessRouter, ollama: FakeEndpoint
) -> None:
    await _add(router, {"url": ollama.url, "kind": "ollama"})
    async with router.client() as client:
        answer = await client.post("/v1/chat/completions",
                                   json={"model": "gemma-3-270m", "messages": CHAT})  # fmt: skip
    assert answer.status_code == 503  # no node that could fetch it
    assert ollama.chats() == []


async def test_an_unreachable_endpoint_is_offline_then_serves_once_it_answers(
    router: InProcessRouter,
) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    body = {"model": OLLAMA_MODEL, "messages": CHAT}
    async with router.client() as client:
        answer = await client.post("/api/endpoints", json={"url": url, "kind": "ollama"})
        assert answer.status_code == 201  # added while down: it serves when it comes up
        assert answer.json()["status"] == "offline"
        again = await client.post("/api/endpoints", json={"url": url, "kind": "ollama"})
        assert again.status_code == 409
        # (Nothing else serves it: the catalog model of that name, which no node holds.)
        assert (await client.post("/v1/chat/completions", json=body)).status_code == 503

        fake = FakeEndpoint("ollama").start(port)
        try:
            await router.service.endpoints.poll_all()  # (the router's periodic poll)
            answer = await client.post("/v1/chat/completions", json=body)
            assert answer.status_code == 200 and len(fake.chats()) == 1
        finally:
            fake.stop()


async def test_bad_endpoints_are_refused_with_the_field_named(router: InProcessRouter) -> None:
    async with router.client() as client:
        for body, param in [
            ({"url": "file:///etc/passwd"}, "url"),
            ({"url": "http://10.0.0.1:8000", "kind": "mystery"}, "kind"),
            ({"url": "http://10.0.0.1:8000", "max_concurrency": 0}, "max_concurrency"),
            ({"url": "http://user:pw@10.0.0.1:8000"}, "url"),
            ({"url": "http://10.0.0.1:8000", "key_env": "HOME"}, "key_env"),
            ({"url": "http://10.0.0.1:8000", "extra": 1}, "extra"),
        ]:
            answer = await client.post("/api/endpoints", json=body)
            assert answer.status_code == 400, (body, answer.text)
            assert answer.json()["error"]["param"] == param


async def test_a_node_cannot_heartbeat_or_register_as_an_endpoint(
    router: InProcessRouter, ollama: FakeEndpoint
) -> None:
    added = await _add(router, {"url": ollama.url, "kind": "ollama", "name": "studio"})
    token = router.service.provisioning.node_token_path.read_text().strip()
    auth = {"authorization": f"Bearer {token}"}
    async with router.client() as client:
        beat = await client.post(f"/api/nodes/{added['id']}/heartbeat", json={}, headers=auth)
        assert beat.status_code == 409
        joined = await client.post("/api/nodes", headers=auth, json={
            "name": "studio", "base_url": ollama.url, "version": "x",
            "devices": [{"kind": "cuda", "name": "G", "memory_total": 1,
                         "memory_free": 1}]})  # fmt: skip
        assert joined.status_code == 409
    assert router.service.registry.get(added["id"]).kind == "ollama"


async def test_the_cli_adds_an_endpoint_that_a_running_router_then_serves(
    router: InProcessRouter, vllm: FakeEndpoint
) -> None:
    admin = LocalAdmin(router.service.settings)
    spec = EndpointSpec(url=vllm.url, kind="vllm", key=VLLM_KEY, name="gpu7")
    row = await admin.add_endpoint(spec)
    assert "secret" not in row and VLLM_KEY not in str(row)
    await router.service.fleet.sync()  # (the router's periodic read of the node table)
    await router.service.endpoints.poll_all()  # (and its poll of endpoints)
    async with router.client() as client:
        answer = await client.post("/v1/chat/completions",
                                   json={"model": VLLM_MODEL, "messages": CHAT})  # fmt: skip
    assert answer.status_code == 200 and answer.headers["x-llmlb-node"] == "gpu7"
    await admin.remove_endpoint(row["id"])
    await router.service.fleet.sync()
    assert all(n.name != "gpu7" for n in router.service.registry.all())


@pytest.fixture
async def configured(
    tmp_path: Path, database_url: str, vllm: FakeEndpoint, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[RouterService]:
    monkeypatch.setenv("VLLM_KEY", VLLM_KEY)
    settings = RouterSettings.model_validate({
        "home": tmp_path, "database_url": database_url, "auto_distribute": "none",
        "endpoints": [{"url": vllm.url + "/v1", "kind": "vllm", "key_env": "VLLM_KEY",
                       "models": [VLLM_MODEL], "max_concurrency": 4}],
    })  # fmt: skip
    service = await RouterService.open(settings)
    await service.start()
    yield service
    await service.close()


async def test_endpoints_from_the_settings_file_are_added_at_start_and_follow_the_file(
    configured: RouterService, vllm: FakeEndpoint
) -> None:
    (node,) = [n for n in configured.registry.all() if n.is_endpoint]
    assert node.kind == "vllm" and node.load.models_loaded == ["Qwen2.5-0.5B-Instruct"]
    assert node.load.slots_total == 4
    assert vllm.calls[0].authorization == f"Bearer {VLLM_KEY}"
    # Another router on the database, whose file names no endpoint, leaves it alone.
    other = await RouterService.open(RouterSettings(
        home=configured.settings.home / "other", auto_distribute="none",
        database_url=configured.settings.database_url))  # fmt: skip
    await other.start()
    try:
        assert [n.name for n in other.registry.all() if n.is_endpoint] == [node.name]
    finally:
        await other.close()
    # Its own file no longer names it: its next start takes it out.
    await configured.endpoints.apply_settings([])
    assert not [n for n in configured.registry.all() if n.is_endpoint]


def test_a_key_in_the_settings_file_is_refused_for_key_env() -> None:
    with pytest.raises(ValueError, match="key_env"):
        RouterSettings.model_validate({"endpoints": [{"url": "http://h:1", "key": "secret"}]})


@pytest.fixture
async def affine(tmp_path: Path, database_url: str) -> AsyncIterator[InProcessRouter]:
    settings = RouterSettings(home=tmp_path, auto_distribute="none", database_url=database_url,
                              balancer="prefix_affinity")  # fmt: skip
    service = await RouterService.open(settings)
    await service.start()
    yield InProcessRouter(service, tmp_path)
    await service.close()


async def test_prefix_affinity_keeps_a_conversation_on_one_endpoint(
    affine: InProcessRouter,
) -> None:
    fakes = [FakeEndpoint("ollama").start() for _ in range(2)]
    try:
        for index, fake in enumerate(fakes):
            await _add(affine, {"url": fake.url, "kind": "ollama", "name": f"box-{index}"})
        served: dict[str, set[str]] = {}
        async with affine.client() as client:
            for turn in range(4):
                for talk in ("a", "b", "c"):
                    history = [{"role": "system", "content": f"conversation {talk} " * 40},
                               {"role": "user", "content": f"turn {turn}"}]  # fmt: skip
                    body = {"model": OLLAMA_MODEL, "messages": history}
                    answer = await client.post("/v1/chat/completions", json=body)
                    assert answer.status_code == 200
                    served.setdefault(talk, set()).add(answer.headers["x-llmlb-node"])
        assert all(len(boxes) == 1 for boxes in served.values()), served  # each stays home
        assert len(set().union(*served.values())) == 2  # and new ones spread over both
    finally:
        for fake in fakes:
            fake.stop()
