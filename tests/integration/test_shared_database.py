"""Two routers on one PostgreSQL database serve as one: a real node joins both
(``--router A,B``), keys made on one work on the other, and when one is killed with SIGKILL
the other keeps serving, has everything the first one committed, and takes over its
distribution task."""

from __future__ import annotations

import json
import signal
from pathlib import Path

import httpx

from tests.fakehub import FakeHub, hub_entry
from tests.postgres import PostgresServer
from tests.support import (
    Process,
    ask_capital_of_france,
    node_token,
    own_model_home,
    start_router,
    wait_until,
    write_tiny_gguf,
)

ROUTER_ARGS = ("--allow-cpu-nodes", "--heartbeat-interval", "1")


def nodes_seen(router: Process, auth: dict[str, str] | None = None) -> list[dict[str, object]]:
    with httpx.Client(base_url=router.url, headers=auth or {}, timeout=10) as http:
        return list(http.get("/api/nodes").json()["data"])


def test_two_routers_on_one_database_serve_as_one(
    postgres: PostgresServer, model_home: Path, tmp_path: Path
) -> None:
    hub = FakeHub().start()
    data = write_tiny_gguf(tmp_path / "held.gguf", 8, seed=7).read_bytes()
    hub.add("test/held", "model.gguf", data, hold_at=0.5)
    env = {"LLMLB_DATABASE_URL": postgres.new_database(), "LLMLB_AUTO_DISTRIBUTE": "none",
           "LLMLB_TASK_LEASE_SECONDS": "2"}  # fmt: skip
    homes = [tmp_path / "router-a", tmp_path / "router-b"]
    for home in homes:
        home.mkdir()
        catalog = {"models": [hub_entry("tiny-held", "test/held", data)]}
        (home / "supported_models.json").write_text(json.dumps(catalog))
    first = start_router(homes[0], tmp_path, *ROUTER_ARGS, env=env, name="router-a")
    second = start_router(homes[1], tmp_path, *ROUTER_ARGS, env=env, name="router-b")
    node = Process(
        ["node", "--host", "127.0.0.1", "--port", "0", "--allow-cpu", "--parallel", "2",
         "--router", f"{first.url},{second.url}", "--name", "shared", "--origin-first"],
        # (its own store: the model distributed below must not join the session's)
        own_model_home(model_home, tmp_path / "node-home"), tmp_path / "shared-node.log",
        # A key of router A's, valid on both; the hub for the node's own downloads.
        {"LLMLB_NODE_TOKEN": node_token(homes[0]), "HF_ENDPOINT": hub.url},
    )  # fmt: skip
    try:
        for router in (first, second):

            def ready(router: Process = router) -> bool:
                return [n["status"] for n in nodes_seen(router)] == ["ready"]

            wait_until(ready, 30)
        # One node, one row: both routers know it by the same id.
        assert nodes_seen(first)[0]["id"] == nodes_seen(second)[0]["id"]
        with httpx.Client(base_url=second.url, timeout=120) as http:
            ask_capital_of_france(http, "gemma-3-270m")  # router B calls the node itself

        with httpx.Client(base_url=first.url, timeout=10) as admin:
            made = admin.post("/api/keys", json={"name": "client", "scopes": ["api", "admin"]})
            assert made.status_code == 201, made.text
            key = {"authorization": f"Bearer {made.json()['secret']}"}
        with httpx.Client(base_url=second.url, timeout=120) as http:
            # Router B sees the key within its refresh: keyless callers are refused, the key
            # works.
            wait_until(lambda: http.get("/v1/models").status_code == 401, 15)
            http.headers.update(key)
            ask_capital_of_france(http, "gemma-3-270m")

        with httpx.Client(base_url=first.url, headers=key, timeout=30) as http:
            node_id = nodes_seen(first, key)[0]["id"]
            sent = http.post("/api/models/distribute", json={
                "model": "tiny-held", "target": "specific", "node_ids": [node_id]})  # fmt: skip
            task = sent.json()["task_ids"][0]
            wait_until(lambda: (http.get(f"/api/tasks/{task}").json()["bytes_done"] or 0) > 0, 30)

        first.stop(signal.SIGKILL)  # mid-distribution
        hub.files["test/held/model.gguf"].released.set()
        with httpx.Client(base_url=second.url, headers=key, timeout=120) as http:
            ask_capital_of_france(http, "gemma-3-270m")
            wait_until(lambda: http.get(f"/api/tasks/{task}").json()["state"] == "completed", 60)
            owner = http.get(f"/api/tasks/{task}").json()["owner"]
            assert owner == (homes[1] / "router_id").read_text().strip()  # taken over by B
            history = http.get("/api/requests").json()
        # Both answers through B, and the one before the key, are in the shared history.
        assert history["total"] >= 3
        assert [n["status"] for n in nodes_seen(second, key)] == ["ready"]
    finally:
        node.stop()
        second.stop()
        first.stop()
        hub.stop()
