"""Nodes in step with their router: assigned lists, tasks that outlive a node restart, split
GGUFs fetched part by part, and pruning for room.

Real router and node processes on loopback; a fake hub stands in for Hugging Face.
"""

from __future__ import annotations

import hashlib
import json
import signal
import time
from collections.abc import Iterator
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
    llmlb,
    node_token,
    split_gguf,
    start_fleet_node,
    start_node,
    start_router,
    wait_until,
    write_tiny_gguf,
)

GEMMA_SHA = "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818"
QUESTION = [{"role": "user", "content": "What is the capital of France?"}]
MIB = 1 << 20


@dataclass
class SyncFleet:
    router: Process
    router_home: Path
    hub: FakeHub
    logs: Path
    tiny: dict[str, bytes]

    def http(self) -> httpx.Client:
        return httpx.Client(base_url=self.router.url, timeout=60)

    def start_node(self, home: Path, name: str, *extra: str, port: int = 0) -> Process:
        return start_fleet_node(
            home, self.logs, self.router, self.router_home, name, "--ctx-size", "1024",
            "--parallel", "2", *extra, port=port, env={"HF_ENDPOINT": self.hub.url},
        )  # fmt: skip

    def node_id(self, name: str) -> str:
        with self.http() as http:
            nodes = http.get("/api/nodes").json()["data"]
        return str(next(n["id"] for n in nodes if n["name"] == name))

    def node_row(self, name: str) -> dict[str, Any]:
        with self.http() as http:
            return dict(http.get(f"/api/nodes/{self.node_id(name)}").json())

    def distribute(self, model: str, node: str) -> str:
        with self.http() as http:
            answer = http.post(
                "/api/models/distribute",
                json={"model": model, "target": "specific", "node_ids": [self.node_id(node)]},
            )
            assert answer.status_code == 202, answer.text
            return str(answer.json()["task_ids"][0])

    def task(self, task_id: str) -> dict[str, Any]:
        with self.http() as http:
            return dict(http.get(f"/api/tasks/{task_id}").json())


@pytest.fixture(scope="module")
def split_parts(small_model_path: Path, tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """The real small model as a three-part split GGUF, named as its publisher would."""
    return split_gguf(small_model_path, tmp_path_factory.mktemp("split"), "gemma-split", 3)


@pytest.fixture(scope="module")
def fleet(split_parts: list[Path], tmp_path_factory: pytest.TempPathFactory) -> Iterator[SyncFleet]:
    logs = tmp_path_factory.mktemp("sync-logs")
    scratch = tmp_path_factory.mktemp("sync-tiny")
    tiny = {f"s{i}": write_tiny_gguf(scratch / f"s{i}.gguf", 8, seed=20 + i).read_bytes()
            for i in range(4)}  # fmt: skip
    hub = FakeHub().start()
    hub.add("test/restart", "model.gguf", tiny["s0"], hold_at=0.5)
    hub.add("test/new", "model.gguf", tiny["s1"])
    hub.add("test/extra", "model.gguf", tiny["s2"])
    hub.add("test/alone", "model.gguf", tiny["s3"])
    parts = []
    for index, path in enumerate(split_parts, start=1):
        # The middle part's first transfer is cut halfway: it must resume, alone.
        hub.add("test/split", path.name, path, cut_at=0.5 if index == 2 else None)
        data = path.read_bytes()
        parts.append({"file": path.name, "size_bytes": len(data),
                      "sha256": hashlib.sha256(data).hexdigest()})  # fmt: skip
    catalog = [
        hub_entry("tiny-restart", "test/restart", tiny["s0"]),
        hub_entry("tiny-new", "test/new", tiny["s1"]),
        hub_entry("tiny-extra", "test/extra", tiny["s2"]),
        {
            "name": "gemma-split",
            "origin": {"hub": {"repo": "test/split", "file": split_parts[0].name}},
            "parts": parts,
            "chat_template": "qa",
        },
    ]
    router_home = tmp_path_factory.mktemp("sync-router")
    (router_home / "supported_models.json").write_text(json.dumps({"models": catalog}))
    router = start_router(
        router_home, logs, "--allow-cpu-nodes", "--heartbeat-interval", "1",
        env={"HF_ENDPOINT": hub.url, "LLMLB_AUTO_DISTRIBUTE": "none"},
    )  # fmt: skip
    yield SyncFleet(router, router_home, hub, logs, tiny)
    router.stop()
    hub.stop()


def test_a_split_model_arrives_part_by_part_and_serves_as_one(
    fleet: SyncFleet, tmp_path: Path, split_parts: list[Path]
) -> None:
    """The node fetches the parts through the router, which fetches them from the hub; the
    cut part resumes from where it broke, alone; the node loads the parts as one model."""
    home = tmp_path / "split-node"
    node = fleet.start_node(home, "split-node")
    try:
        with fleet.http() as http:
            wait_until(lambda: "split-node" in str(http.get("/api/nodes").json()), 30)
        task = fleet.distribute("gemma-split", "split-node")
        wait_until(lambda: fleet.task(task)["state"] in ("completed", "failed"), 120, 0.5)
        assert fleet.task(task)["state"] == "completed", fleet.task(task)
        folder = home / "models" / "gemma-split"
        for index, path in enumerate(split_parts, start=1):
            stored = folder / f"model-{index:05d}-of-00003.gguf"
            assert stored.read_bytes() == path.read_bytes()
        starts = {i: fleet.hub.range_starts[f"test/split/{p.name}"]
                  for i, p in enumerate(split_parts, start=1)}  # fmt: skip
        assert starts[1] == [0] and starts[3] == [0]
        assert starts[2][0] == 0 and starts[2][-1] > 0  # resumed, not started over
        token = {"authorization": f"Bearer {node_token(fleet.router_home)}"}
        with fleet.http() as http:
            blob = "/v0/models/blob/gemma-split"
            whole = http.get(blob, headers=token)  # one file would be only the first part
            assert whole.status_code == 400 and "?part=N" in whole.json()["error"]["message"]
            for bad in ("0", "4", "\u00b2", "x"):
                assert http.get(blob, params={"part": bad}, headers=token).status_code == 400
            ask_capital_of_france(http, "gemma-split")  # the parts load as one model
            rows = http.get(f"/api/nodes/{fleet.node_id('split-node')}/models").json()
        row = next(r for r in rows["data"] if r["name"] == "gemma-split")
        assert row["parts"] == 3 and row["assigned"] is True and row["state"] == "loaded"
        assert row["size_bytes"] == sum(p.stat().st_size for p in split_parts)
    finally:
        node.stop()


def test_a_node_killed_mid_download_resumes_its_task_after_a_restart(
    fleet: SyncFleet, tmp_path: Path
) -> None:
    home = tmp_path / "restarting"
    node = fleet.start_node(home, "restarting", "--origin-first")
    port = int(node.url.rsplit(":", 1)[1])
    key = "test/restart/model.gguf"
    try:
        with fleet.http() as http:
            wait_until(lambda: "restarting" in str(http.get("/api/nodes").json()), 30)
        task = fleet.distribute("tiny-restart", "restarting")
        wait_until(lambda: (fleet.task(task)["bytes_done"] or 0) > 2 * MIB, 30)
        row = fleet.node_row("restarting")
        assert row["sync"]["state"] == "syncing" and row["sync"]["missing"] == ["tiny-restart"]
        assert row["status"] == "ready"  # fetching a distributed model, it keeps serving
        node.stop(signal.SIGKILL)  # while the hub holds the transfer at half
        partial = home / "models" / "tiny-restart" / "model.gguf.partial"
        assert partial.stat().st_size > 2 * MIB
        fleet.hub.files[key].released.set()
        node = fleet.start_node(home, "restarting", "--origin-first", port=port)
        wait_until(lambda: fleet.task(task)["state"] in ("completed", "failed"), 60, 0.5)
        assert fleet.task(task)["state"] == "completed", fleet.task(task)
        assert fleet.hub.range_starts[key][-1] > 2 * MIB  # the partial was resumed
        stored = home / "models" / "tiny-restart" / "model.gguf"
        assert stored.read_bytes() == fleet.tiny["s0"]
        wait_until(lambda: fleet.node_row("restarting")["sync"]["state"] == "in_sync", 10)
        with fleet.http() as http:
            models = http.get(f"/api/nodes/{fleet.node_id('restarting')}/models").json()["data"]
        row = next(r for r in models if r["name"] == "tiny-restart")
        assert row["assigned"] is True and row["state"] == "on_disk"
        assert row["sha256"] == hashlib.sha256(fleet.tiny["s0"]).hexdigest()
        assert row["installed_at"] > time.time() - 120
    finally:
        node.stop()


def test_prune_makes_room_only_for_an_assigned_model_and_spares_a_busy_one(
    fleet: SyncFleet, tmp_path: Path, small_model_path: Path
) -> None:
    home = tmp_path / "pruning"
    store = ModelStore(home / "models")
    # Copies, as downloads are: a hard link (an import) frees nothing and is never pruned.
    store.add("gemma-busy", small_model_path, link=False, sha256=GEMMA_SHA,
              metadata={"chat_template": "qa"})  # fmt: skip
    old = write_tiny_gguf(tmp_path / "old.gguf", 8, seed=99)
    # Used "later" than everything else: least-recently-used order alone would prune the
    # small model first, so only its being loaded can save it.
    store.add("tiny-old", old, link=False, metadata={"last_used_at": time.time() + 10**6})
    used = sum(f.stat().st_size for m in store.list() for f in m.files)
    limit = used + 4 * MIB  # the 8 MiB newcomers do not fit beside what is there
    node = fleet.start_node(home, "pruning", "--prune", "--store-limit", str(limit))
    token = {"authorization": f"Bearer {node_token(fleet.router_home)}"}
    try:
        with fleet.http() as http:
            wait_until(lambda: "pruning" in str(http.get("/api/nodes").json()), 30)
            reply = http.post(
                "/v1/chat/completions",
                json={"model": "gemma-busy", "messages": QUESTION, "max_tokens": 2},
            )
            assert reply.status_code == 200, reply.text  # loaded now
        with httpx.Client(base_url=node.url, headers=token, timeout=30) as direct:
            # Not assigned: no pruning for it, and a clear refusal with the figures.
            refused = direct.post("/api/pull", json={"model": "tiny-extra"})
            assert refused.status_code == 507, refused.text
            message = refused.json()["error"]["message"]
            assert "no room for 'tiny-extra'" in message and "assigns" in message
        assert store.get("tiny-old") is not None
        task = fleet.distribute("tiny-new", "pruning")
        wait_until(lambda: fleet.task(task)["state"] in ("completed", "failed"), 60, 0.5)
        assert fleet.task(task)["state"] == "completed", fleet.task(task)
        assert store.get("tiny-old") is None  # pruned for the assigned model
        assert store.get("gemma-busy") is not None  # loaded: never pruned
        assert store.get("tiny-new") is not None
        assert "pruned tiny-old" in node.log_path.read_text()
    finally:
        node.stop()


def test_without_prune_a_full_store_fails_the_sync_with_the_reason(
    fleet: SyncFleet, tmp_path: Path
) -> None:
    home = tmp_path / "full"
    node = fleet.start_node(home, "full", "--store-limit", "1MiB")
    try:
        with fleet.http() as http:
            wait_until(lambda: "full" in str(http.get("/api/nodes").json()), 30)
        task = fleet.distribute("tiny-extra", "full")
        wait_until(lambda: fleet.task(task)["state"] == "failed", 30, 0.5)
        assert "no room for 'tiny-extra'" in fleet.task(task)["error"]
        wait_until(lambda: fleet.node_row("full")["sync"]["state"] == "failed", 15)
        sync = fleet.node_row("full")["sync"]
        assert sync["missing"] == ["tiny-extra"] and "--prune" in sync["error"]
        listed = llmlb(
            fleet.router_home, "nodes", "list", "--router", fleet.router.url,
            env={"COLUMNS": "400"},  # one table line per node
        )  # fmt: skip
        assert listed.returncode == 0, listed.stderr
        assert "failed: tiny-extra: no room" in " ".join(listed.stdout.split())
    finally:
        node.stop()


def test_a_standalone_node_fetches_from_the_origin_by_default(
    fleet: SyncFleet, tmp_path: Path
) -> None:
    home = tmp_path / "alone"
    home.mkdir()
    data = fleet.hub.files["test/alone/model.gguf"].data
    catalog = {"models": [hub_entry("tiny-alone", "test/alone", data)]}
    (home / "supported_models.json").write_text(json.dumps(catalog))
    node = start_node(home, tmp_path, name="alone-node", env={"HF_ENDPOINT": fleet.hub.url})
    try:
        with httpx.Client(base_url=node.url, timeout=30) as http:
            assert http.post("/api/pull", json={"model": "tiny-alone"}).status_code == 202
            wait_until(
                lambda: http.get("/api/downloads/tiny-alone").json()["state"] == "completed", 30
            )
        assert (home / "models" / "tiny-alone" / "model.gguf").read_bytes() == data
    finally:
        node.stop()
