"""A real router with two real nodes serving the small model, driven like a user would."""

from __future__ import annotations

import re
import signal
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from openai import OpenAI

from tests.support import Process, free_port, start_fleet_node, start_router, wait_until

MODEL = "gemma-3-270m"
FRANCE = [{"role": "user", "content": "What is the capital of France?"}]


@dataclass
class Fleet:
    router: Process
    router_home: Path
    router_port: int
    model_home: Path
    logs: Path
    nodes: dict[str, Process]
    ports: dict[str, int]

    def http(self) -> httpx.Client:
        return httpx.Client(base_url=self.router.url, timeout=120)

    def node_list(self) -> list[dict[str, Any]]:
        with self.http() as http:
            return list(http.get("/api/nodes").json()["data"])

    def status_of(self, name: str) -> str:
        return next((n["status"] for n in self.node_list() if n["name"] == name), "absent")

    def start_node(self, name: str) -> None:
        self.nodes[name] = start_fleet_node(
            self.model_home, self.logs, self.router, self.router_home, name,
            "--parallel", "4", port=self.ports[name],
        )  # fmt: skip
        wait_until(lambda: self.status_of(name) == "ready")

    def restart_router(self) -> None:
        self.router.stop()
        self.router = start_router(
            self.router_home, self.logs, "--allow-cpu-nodes", "--heartbeat-interval", "1",
            port=self.router_port,
        )  # fmt: skip


@pytest.fixture(scope="module")
def fleet(model_home: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    router_home = tmp_path_factory.mktemp("router-home")
    logs = tmp_path_factory.mktemp("fleet-logs")
    port = free_port()
    router = start_router(
        router_home, logs, "--allow-cpu-nodes", "--heartbeat-interval", "1", port=port
    )
    fleet = Fleet(router, router_home, port, model_home, logs, {},
                  {"node-a": free_port(), "node-b": free_port()})  # fmt: skip
    fleet.start_node("node-a")
    fleet.start_node("node-b")
    yield fleet
    for node in fleet.nodes.values():
        node.stop()
    fleet.router.stop()


def client(fleet: Fleet, key: str = "unused") -> OpenAI:
    return OpenAI(base_url=fleet.router.url + "/v1", api_key=key, max_retries=0, timeout=120)


def ask(http: httpx.Client, **extra: Any) -> httpx.Response:
    body = {"model": MODEL, "messages": FRANCE, "max_tokens": 8, "temperature": 0, **extra}
    return http.post("/v1/chat/completions", json=body)


def test_chat_through_the_router_names_the_node(fleet: Fleet) -> None:
    with fleet.http() as http:
        response = ask(http)
    assert response.status_code == 200
    assert "Paris" in response.json()["choices"][0]["message"]["content"]
    assert response.headers["x-llmlb-node"] in {"node-a", "node-b"}
    assert response.headers["x-request-id"]


def test_openai_client_streams_through_the_router(fleet: Fleet) -> None:
    stream = client(fleet).chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "Count from 1 to 10."}],
        max_tokens=16,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
    )
    pieces, usage = [], None
    for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            pieces.append(chunk.choices[0].delta.content)
        usage = chunk.usage or usage
    assert len(pieces) > 5
    assert "1, 2, 3" in "".join(pieces)
    assert usage is not None and usage.completion_tokens == 16


def test_concurrent_requests_spread_over_both_nodes(fleet: Fleet) -> None:
    """Two nodes of 4 slots, 8 requests at once: one node's slots run out, the other serves.

    Whichever node holds the model loaded, the other (on disk at worst) takes what does not
    fit in the first one's free slots.
    """
    with fleet.http() as http, ThreadPoolExecutor(8) as pool:
        responses = list(pool.map(lambda _: ask(http, max_tokens=16), range(8)))
    assert all(r.status_code == 200 for r in responses)
    assert {r.headers["x-llmlb-node"] for r in responses} == {"node-a", "node-b"}


def test_a_node_reports_how_fast_it_computes_prompts(fleet: Fleet) -> None:
    """The balancer weighs the prefill a node's cache saves against a wait for its slots
    (router.balancer.ranking): the node measures its prompt speed on real answers and says
    it in its heartbeats."""
    words = " ".join(f"ferry {n} leaves the harbour at dawn" for n in range(40))
    with fleet.http() as http:
        reply = ask(http, messages=[{"role": "user", "content": words}], max_tokens=1)
        assert reply.status_code == 200
        name = reply.headers["x-llmlb-node"]

        def speed() -> float:
            return float(next(n for n in fleet.node_list()
                              if n["name"] == name)["prompt_tokens_per_second"])  # fmt: skip

        wait_until(lambda: speed() > 0)
    # This CPU computes hundreds of the small model's prompt tokens a second, not millions.
    assert 10 < speed() < 100_000


def test_models_is_the_union_of_the_fleet(fleet: Fleet) -> None:
    models = {m.id: m for m in client(fleet).models.list()}
    assert MODEL in models
    assert len(models[MODEL].model_extra["nodes"]) == 2  # type: ignore[index]


def test_bad_input_is_answered_by_the_router(fleet: Fleet) -> None:
    with fleet.http() as http:
        before = http.get("/api/requests").json()["total"]
        unknown = ask(http, model="no-such-model")
        assert unknown.status_code == 404
        assert "no-such-model" in unknown.json()["error"]["message"]
        malformed = http.post("/v1/chat/completions", content=b"{nope")
        assert malformed.status_code == 400
        assert malformed.json()["error"]["code"] == "invalid_json"
        huge = http.post(
            "/v1/completions", content=b'{"model":"x","prompt":"' + b"a" * (9 << 20) + b'"}'
        )
        assert huge.status_code == 413
        rows = http.get("/api/requests", params={"limit": 5}).json()
    # Only the unknown model reached the proxy (and no node): malformed and oversize bodies
    # were refused before routing.
    assert rows["total"] == before + 1
    assert rows["data"][0]["status"] == 404
    assert rows["data"][0]["node_id"] is None


def test_history_records_each_request(fleet: Fleet) -> None:
    with fleet.http() as http:
        response = ask(http, max_tokens=4)
        request_id = response.headers["x-request-id"]
        rows = http.get("/api/requests", params={"model": MODEL, "limit": 50}).json()["data"]
    row = next(r for r in rows if r["request_id"] == request_id)
    assert row["status"] == 200
    assert row["node_id"] is not None
    assert row["tokens_in"] > 0 and row["tokens_out"] > 0
    assert row["latency_ms"] > 0
    assert row["request_body"] is None  # bodies are kept only with --log-bodies


def test_streams_record_token_counts_even_without_include_usage(fleet: Fleet) -> None:
    with fleet.http() as http:
        with http.stream(
            "POST", "/v1/chat/completions",
            json={"model": MODEL, "messages": FRANCE, "max_tokens": 6, "stream": True},
        ) as response:  # fmt: skip
            lines = [line for line in response.iter_lines() if line]
            request_id = response.headers["x-request-id"]
        assert lines[-1] == "data: [DONE]"
        assert not any('"usage"' in line for line in lines if line.startswith("data:"))
        rows = http.get("/api/requests", params={"limit": 20}).json()["data"]
    row = next(r for r in rows if r["request_id"] == request_id)
    assert row["tokens_out"] is not None and row["tokens_out"] > 0


def test_drained_node_gets_no_new_requests(fleet: Fleet) -> None:
    with fleet.http() as http:
        node_a = next(n for n in fleet.node_list() if n["name"] == "node-a")
        assert http.post(f"/api/nodes/{node_a['id']}/drain").json()["status"] == "draining"
        try:
            with ThreadPoolExecutor(4) as pool:
                responses = list(pool.map(lambda _: ask(http, max_tokens=4), range(6)))
            assert {r.headers["x-llmlb-node"] for r in responses} == {"node-b"}
        finally:
            http.post(f"/api/nodes/{node_a['id']}/undrain")
        assert fleet.status_of("node-a") == "ready"


def test_a_stopping_node_is_draining_at_once_and_finishes_its_answer(fleet: Fleet) -> None:
    """SIGTERM (a pod deleted, a rolling update): the routers hear "draining" as the signal
    arrives, while the answer in flight is still being written, so new requests go elsewhere;
    that answer then ends whole."""
    # 200 tokens: long enough to still be writing when the router hears "draining" (it hears
    # it at the signal), short enough to end within the node's 30 s grace on a busy machine
    # (500 ran past it with both cores taken: the answer was cut, as the grace says it is).
    story = {"model": MODEL, "prompt": "Once upon a time", "max_tokens": 200,
             "ignore_eos": True, "stream": True}  # fmt: skip
    lines: list[str] = []
    started, finished = threading.Event(), threading.Event()
    serving: list[str] = []

    def read() -> None:
        with fleet.http() as http, http.stream("POST", "/v1/completions", json=story) as stream:
            serving.append(stream.headers["x-llmlb-node"])
            for line in stream.iter_lines():
                if line:
                    lines.append(line)
                    started.set()
        finished.set()

    reader = threading.Thread(target=read)
    reader.start()
    assert started.wait(60)
    name = serving[0]
    fleet.nodes[name].proc.send_signal(signal.SIGTERM)
    try:
        wait_until(lambda: fleet.status_of(name) == "draining", timeout=20, step=0.05)
        assert not finished.is_set()  # heard while the answer is still being written
        with fleet.http() as http:
            other = ask(http)
        assert other.status_code == 200 and other.headers["x-llmlb-node"] != name
        reader.join(120)
        assert lines[-1] == "data: [DONE]"
        assert '"finish_reason":"length"' in lines[-2].replace(" ", "")  # all 200 tokens
    finally:
        fleet.nodes[name].stop()
        fleet.start_node(name)


def test_metrics(fleet: Fleet) -> None:
    with fleet.http() as http:
        served_by = ask(http, max_tokens=2).headers["x-llmlb-node"]
        text = http.get("/metrics").text
    assert (
        'llmlb_requests_total{endpoint="chat",model="gemma-3-270m",provider="local",status="200"}'
        in text
    )
    assert 'llmlb_node_state{node="node-a",state="ready"} 1.0' in text
    assert 'llmlb_node_up{node="node-a"} 1.0' in text
    # Latency and time to first byte by provider and node (what a pager's rules need).
    labels = f'endpoint="chat",le="+Inf",node="{served_by}",provider="local"'
    assert f"llmlb_request_duration_seconds_bucket{{{labels}}}" in text
    assert f"llmlb_time_to_first_byte_seconds_bucket{{{labels}}}" in text
    assert "llmlb_queue_depth" in text and "llmlb_queue_capacity 256.0" in text
    assert re.search(r"^llmlb_queue_wait_seconds_count [1-9]", text, re.M)
    # Every ready node holds the bundled model.
    ready = sum(n["status"] == "ready" for n in fleet.node_list())
    assert f'llmlb_model_ready_nodes{{model="gemma-3-270m"}} {ready:.1f}' in text
    assert 'llmlb_tokens_total{direction="out",model="gemma-3-270m",provider="local"}' in text


def test_node_killed_mid_run_then_restarted(fleet: Fleet) -> None:
    """No failed non-streaming request; new requests avoid the dead node; it rejoins."""
    with fleet.http() as http:
        ids_before = {n["name"]: n["id"] for n in fleet.node_list()}
        with ThreadPoolExecutor(6) as pool:
            futures = [pool.submit(ask, http, max_tokens=24) for _ in range(6)]
            wait_until(lambda: any(  # node-b has some of them in flight
                n["name"] == "node-b" and n["router_in_flight"] for n in fleet.node_list()
            ), 10)  # fmt: skip
            fleet.nodes["node-b"].stop(signal.SIGKILL)
            results = [f.result() for f in futures]
        assert [r.status_code for r in results] == [200] * 6
        # Right away (well within one heartbeat), new requests go to the live node only.
        after = [ask(http, max_tokens=2) for _ in range(3)]
        assert {r.headers["x-llmlb-node"] for r in after} == {"node-a"}
        wait_until(lambda: fleet.status_of("node-b") == "offline", timeout=10)

        fleet.start_node("node-b")  # same name and port: same id
        assert {n["name"]: n["id"] for n in fleet.node_list()} == ids_before


def test_router_restart_keeps_keys_and_history_and_nodes_rejoin(fleet: Fleet) -> None:
    with fleet.http() as http:
        created = http.post("/api/keys", json={"name": "survivor", "scopes": ["api"]}).json()
        ask(http, max_tokens=2, user="before-restart")
        total_before = http.get("/api/requests").json()["total"]
    fleet.restart_router()
    wait_until(lambda: all(fleet.status_of(n) == "ready" for n in ("node-a", "node-b")), 30)
    with fleet.http() as http:
        keys = http.get("/api/keys").json()["data"]
        assert created["id"] in {k["id"] for k in keys}
        assert http.get("/api/requests").json()["total"] >= total_before
        response = ask(http, max_tokens=4)
        assert response.status_code == 401  # an api key exists now: loopback is not enough
        authed = http.post(
            "/v1/chat/completions",
            json={"model": MODEL, "messages": FRANCE, "max_tokens": 8, "temperature": 0},
            headers={"authorization": f"Bearer {created['secret']}"},
        )
        assert authed.status_code == 200
        http.delete(f"/api/keys/{created['id']}")


def test_history_has_the_token_counts_of_a_stream_without_include_usage(fleet: Fleet) -> None:
    """The router reads them from the node's ``: usage`` SSE comment (README, architecture)."""
    body = {"model": MODEL, "messages": FRANCE, "max_tokens": 6, "stream": True}
    with fleet.http() as http:
        with http.stream("POST", "/v1/chat/completions", json=body) as response:
            request_id = response.headers["x-request-id"]
            text = "".join(response.iter_text())
        assert text.endswith("data: [DONE]\n\n")
        rows = http.get("/api/requests", params={"model": MODEL, "limit": 50}).json()["data"]
    row = next(r for r in rows if r["request_id"] == request_id)
    assert 1 <= row["tokens_out"] <= 6
    assert row["tokens_in"] and row["tokens_in"] > 0  # only the usage comment has this


def test_a_model_asked_for_by_its_ollama_name_reaches_the_same_engine(fleet: Fleet) -> None:
    openai = client(fleet)
    for name in ("gemma3:270m", "gemma-3-270m"):
        reply = openai.chat.completions.create(
            model=name,
            messages=FRANCE,  # type: ignore[arg-type]
            max_tokens=8,
            temperature=0,
        )
        assert "Paris" in (reply.choices[0].message.content or "")
        assert reply.model == MODEL  # the canonical name answers
    listed = {m.id: m for m in openai.models.list()}
    assert "gemma3:270m" in (listed[MODEL].model_extra or {})["aliases"]
    assert "gemma3:270m" not in listed  # one row per model, its aliases beside it
    with fleet.http() as http:
        unknown = ask(http, model="gemma3:9000b")
        assert unknown.status_code == 404
        assert "gemma3:9000b" in unknown.json()["error"]["message"]
        assert ask(http, model="../../etc:passwd").status_code in (400, 404)
