"""Router rules checked in process: auth, validation, labels and error shapes."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from sqlalchemy import select

from llmlb.router.storage.db import nodes
from tests.inproc.conftest import REMOTE, InProcessRouter

CHAT = "/v1/chat/completions"


def node_auth(router: InProcessRouter) -> dict[str, str]:
    token = router.service.provisioning.node_token_path.read_text().strip()
    return {"authorization": f"Bearer {token}"}


def error_of(response: httpx.Response) -> dict[str, Any]:
    body = response.json()
    assert set(body) == {"error"}
    assert set(body["error"]) >= {"message", "type", "param", "code"}
    return dict(body["error"])


async def test_a_non_ascii_bearer_token_is_a_401_not_a_500(router: InProcessRouter) -> None:
    await router.service.keys.create("client", ["api"])
    async with router.client(REMOTE) as client:
        for token in ("Bearer \xe9\xe9", "Bearer \xff\x00x"):
            header = {b"authorization": token.encode("latin-1")}
            response = await client.get("/v1/models", headers=header)
            assert response.status_code == 401
            assert error_of(response)["type"] == "authentication_error"


async def test_a_non_ascii_admin_password_attempt_is_a_401(router: InProcessRouter) -> None:
    router.service.auth._admin_password = "secret"  # as --admin-password sets it
    async with router.client(REMOTE) as client:
        header = {b"authorization": "Bearer \xe9".encode("latin-1")}
        response = await client.get("/api/nodes", headers=header)
    assert response.status_code == 401


async def test_unknown_model_names_never_become_metric_labels(router: InProcessRouter) -> None:
    names = ["evil\x00name", "x" * 150, "a\nb", *(f"random-{i}" for i in range(20))]
    async with router.client() as client:
        for name in names:
            response = await client.post(CHAT, json={"model": name, "messages": []})
            assert response.status_code == 404, response.text
        too_long = await client.post(CHAT, json={"model": "y" * 201, "messages": []})
        assert too_long.status_code == 400
        assert error_of(too_long)["param"] == "model"
        metrics = (await client.get("/metrics")).text
    assert 'model="unknown"' in metrics
    assert "random-" not in metrics and "evil" not in metrics and "xxxx" not in metrics
    # Prometheus can still parse every line: no NUL or raw newline reached a label.
    assert "\x00" not in metrics


async def test_history_paging_parameters_are_bounded(router: InProcessRouter) -> None:
    async with router.client() as client:
        for query in ("limit=-1", "limit=0", "limit=1001", "offset=-5", "limit=--5",
                      "status=99999999999999999999", "offset=1e3", "limit=abc"):  # fmt: skip
            response = await client.get("/api/requests?" + query)
            assert response.status_code == 400, query
            assert error_of(response)["type"] == "invalid_request_error"
        ok = await client.get("/api/requests?limit=1000&offset=0&status=200")
    assert ok.status_code == 200


async def test_a_head_on_a_blob_the_router_lacks_starts_no_download(
    router: InProcessRouter,
) -> None:
    name = next(n for n in router.service.catalog.names() if n != "gemma-3-270m")
    token = router.service.provisioning.node_token_path.read_text().strip()
    async with router.client() as client:
        response = await client.head(
            f"/v0/models/blob/{name}", headers={"authorization": f"Bearer {token}"}
        )
    assert response.status_code == 404
    assert router.service.models.downloads.active(name) is None
    tasks = await router.service.tasks.list(None)
    assert tasks == []


@pytest.mark.parametrize("path", ["/api/nodes", "/api/keys", "/api/requests", "/api/tasks"])
async def test_admin_routes_refuse_remote_callers_without_credentials(
    router: InProcessRouter, path: str
) -> None:
    await router.service.keys.create("admin", ["admin"])
    async with router.client(REMOTE) as client:
        response = await client.get(path)
    assert response.status_code == 401
    assert error_of(response)["type"] == "authentication_error"


async def test_a_node_key_cannot_reach_the_admin_api(router: InProcessRouter) -> None:
    _, secret = await router.service.keys.create("node", ["node"])
    async with router.client(REMOTE) as client:
        response = await client.get("/api/nodes", headers={"authorization": f"Bearer {secret}"})
    assert response.status_code == 403
    assert error_of(response)["code"] == "insufficient_scope"


async def test_request_ids_are_taken_only_when_short_and_safe(router: InProcessRouter) -> None:
    async with router.client() as client:
        kept = await client.get("/health", headers={"x-request-id": "abc-123.x:y"})
        assert kept.headers["x-request-id"] == "abc-123.x:y"
        for offered in ("a" * 129, "evil\tid", "spaces here", "<script>"):
            answer = await client.get("/health", headers={"x-request-id": offered})
            assert answer.headers["x-request-id"] != offered
            assert len(answer.headers["x-request-id"]) == 16


NODE = {"name": "n1", "base_url": "http://10.9.9.9:9000", "version": "t",
        "devices": [{"kind": "cuda", "name": "G", "memory_total": 1 << 33,
                     "memory_free": 1 << 33}]}  # fmt: skip


@pytest.mark.parametrize(
    "base_url",
    [
        "http://user:pw@10.9.9.9:9000", "http://10.9.9.9:9000/#frag", "http://10.9.9.9:9000/?x=",
        "http://10.9.9.9:9000/api/pull?x=", "http://10.9.9.9:70000", "http://10.9.9.9",
        "http://10.9.9.9:9000/a\r\nb", "http://10.9.9.9:9000/\x00", "ftp://10.9.9.9:21",
        "http://10.9.9.9:9000/../x",
    ],
)  # fmt: skip
async def test_node_urls_are_only_scheme_host_port_and_path(
    router: InProcessRouter, base_url: str
) -> None:
    async with router.client() as client:
        answer = await client.post("/api/nodes", json={**NODE, "base_url": base_url},
                                   headers=node_auth(router))  # fmt: skip
    assert answer.status_code == 400, answer.text
    assert "base_url" in error_of(answer)["message"]


async def test_a_node_cannot_point_at_the_router_itself(router: InProcessRouter) -> None:
    router.service.fleet.own_ports = frozenset({32768, 11434})  # (and Ollama's: --ollama-port)
    async with router.client() as client:
        for url in ("http://127.0.0.1:32768", "http://localhost:32768/v1", "http://[::1]:11434"):
            answer = await client.post("/api/nodes", json={**NODE, "base_url": url},
                                       headers=node_auth(router))  # fmt: skip
            assert answer.status_code == 400
            assert "own address" in error_of(answer)["message"]


async def test_a_heartbeat_is_accepted_only_from_the_registering_credential(
    router: InProcessRouter,
) -> None:
    _, other = await router.service.keys.create("another node", ["node"])
    async with router.client() as client:
        joined = await client.post("/api/nodes", json=NODE, headers=node_auth(router))
        assert joined.status_code == 201
        node_id = joined.json()["node_id"]
        forged = await client.post(f"/api/nodes/{node_id}/heartbeat", json={"state": "draining"},
                                   headers={"authorization": f"Bearer {other}"})  # fmt: skip
        assert forged.status_code == 403
        assert error_of(forged)["code"] == "node_credential_mismatch"
        assert router.service.registry.get(node_id).load.state == "ready"
        assert router.service.registry.get(node_id).token != other
        real = await client.post(f"/api/nodes/{node_id}/heartbeat", json={"state": "ready"},
                                 headers=node_auth(router))  # fmt: skip
        assert real.status_code == 200


@pytest.mark.parametrize(
    "load",
    [
        {"models_on_disk": [".."]},
        {"models_loaded": ["a/b"]},
        {"models_on_disk": [f"m{i}" for i in range(1001)]},
        {"load_seconds": {"../x": 1.0}},
        {"downloads": {f"m{i}": {} for i in range(101)}},
    ],
)
async def test_heartbeat_contents_are_validated_and_bounded(
    router: InProcessRouter, load: dict[str, object]
) -> None:
    async with router.client() as client:
        node_id = (await client.post("/api/nodes", json=NODE, headers=node_auth(router))).json()[
            "node_id"
        ]
        answer = await client.post(f"/api/nodes/{node_id}/heartbeat", json=load,
                                   headers=node_auth(router))  # fmt: skip
        assert answer.status_code == 400
        assert (await client.get("/api/models/available")).status_code == 200


async def test_client_endpoints_answer_wrong_methods_and_errors_in_openai_shape(
    router: InProcessRouter,
) -> None:
    """The client POSTs are served in front of Starlette's routing: they keep its rules."""
    async with router.client() as client:
        wrong = await client.get("/v1/chat/completions", headers={"x-request-id": "rid-1"})
        assert wrong.status_code == 405
        assert wrong.headers["allow"] == "POST"
        assert error_of(wrong)["code"] == "method_not_allowed"
        assert wrong.headers["x-request-id"] == "rid-1"
        broken = await client.post("/v1/completions", content=b"{not json")
        assert broken.status_code == 400
        assert len(broken.headers["x-request-id"]) == 16
        unknown = await client.post("/v1/embeddings", json={"model": "nobody-has-it", "input": "x"})
        assert unknown.status_code == 404
        assert error_of(unknown)["code"] == "model_not_supported"


async def test_heartbeats_reach_the_database_in_one_batch_at_the_next_sync(
    router: InProcessRouter,
) -> None:
    registry = router.service.registry
    async with router.client() as client:
        ids = []
        for index in range(3):
            node = {**NODE, "name": f"n{index}", "base_url": f"http://10.9.9.{index}:9000"}
            joined = await client.post("/api/nodes", headers=node_auth(router), json=node)
            ids.append(joined.json()["node_id"])
        for node_id in ids:
            report = {"state": "ready", "models_on_disk": ["late-model"]}
            beat = await client.post(f"/api/nodes/{node_id}/heartbeat", headers=node_auth(router),
                                     json=report)  # fmt: skip
            assert beat.status_code == 200
    # In memory at once: the balancer sees the model.
    assert sorted(registry.fleet_models()["late-model"]) == sorted(ids)
    async with router.service.engine.connect() as connection:
        rows = {r.id: r.load for r in await connection.execute(select(nodes))}
    assert all("late-model" not in rows[i]["models_on_disk"] for i in ids)
    await registry.load()  # the sync loop writes first, then reads
    async with router.service.engine.connect() as connection:
        rows = {r.id: r.load for r in await connection.execute(select(nodes))}
    assert all(rows[i]["models_on_disk"] == ["late-model"] for i in ids)
    assert sorted(registry.fleet_models()["late-model"]) == sorted(ids)
