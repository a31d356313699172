"""Real servers that are not llmlb nodes of the router, as endpoints beside a real node: an
llmlb node run on its own (no router, its own key) and llama.cpp's own server (as xllamacpp
embeds it, with its own key). Requests spread over all three, one stopped is failed over,
and neither key is ever in the router's log or its API."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from llmlb.models.smallmodel import SMALL_MODEL_NAME
from tests.support import (
    Process,
    start_fleet_node,
    start_node,
    start_router,
    wait_until,
)

STANDALONE_KEY = "standalone-node-key-0f3c9a7e5b1d"
LLAMA_SERVER_KEY = "llama-server-key-8e2d4b6a1c9f"


def ask(http: httpx.Client) -> httpx.Response:
    """The suite's question as a text completion: llama.cpp's own server has no chat template
    for the small base model, and the same prompt gets the same answer everywhere."""
    reply = http.post("/v1/completions", json={
        "model": SMALL_MODEL_NAME, "max_tokens": 6, "temperature": 0,
        "prompt": "Q: What is the capital of France?\nA:"})  # fmt: skip
    assert reply.status_code == 200, reply.text
    assert "Paris" in reply.json()["choices"][0]["text"], reply.text
    return reply


@dataclass
class Mixed:
    router: Process
    node: Process
    standalone: Process
    llama_server: Process

    def http(self) -> httpx.Client:
        return self.router.client()

    def status_of(self, name: str) -> str:
        with self.http() as http:
            nodes = http.get("/api/nodes").json()["data"]
        return next((n["status"] for n in nodes if n["name"] == name), "absent")


@pytest.fixture(scope="module")
def mixed(model_home: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mixed]:
    router_home = tmp_path_factory.mktemp("router-home")
    logs = tmp_path_factory.mktemp("endpoint-logs")
    router = start_router(router_home, logs, "--allow-cpu-nodes", "--heartbeat-interval", "1",
                          "--balancer", "round_robin", "--log-level", "debug")  # fmt: skip
    processes = [router]
    try:
        node = start_fleet_node(model_home, logs, router, router_home, "node-a",
                                "--parallel", "2")  # fmt: skip
        processes.append(node)
        standalone = start_node(model_home, logs, "--parallel", "2", name="standalone",
                                env={"LLMLB_NODE_TOKEN": STANDALONE_KEY})  # fmt: skip
        processes.append(standalone)
        model = str(model_home / "models" / SMALL_MODEL_NAME / "model.gguf")
        llama_server = Process([model, SMALL_MODEL_NAME, LLAMA_SERVER_KEY], model_home,
                               logs / "llama-server.log", {},
                               module="tests.llama_server")  # fmt: skip
        processes.append(llama_server)
        mixed = Mixed(router, node, standalone, llama_server)
        wait_until(lambda: mixed.status_of("node-a") == "ready", timeout=60)
        yield mixed
    finally:
        for process in reversed(processes):
            process.stop()


def test_requests_spread_over_a_node_and_two_endpoints_and_fail_over(mixed: Mixed) -> None:
    with mixed.http() as http:
        for url, kind, name, key in [
            (mixed.standalone.url + "/v1", "llmlb", "standalone", STANDALONE_KEY),
            (mixed.llama_server.url, "llama-server", "llama-server", LLAMA_SERVER_KEY),
        ]:
            body = {"url": url, "kind": kind, "name": name, "key": key, "max_concurrency": 2}
            added = http.post("/api/endpoints", json=body)
            assert added.status_code == 201, added.text
            assert added.json()["status"] == "ready"
            assert added.json()["models_loaded"] == [SMALL_MODEL_NAME]

        kinds = {n["name"]: n["kind"] for n in http.get("/api/nodes").json()["data"]}
        assert kinds == {"node-a": "node", "standalone": "llmlb", "llama-server": "llama-server"}

        # Round robin over the three: each answers, with its usage recorded.
        served = []
        for _ in range(6):
            answer = ask(http)
            assert answer.status_code == 200, answer.text
            assert answer.json()["usage"]["completion_tokens"] > 0
            served.append(answer.headers["x-llmlb-node"])
        assert set(served) == {"node-a", "standalone", "llama-server"}
        # Streams from an endpoint pass through as it sends them.
        streamed = http.post("/v1/chat/completions", json={
            "model": SMALL_MODEL_NAME, "max_tokens": 4, "stream": True,
            "messages": [{"role": "user", "content": "Hi"}]})  # fmt: skip
        assert streamed.status_code == 200 and streamed.text.rstrip().endswith("data: [DONE]")

        def recorded_nodes() -> set[str]:  # (history is written in batches)
            rows = http.get("/api/requests", params={"limit": 20}).json()["data"]
            return {r["node_id"] for r in rows if r["status"] == 200}

        wait_until(lambda: len(recorded_nodes()) == 3)  # history names where each went

        # llama.cpp's server stops: its requests go to the others, and it is offline.
        mixed.llama_server.stop(signal.SIGKILL)
        for _ in range(4):
            answer = ask(http)
            assert answer.status_code == 200, answer.text
            assert answer.headers["x-llmlb-node"] in {"node-a", "standalone"}
        wait_until(lambda: mixed.status_of("llama-server") == "offline")

        for path in ("/api/nodes", "/api/endpoints", "/api/requests"):
            text = http.get(path).text
            assert STANDALONE_KEY not in text and LLAMA_SERVER_KEY not in text
    log = mixed.router.log_path.read_text()
    assert "standalone" in log  # (the log is the router's, at debug level)
    assert STANDALONE_KEY not in log and LLAMA_SERVER_KEY not in log


def test_the_cli_adds_lists_and_removes_an_endpoint(mixed: Mixed) -> None:
    def cli(*args: str) -> str:
        done = subprocess.run(
            [sys.executable, "-m", "llmlb", "endpoints", *args, "--router", mixed.router.url],
            capture_output=True, text=True, timeout=60,
            env={**os.environ, "LLMLB_ENDPOINT_KEY": STANDALONE_KEY},
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
        return done.stdout

    added = cli("add", mixed.standalone.url, "--kind", "llmlb", "--name", "by-cli")
    assert "by-cli" in added and SMALL_MODEL_NAME in added and STANDALONE_KEY not in added
    endpoint_id = added.split("added endpoint ")[1].split()[0]
    listed = cli("list", "--json")
    assert "by-cli" in listed and STANDALONE_KEY not in listed
    cli("remove", endpoint_id)
    assert "by-cli" not in cli("list")
