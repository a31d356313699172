"""A vision model end to end: registered from a (loopback) hub repository that holds a model
and its projector, distributed to a real node with both files verified, and answering
images given as OpenAI's image_url parts, Anthropic's image blocks and the Responses API's
input_image, each image costing the projector's tokens. Images by URL on a private address
are refused; text models still refuse images."""

from __future__ import annotations

import base64
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from llmlb.models.store import ModelStore
from tests.fakehub import FakeHub
from tests.support import Process, ThreadServer, start_fleet_node, start_router, wait_until
from tests.vision import IMAGE_TOKENS, tiny_png, write_tiny_vision

PNG = base64.b64encode(tiny_png()).decode()
DATA_URL = f"data:image/png;base64,{PNG}"
QUESTION = "What is in this picture?"


@dataclass
class Seeing:
    router: Process
    node: Process
    node_home: Path
    hub: FakeHub
    model: str

    def http(self) -> httpx.Client:
        return self.router.client()


@pytest.fixture(scope="module")
def seeing(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Seeing]:
    model, projector = write_tiny_vision(tmp_path_factory.mktemp("vision"))
    hub = FakeHub().start()
    hub.add("test/TinyVision-GGUF", "TinyVision-F32.gguf", model)
    hub.add("test/TinyVision-GGUF", "mmproj-TinyVision-F16.gguf", projector)
    logs = tmp_path_factory.mktemp("vision-logs")
    router_home = tmp_path_factory.mktemp("vision-router")
    env = {"HF_ENDPOINT": hub.url, "LLMLB_AUTO_DISTRIBUTE": "none"}
    router = start_router(router_home, logs, "--allow-cpu-nodes", "--heartbeat-interval", "1",
                          env=env)  # fmt: skip
    node_home = tmp_path_factory.mktemp("vision-node")
    node = start_fleet_node(node_home, logs, router, router_home, "eyes", "--parallel", "1",
                            env={"HF_ENDPOINT": hub.url})  # fmt: skip
    try:
        with router.client() as http:
            made = http.post("/api/models/register", json={"model": "hf.co/test/TinyVision-GGUF"})
            assert made.status_code == 201, made.text
            entry = made.json()
            wait_until(lambda: len(http.get("/api/nodes").json()["data"]) == 1)
            answer = http.post("/api/models/distribute",
                               json={"model": entry["name"], "target": "all"})  # fmt: skip
            assert answer.status_code == 202, answer.text
            (task,) = answer.json()["task_ids"]
            wait_until(lambda: http.get(f"/api/tasks/{task}").json()["state"] == "completed",
                       timeout=60)  # fmt: skip
        yield Seeing(router, node, node_home, hub, entry["name"])
    finally:
        node.stop()
        router.stop()
        hub.stop()


def chat(http: httpx.Client, model: str, content: Any) -> httpx.Response:
    return http.post("/v1/chat/completions", json={
        "model": model, "max_tokens": 2, "temperature": 0,
        "messages": [{"role": "user", "content": content}]})  # fmt: skip


def test_the_projector_is_registered_distributed_and_verified_with_its_model(
    seeing: Seeing,
) -> None:
    with seeing.http() as http:
        entry = http.get("/api/models/registered").json()["data"][0]
    assert "vision" in entry["capabilities"]
    assert entry["mmproj"]["file"] == "mmproj-TinyVision-F16.gguf"
    hub_file = seeing.hub.files["test/TinyVision-GGUF/mmproj-TinyVision-F16.gguf"]
    assert entry["mmproj"]["sha256"] == hub_file.sha256
    stored = seeing.node_home / "models" / seeing.model / "mmproj.gguf"
    assert stored.read_bytes() == hub_file.data


def test_an_image_reaches_the_engine_through_every_dialect(seeing: Seeing) -> None:
    with seeing.http() as http:
        text = chat(http, seeing.model, [{"type": "text", "text": QUESTION}])
        assert text.status_code == 200, text.text
        plain = text.json()["usage"]["prompt_tokens"]
        image = {"type": "image_url", "image_url": {"url": DATA_URL}}
        seen = chat(http, seeing.model, [{"type": "text", "text": QUESTION}, image])
        assert seen.status_code == 200, seen.text
        assert seen.json()["usage"]["prompt_tokens"] == plain + IMAGE_TOKENS
        two = chat(http, seeing.model, [image, {"type": "text", "text": QUESTION}, image])
        assert two.json()["usage"]["prompt_tokens"] == plain + 2 * IMAGE_TOKENS

        anthropic = http.post("/v1/messages", headers={"anthropic-version": "2023-06-01"}, json={
            "model": seeing.model, "max_tokens": 2, "messages": [{"role": "user", "content": [
                {"type": "image", "source": {"type": "base64", "media_type": "image/png",
                                             "data": PNG}},
                {"type": "text", "text": QUESTION}]}]})  # fmt: skip
        assert anthropic.status_code == 200, anthropic.text
        assert anthropic.json()["usage"]["input_tokens"] >= plain + IMAGE_TOKENS

        responses = http.post("/v1/responses", json={
            "model": seeing.model, "max_output_tokens": 2, "input": [{"role": "user", "content": [
                {"type": "input_text", "text": QUESTION},
                {"type": "input_image", "image_url": DATA_URL}]}]})  # fmt: skip
        assert responses.status_code == 200, responses.text
        assert responses.json()["usage"]["input_tokens"] >= plain + IMAGE_TOKENS


def test_a_vision_model_added_to_a_nodes_store_by_hand_takes_images(
    seeing: Seeing, tmp_path: Path
) -> None:
    model, projector = write_tiny_vision(tmp_path)
    store = ModelStore(seeing.node_home / "models")
    store.add("hand-eyes", model, link=False)
    store.add_projector("hand-eyes", projector)

    def reported() -> bool:  # (the node's next heartbeat says it sees)
        with seeing.http() as http:
            return any(
                "hand-eyes" in n["models_seeing"] for n in http.get("/api/nodes").json()["data"]
            )

    wait_until(reported)
    with seeing.http() as http:
        image = {"type": "image_url", "image_url": {"url": DATA_URL}}
        answer = chat(http, "hand-eyes", [image, {"type": "text", "text": QUESTION}])
        assert answer.status_code == 200, answer.text


def test_images_by_url_on_private_addresses_and_to_text_models_are_refused(
    seeing: Seeing,
) -> None:
    from starlette.applications import Starlette
    from starlette.responses import Response
    from starlette.routing import Route

    async def picture(request: Any) -> Response:
        return Response(tiny_png(), media_type="image/png")

    local = ThreadServer(Starlette(routes=[Route("/cat.png", picture)]))
    try:
        with seeing.http() as http:
            image = {"type": "image_url", "image_url": {"url": f"{local.url}/cat.png"}}
            refused = chat(http, seeing.model, [{"type": "text", "text": QUESTION}, image])
            assert refused.status_code == 400
            assert refused.json()["error"]["code"] == "image_address_refused"
            # A model that cannot see: refused at the router, naming the capability.
            text_only = chat(http, "gemma-3-270m", [{"type": "image_url",
                                                     "image_url": {"url": DATA_URL}}])  # fmt: skip
            assert text_only.status_code == 400
            assert text_only.json()["error"]["code"] == "model_lacks_capability"
    finally:
        local.stop()
