"""Ollama's API on the router, against a real node with the real small model, on the wire:
NDJSON streams by default with Ollama's fields, whole answers with ``stream: false``, raw
prompts, structured output, embeddings, the listings, pull and delete over the fleet's store
(from a loopback hub), Ollama's port, and errors in Ollama's shape. (The ``ollama`` library,
LangChain's ``ChatOllama`` and ollama-js run unmodified in ``test_client_frameworks``.)"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from llmlb.models.smallmodel import SMALL_MODEL_NAME
from tests.fakehub import FakeHub
from tests.support import Process, own_model_home, start_fleet_node, start_router, wait_until
from tests.vision import write_tiny_vision

QUESTION = "What is the capital of France?"
TIMINGS = ("total_duration", "load_duration", "prompt_eval_count", "prompt_eval_duration",
           "eval_count", "eval_duration")  # fmt: skip
TINY_REPO = "test/Tiny-GGUF"


@pytest.fixture(scope="module")
def hub(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FakeHub]:
    model, _ = write_tiny_vision(tmp_path_factory.mktemp("tiny"))  # (its text model alone)
    hub = FakeHub().start()
    hub.add(TINY_REPO, "Tiny-F32.gguf", model)
    yield hub
    hub.stop()


@pytest.fixture(scope="module")
def router(
    model_home: Path, tmp_path_factory: pytest.TempPathFactory, hub: FakeHub
) -> Iterator[Process]:
    home = tmp_path_factory.mktemp("ollama-api")
    env = {"LLMLB_AUTO_DISTRIBUTE": "none", "HF_ENDPOINT": hub.url}
    process = start_router(home, home, "--allow-cpu-nodes", "--heartbeat-interval", "1",
                           "--ollama-port", "0", env=env)  # fmt: skip
    node_home = own_model_home(model_home, home / "node")  # (pull lands models in its store)
    node = start_fleet_node(node_home, home, process, home, "ollama-node", "--parallel", "2",
                            env={"HF_ENDPOINT": hub.url})  # fmt: skip
    with process.client() as http:

        def ready() -> bool:
            return any(n["status"] == "ready" for n in http.get("/api/nodes").json()["data"])

        wait_until(ready, timeout=60)
    yield process
    node.stop()
    process.stop()


def node_row(http: httpx.Client) -> dict[str, Any]:
    rows: list[dict[str, Any]] = http.get("/api/nodes").json()["data"]
    return next(row for row in rows if row["name"] == "ollama-node")


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
            "options": {"num_predict": 2, "num_thread": 2}})  # fmt: skip
        assert ignored.status_code == 200
        assert ignored.headers["x-llmlb-ignored-fields"] == "keep_alive,options.num_thread"


def test_raw_prompts_skip_the_template(router: Process) -> None:
    with router.client() as http:
        asked = {"model": SMALL_MODEL_NAME, "prompt": "The capital of France is",
                 "stream": False, "options": {"num_predict": 4, "temperature": 0}}  # fmt: skip
        templated = http.post("/api/generate", json=asked).json()
        raw = http.post("/api/generate", json={**asked, "raw": True})
        assert raw.status_code == 200, raw.text
        # The prompt as written: its own few tokens, not the chat template's turn markers.
        assert 0 < raw.json()["prompt_eval_count"] < templated["prompt_eval_count"]
        assert raw.json()["eval_count"] > 0 and raw.json()["done"] is True
        with http.stream("POST", "/api/generate", json={**asked, "raw": True,
                                                        "stream": True}) as streamed:  # fmt: skip
            events = [orjson.loads(line) for line in streamed.iter_lines() if line]
        assert events[-1]["done"] is True and events[-1]["prompt_eval_count"] == raw.json()[
            "prompt_eval_count"]  # fmt: skip
        assert "".join(e["response"] for e in events) == raw.json()["response"]  # temperature 0
        schema = {"type": "object", "properties": {"city": {"type": "string", "maxLength": 20}},
                  "required": ["city"]}  # fmt: skip
        constrained = {**asked, "raw": True, "format": schema, "options": {"num_predict": 40}}
        shaped = http.post("/api/generate", json=constrained).json()
        # Constrained by the schema (the prompt alone goes on " Paris"); the small base model
        # pads JSON with whitespace the grammar allows, so it may not finish in 40 tokens.
        assert shaped["response"].lstrip().startswith("{"), shaped
        if shaped["done_reason"] == "stop":
            assert isinstance(orjson.loads(shaped["response"])["city"], str)


def test_num_ctx_is_answered_with_the_nodes_context(router: Process) -> None:
    with router.client() as http:
        context = node_row(http)["ctx_size"]
        asked = {"model": SMALL_MODEL_NAME, "prompt": "Hi", "stream": False,
                 "options": {"num_predict": 2, "num_ctx": 1_000_000}}  # fmt: skip
        answer = http.post("/api/generate", json=asked)
        assert answer.status_code == 200, answer.text
        # As Ollama clamps a num_ctx past the model's, the request ran with the node's.
        assert context > 0 and answer.headers["x-llmlb-context-length"] == str(context)
        assert "x-llmlb-ignored-fields" not in answer.headers
        bad = http.post("/api/generate", json={**asked, "options": {"num_ctx": "lots"}})
        assert bad.status_code == 400 and "options.num_ctx" in bad.json()["error"]
        fim = http.post("/api/generate", json={**asked, "suffix": "return x"})
        assert fim.status_code == 400 and "does not support insert" in fim.json()["error"]


def test_an_abandoned_stream_frees_the_nodes_slot(router: Process) -> None:
    with router.client() as http:
        body = {"model": SMALL_MODEL_NAME, "prompt": "Write a very long story about a dragon.",
                "options": {"num_predict": 2000, "temperature": 1.0, "seed": 7}}  # fmt: skip
        with http.stream("POST", "/api/generate", json=body) as streamed:
            request_id = streamed.headers["x-request-id"]
            for _ in zip(range(3), streamed.iter_lines(), strict=False):
                pass  # three pieces, then the client goes
        wait_until(lambda: node_row(http)["router_in_flight"] == 0, timeout=10)
        # The node stops generating (its heartbeat says so) long before 2,000 tokens.
        wait_until(lambda: node_row(http)["active_requests"] == 0, timeout=10)

        def row() -> dict[str, Any] | None:
            rows = http.get("/api/requests", params={"model": SMALL_MODEL_NAME}).json()["data"]
            return next((r for r in rows if r["request_id"] == request_id), None)

        wait_until(lambda: row() is not None, timeout=10)
        recorded = row()
        assert recorded is not None and recorded["status"] == 499  # the client left
        assert recorded["tokens_out"] < 2000


def test_ollamas_port_serves_the_same_api(router: Process) -> None:
    """``--ollama-port``: a client set up for an Ollama server needs no change."""
    announced = next(line for line in router.announced if "Ollama's API also on" in line)
    url = announced.rsplit(" ", 1)[1]
    assert url != router.url
    with httpx.Client(base_url=url, timeout=120) as http:
        assert http.get("/").text == "Ollama is running"
        answer = http.post("/api/chat", json={
            "model": SMALL_MODEL_NAME, "stream": False, "options": {"num_predict": 4},
            "messages": [{"role": "user", "content": QUESTION}]})  # fmt: skip
        assert answer.status_code == 200 and answer.json()["done"] is True


def test_pull_and_delete_over_the_fleets_store(router: Process, hub: FakeHub) -> None:
    reference = f"hf.co/{TINY_REPO}"
    with router.client() as http:
        # Ollama's pull of a Hugging Face reference: registered, fetched into the router's
        # store, distributed to a node, Ollama's progress stream all along.
        with http.stream("POST", "/api/pull", json={"model": reference}) as pulling:
            assert pulling.status_code == 200
            assert pulling.headers["content-type"] == "application/x-ndjson"
            events = [orjson.loads(line) for line in pulling.iter_lines() if line]
        statuses = [e["status"] for e in events]
        assert statuses[0] == "pulling manifest" and statuses[-1] == "success", events
        assert "verifying sha256 digest" in statuses and "writing manifest" in statuses
        hub_file = hub.files[f"{TINY_REPO}/Tiny-F32.gguf"]
        pulled = [e for e in events if e["status"] == f"pulling {hub_file.sha256[:12]}"]
        assert pulled and pulled[-1]["total"] == len(hub_file.data)
        assert pulled[-1]["completed"] == len(hub_file.data)
        assert pulled[-1]["digest"] == f"sha256:{hub_file.sha256}"
        assert any(s == "pulling to node ollama-node" for s in statuses), statuses
        (name,) = [m["name"] for m in http.get("/api/models/registered").json()["data"]]
        assert f"{name}:latest" in [m["name"] for m in http.get("/api/tags").json()["models"]]
        wait_until(lambda: name in node_row(http)["models_on_disk"], timeout=30)
        chat = http.post("/api/chat", json={
            "model": reference, "stream": False, "options": {"num_predict": 2},
            "messages": [{"role": "user", "content": "hi"}]})  # fmt: skip
        assert chat.status_code == 200, chat.text
        assert chat.headers["x-llmlb-node"] == "ollama-node"
        for same in (name, TINY_REPO):  # (ORG/REPO is the same reference as hf.co/ORG/REPO)
            again = http.post("/api/pull", json={"model": same, "stream": False})
            assert again.json() == {"status": "success"}, again.text  # held: nothing to fetch

        gone = http.request("DELETE", "/api/delete", json={"model": reference})
        assert gone.status_code == 200 and gone.content == b""
        assert f"{name}:latest" not in [m["name"] for m in http.get("/api/tags").json()["models"]]
        wait_until(lambda: name not in node_row(http)["models_on_disk"], timeout=30)
        missing = http.request("DELETE", "/api/delete", json={"model": name})
        assert missing.status_code == 404
        assert missing.json() == {"error": f"model '{name}' not found"}
        unknown = http.post("/api/pull", json={"model": "no-such-model"})
        assert unknown.status_code == 404
        assert unknown.json() == {"error": "pull model manifest: file does not exist"}


def test_pull_and_delete_are_for_admins(router: Process) -> None:
    with router.client() as http:
        made = http.post("/api/keys", json={"name": "ollama client", "scopes": ["api"]})
        assert made.status_code == 201, made.text
        key = {"authorization": f"Bearer {made.json()['secret']}"}
        try:
            refused = http.post("/api/pull", json={"model": SMALL_MODEL_NAME}, headers=key)
            assert refused.status_code == 403 and set(refused.json()) == {"error"}
            refused = http.request("DELETE", "/api/delete", json={"model": SMALL_MODEL_NAME},
                                   headers=key)  # fmt: skip
            assert refused.status_code == 403 and set(refused.json()) == {"error"}
            # The client's own routes take the key.
            assert http.get("/api/tags", headers=key).status_code == 200
        finally:  # (the api scope open to loopback again, for the module's other tests)
            http.delete(f"/api/keys/{made.json()['id']}")


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


def test_images_to_a_model_that_cannot_see_are_refused_naming_why(router: Process) -> None:
    import base64

    from tests.vision import tiny_png

    image = base64.b64encode(tiny_png()).decode()
    with router.client() as http:
        for path, body in (
            ("/api/chat", {"messages": [{"role": "user", "content": "What is this?",
                                         "images": [image]}]}),
            ("/api/generate", {"prompt": "What is this?", "images": [image]}),
        ):  # fmt: skip
            answer = http.post(path, json={"model": SMALL_MODEL_NAME, "stream": False, **body})
            assert answer.status_code == 400, answer.text
            assert "does not take images" in answer.json()["error"]
