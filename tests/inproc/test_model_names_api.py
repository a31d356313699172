"""Ollama-style names through the admin API, and assignment by GPU size at registration."""

from __future__ import annotations

import logging
from typing import Any

import pytest

from tests.inproc.conftest import InProcessRouter

GIB = 1 << 30


def node(name: str, free: int) -> dict[str, Any]:
    return {
        "name": name, "base_url": f"http://10.9.9.{len(name)}:9000", "version": "t",
        "devices": [{"kind": "cuda", "name": "G", "memory_total": free, "memory_free": free}],
    }  # fmt: skip


def node_auth(router: InProcessRouter) -> dict[str, str]:
    token = router.service.provisioning.node_token_path.read_text().strip()
    return {"authorization": f"Bearer {token}"}


@pytest.mark.parametrize(
    ("free", "model"),
    [(80 * GIB, "gpt-oss-120b"), (24 * GIB, "gpt-oss-20b"), (16 * GIB, "gpt-oss-20b"),
     (8 * GIB, "llama-3.1-8b-instruct-q4_k_m"), (6 * GIB, "llama-3.2-3b-instruct-q4_k_m"),
     (4 * GIB, "gemma-3-270m")],
)  # fmt: skip
async def test_a_new_gpu_node_is_assigned_the_largest_model_its_memory_holds(
    router: InProcessRouter, caplog: pytest.LogCaptureFixture, free: int, model: str
) -> None:
    router.service.settings.auto_distribute = "recommended"
    caplog.set_level(logging.INFO, logger="llmlb")
    async with router.client() as client:
        joined = await client.post(
            "/api/nodes", json=node("gpu-3", free), headers=node_auth(router)
        )
        assert joined.status_code == 201
        assert joined.json()["assigned_models"] == [model]
        tasks = (await client.get("/api/tasks")).json()["data"]
        assert [(t["model"], t["kind"]) for t in tasks] == [(model, "node_pull")]
    gib = f"{free / GIB:.1f} GiB"
    assert f"assigning {model} to node gpu-3: {gib} of GPU memory free" in caplog.text


async def test_the_admin_api_takes_the_names_people_type(router: InProcessRouter) -> None:
    async with router.client() as client:
        await client.post("/api/nodes", json=node("gpu-1", 24 * GIB), headers=node_auth(router))
        sent = await client.post(
            "/api/models/distribute", json={"model": "gpt-oss:20b", "target": "all"}
        )
        assert sent.status_code == 202, sent.text
        assert [t["model"] for t in sent.json()["tasks"]] == ["gpt-oss-20b"]
        latest = await client.post(
            "/api/models/distribute", json={"model": "qwen3-coder", "target": "all"}
        )
        assert [t["model"] for t in latest.json()["tasks"]] == ["qwen3-coder-30b-a3b"]
        unknown = await client.post(
            "/api/models/distribute", json={"model": "nope:7b", "target": "all"}
        )
        assert unknown.status_code == 404
        for bad in ("../etc:passwd", "a:b:c", "x:..%2f"):
            refused = await client.post(
                "/api/models/distribute", json={"model": bad, "target": "all"}
            )
            assert refused.status_code == 400, bad
            assert refused.json()["error"]["code"] == "invalid_model_name"
        available = {m["name"] for m in (await client.get("/api/models/available")).json()["data"]}
        assert "gpt-oss-20b" in available and "gpt-oss:20b" not in available


async def test_the_assigned_list_comes_back_in_every_heartbeat_answer(
    router: InProcessRouter,
) -> None:
    """The router is the source of truth: registration's policy and the operator's
    distributions add to the node's list, which every answer carries (a restarted node
    learns it again), while models already on the node get no task."""
    router.service.settings.auto_distribute = "recommended"
    joining = {
        **node("gpu-9", 8 * GIB),
        "load": {"models_on_disk": ["llama-3.1-8b-instruct-q4_k_m"]},
    }
    async with router.client() as client:
        joined = (await client.post("/api/nodes", json=joining, headers=node_auth(router))).json()
        assert joined["assigned_models"] == ["llama-3.1-8b-instruct-q4_k_m"]
        assert (await client.get("/api/tasks")).json()["data"] == []  # it has it already
        sent = await client.post(
            "/api/models/distribute",
            json={"model": "gemma3:270m", "target": "specific", "node_ids": [joined["node_id"]]},
        )
        assert sent.status_code == 202, sent.text
        beat = await client.post(
            f"/api/nodes/{joined['node_id']}/heartbeat", json={}, headers=node_auth(router)
        )
        assert beat.json()["assigned_models"] == ["llama-3.1-8b-instruct-q4_k_m", "gemma-3-270m"]
        again = (await client.post("/api/nodes", json=joining, headers=node_auth(router))).json()
        assert again["node_id"] == joined["node_id"]
        assert again["assigned_models"] == beat.json()["assigned_models"]
        shown = (await client.get(f"/api/nodes/{joined['node_id']}")).json()
        assert shown["assigned_models"] == beat.json()["assigned_models"]
        assert shown["sync"]["state"] == "in_sync"
