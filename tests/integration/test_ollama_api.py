"""Ollama's API on the router, against a real node with the real small model, on the wire:
NDJSON streams by default with Ollama's fields, whole answers with ``stream: false``,
structured output, embeddings, the listings, and errors in Ollama's shape. (The ``ollama``
library and LangChain's ``ChatOllama`` run unmodified in ``test_client_frameworks``.)"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from llmlb.models.smallmodel import SMALL_MODEL_NAME
from tests.support import Process, start_fleet_node, start_router, wait_until

QUESTION = "What is the capital of France?"
TIMINGS = ("total_duration", "load_duration", "prompt_eval_count", "prompt_eval_duration",
           "eval_count", "eval_duration")  # fmt: skip


@pytest.fixture(scope="module")
def router(model_home: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Process]:
    home = tmp_path_factory.mktemp("ollama-api")
    process = start_router(home, home, "--allow-cpu-nodes", "--heartbeat-interval", "1",
                           env={"LLMLB_AUTO_DISTRIBUTE": "none"})  # fmt: skip
    node = start_fleet_node(model_home, home, process, home, "ollama-node", "--parallel", "2")
    with process.client() as http:

        def ready() -> bool:
            return any(n["status"] == "ready" for n in http.get("/api/nodes").json()["data"])

        wait_until(ready, timeout=60)
    yield process
    node.stop()
    process.stop()


def lines(response: httpx.Response) -> list[dict[str, Any]]:
    return [orjson.loads(line) for line in response.text.splitlines() if line]


def test_chat_streams_ndjson_by_default_with_ollamas_fields(router: Process) -> None:
    with router.client() as http:
        answer = http.post("/api/chat", json={
            "model": f"{SMALL_MODEL_NAME}:latest", "options": {"num_predict": 8, "temperature": 0},
            "messages": [{"role": "user", "content": QUESTION}]})  # fmt: skip
    assert answer.status_code == 200, answer.text
    assert answer.headers["content-type"] == "application/x-ndjson"
    events = lines(answer)
    assert all(e["done"] is False for e in events[:-1]) and events[-1]["done"] is True
    text = "".join(e["message"]["content"] for e in events)
    assert "Paris" in text
    last = events[-1]
    assert last["done_reason"] in ("stop", "length") and last["eval_count"] > 0
    assert all(isinstance(last[k], int) for k in TIMINGS) and last["total_duration"] > 0
    assert last["created_at"].endswith("Z") and last["model"] == f"{SMALL_MODEL_NAME}:latest"


def test_generate_whole_and_with_a_system_prompt(router: Process) -> None:
    with router.client() as http:
        whole = http.post("/api/generate", json={
            "model": SMALL_MODEL_NAME, "prompt": QUESTION, "stream": False,
            "options": {"num_predict": 8, "temperature": 0, "seed": 1}})  # fmt: skip
        assert whole.status_code == 200, whole.text
        reply = whole.json()
        assert "Paris" in reply["response"] and reply["done"] is True
        assert reply["prompt_eval_count"] > 0 and reply["eval_count"] > 0
        loading = http.post("/api/generate", json={"model": SMALL_MODEL_NAME})
        assert loading.json()["done_reason"] == "load"  # Ollama's way to load a model
        ignored = http.post("/api/generate", json={
            "model": SMALL_MODEL_NAME, "prompt": "Hi", "stream": False, "keep_alive": "5m",
            "options": {"num_predict": 2, "num_ctx": 2048}})  # fmt: skip
        assert ignored.status_code == 200
        assert ignored.headers["x-llmlb-ignored-fields"] == "keep_alive,options.num_ctx"


def test_format_json_schema_is_structured_output(router: Process) -> None:
    schema = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}
    with router.client() as http:
        answer = http.post("/api/chat", json={
            "model": SMALL_MODEL_NAME, "stream": False, "format": schema,
            "options": {"num_predict": 60, "temperature": 0},
            "messages": [{"role": "user", "content": QUESTION}]})  # fmt: skip
    assert answer.status_code == 200, answer.text
    assert isinstance(orjson.loads(answer.json()["message"]["content"])["city"], str)


def test_embed_and_the_older_embeddings(router: Process) -> None:
    with router.client() as http:
        embedded = http.post("/api/embed", json={"model": SMALL_MODEL_NAME,
                                                 "input": ["Paris", "Berlin"]})  # fmt: skip
        assert embedded.status_code == 200, embedded.text
        vectors = embedded.json()["embeddings"]
        assert len(vectors) == 2 and len(vectors[0]) == 640
        older = http.post("/api/embeddings", json={"model": SMALL_MODEL_NAME, "prompt": "Paris"})
        assert older.status_code == 200 and len(older.json()["embedding"]) == 640


def test_the_listings_ollamas_clients_read(router: Process) -> None:
    with router.client() as http:
        assert http.get("/").text == "Ollama is running"
        assert http.head("/").status_code == 200
        browser = http.get("/", headers={"accept": "text/html"}, follow_redirects=False)
        assert browser.status_code == 307 and browser.headers["location"] == "/dashboard"
        assert http.get("/api/version").json()["version"].count(".") == 2
        names = [m["name"] for m in http.get("/api/tags").json()["models"]]
        assert f"{SMALL_MODEL_NAME}:latest" in names
        shown = http.post("/api/show", json={"model": SMALL_MODEL_NAME}).json()
        assert "completion" in shown["capabilities"] and shown["details"]["format"] == "gguf"
        loaded = http.get("/api/ps").json()["models"]
        assert all(m["name"].endswith(":latest") for m in loaded)


@pytest.mark.parametrize(
    ("path", "body", "status"),
    [("/api/chat", {"model": "no-such-model", "messages": []}, 404),
     ("/api/chat", {"model": SMALL_MODEL_NAME, "messages": "hi"}, 400),
     ("/api/chat", {"model": SMALL_MODEL_NAME, "messages": [], "format": 3}, 400),
     ("/api/generate", {"model": SMALL_MODEL_NAME, "prompt": 5}, 400),
     ("/api/embed", {"model": SMALL_MODEL_NAME, "input": [1, 2]}, 400),
     ("/api/show", {"model": "no-such-model"}, 404),
     ("/api/chat", {"model": SMALL_MODEL_NAME, "messages": [{"role": "user", "content": "x",
                                                            "images": ["!!notbase64"]}]}, 400)],
)  # fmt: skip
def test_mistakes_are_4xx_in_ollamas_shape(
    router: Process, path: str, body: dict[str, Any], status: int
) -> None:
    with router.client() as http:
        answer = http.post(path, json=body)
    assert answer.status_code == status, answer.text
    assert isinstance(answer.json()["error"], str) and set(answer.json()) == {"error"}
