"""Faults a real node cannot produce on demand, with scriptable fake nodes behind a real router."""

from __future__ import annotations

import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from tests.fakenode import Behaviour, FakeNode
from tests.support import Process, node_token, start_router, wait_until

MODEL = "fake-model"
BODY = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}]}
ROUTER_ENV = {
    "LLMLB_AUTO_DISTRIBUTE": "none",
    "LLMLB_NODE_MAX_CONCURRENCY": "1",
    "LLMLB_QUEUE_SIZE": "1",
    "LLMLB_QUEUE_TIMEOUT": "1",
    "LLMLB_REQUEST_TIMEOUT": "2.5",
    "LLMLB_HEARTBEAT_INTERVAL": "0.5",
}


@pytest.fixture(scope="module")
def router(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Process, Path]]:
    home = tmp_path_factory.mktemp("fault-router")
    process = start_router(home, home, env=ROUTER_ENV)
    yield process, home
    process.stop()


@pytest.fixture(scope="module")
def fakes(router: tuple[Process, Path]) -> Iterator[dict[str, FakeNode]]:
    process, home = router
    nodes = {name: FakeNode(name).start() for name in ("fake-a", "fake-b")}
    for node in nodes.values():
        node.join(process.url, node_token(home))
    yield nodes
    for node in nodes.values():
        node.stop()


@pytest.fixture
def http(router: tuple[Process, Path], fakes: dict[str, FakeNode]) -> Iterator[httpx.Client]:
    for node in fakes.values():
        node.behaviour = Behaviour()
    with httpx.Client(base_url=router[0].url, timeout=30) as client:
        wait_until(lambda: all(
            n["status"] == "ready" for n in client.get("/api/nodes").json()["data"]
            if n["name"] in fakes
        ))  # fmt: skip
        yield client


def preferred(http: httpx.Client) -> str:
    """The node the balancer picks first when both are idle."""
    return http.post("/v1/chat/completions", json=BODY).headers["x-llmlb-node"]


def test_5xx_before_the_first_byte_retries_on_another_node(
    http: httpx.Client, fakes: dict[str, FakeNode]
) -> None:
    first = preferred(http)
    other = next(name for name in fakes if name != first)
    fakes[first].behaviour = Behaviour(status=500)
    before = fakes[first].requests
    response = http.post("/v1/chat/completions", json=BODY)
    assert response.status_code == 200
    assert response.json()["choices"][0]["message"]["content"] == f"hello from {other}"
    assert response.headers["x-llmlb-attempts"] == "2"
    assert fakes[first].requests == before + 1


def test_when_every_node_fails_the_last_error_is_relayed(
    http: httpx.Client, fakes: dict[str, FakeNode]
) -> None:
    for node in fakes.values():
        node.behaviour = Behaviour(status=503)
    response = http.post("/v1/chat/completions", json=BODY)
    assert response.status_code == 503
    assert "failed on purpose" in response.json()["error"]["message"]
    assert response.headers["x-llmlb-attempts"] == "2"


def test_timeout_before_the_first_byte_retries(
    http: httpx.Client, fakes: dict[str, FakeNode]
) -> None:
    first = preferred(http)
    fakes[first].behaviour = Behaviour(delay=4.0)
    response = http.post("/v1/chat/completions", json=BODY)
    assert response.status_code == 200
    assert response.headers["x-llmlb-node"] != first


def test_stream_dropped_midway_ends_with_an_error_event(
    http: httpx.Client, fakes: dict[str, FakeNode]
) -> None:
    first = preferred(http)
    fakes[first].behaviour = Behaviour(chunks=10, drop_after=3)
    with http.stream("POST", "/v1/chat/completions", json={**BODY, "stream": True}) as response:
        assert response.status_code == 200
        events = [line for line in response.iter_lines() if line.startswith("data: ")]
    assert any('"tok2 "' in e for e in events)
    assert '"error"' in events[-2] and "mid-stream" in events[-2]
    assert events[-1] == "data: [DONE]"
    # The failed node is skipped by the next request.
    assert http.post("/v1/chat/completions", json=BODY).headers["x-llmlb-node"] != first


def test_client_disconnect_cancels_the_upstream_stream(
    http: httpx.Client, fakes: dict[str, FakeNode]
) -> None:
    for node in fakes.values():
        node.behaviour = Behaviour(chunks=200, chunk_delay=0.05)
    cancelled_before = sum(n.streams_cancelled for n in fakes.values())
    with http.stream("POST", "/v1/chat/completions", json={**BODY, "stream": True}) as response:
        lines = response.iter_lines()
        for _ in range(3):
            next(lines)
    wait_until(lambda: sum(n.streams_cancelled for n in fakes.values()) > cancelled_before, 3)


def test_busy_nodes_queue_requests_then_full_queue_is_429(
    http: httpx.Client, fakes: dict[str, FakeNode]
) -> None:
    for node in fakes.values():
        node.behaviour = Behaviour(delay=0.4)
    with ThreadPoolExecutor(3) as pool:
        responses = list(pool.map(lambda _: http.post("/v1/chat/completions", json=BODY), range(3)))
    assert [r.status_code for r in responses] == [200, 200, 200]
    waited = [
        int(r.headers["x-llmlb-queue-wait-ms"])
        for r in responses
        if "x-llmlb-queue-wait-ms" in r.headers
    ]
    assert waited and max(waited) >= 200
    with ThreadPoolExecutor(4) as pool:
        responses = list(pool.map(lambda _: http.post("/v1/chat/completions", json=BODY), range(4)))
    statuses = sorted(r.status_code for r in responses)
    assert statuses == [200, 200, 200, 429]
    rejected = next(r for r in responses if r.status_code == 429)
    assert rejected.headers["retry-after"]
    assert rejected.json()["error"]["type"] == "rate_limit_error"


def test_queue_timeout_is_504(http: httpx.Client, fakes: dict[str, FakeNode]) -> None:
    for node in fakes.values():
        node.behaviour = Behaviour(delay=1.3)
    with ThreadPoolExecutor(3) as pool:
        responses = list(pool.map(lambda _: http.post("/v1/chat/completions", json=BODY), range(3)))
    statuses = sorted(r.status_code for r in responses)
    assert statuses == [200, 200, 504]
    late = next(r for r in responses if r.status_code == 504)
    assert late.json()["error"]["code"] == "queue_timeout"


def test_no_ready_node_is_503_with_retry_after(
    http: httpx.Client, fakes: dict[str, FakeNode]
) -> None:
    ids = [fake.node_id for fake in fakes.values()]
    for node_id in ids:
        http.post(f"/api/nodes/{node_id}/drain")
    try:
        response = http.post("/v1/chat/completions", json=BODY)
        assert response.status_code == 503
        assert response.headers["retry-after"]
        assert MODEL in response.json()["error"]["message"]
    finally:
        for node_id in ids:
            http.post(f"/api/nodes/{node_id}/undrain")


def test_dead_node_url_is_skipped_and_marked_offline(
    router: tuple[Process, Path], http: httpx.Client, fakes: dict[str, FakeNode]
) -> None:
    process, home = router
    for node in fakes.values():
        node.behaviour = Behaviour(delay=0.3)  # busy enough that the ghost gets a request
    ghost = FakeNode("ghost").start()
    ghost.join(process.url, node_token(home), interval=3600)  # registers, then never beats
    ghost.stop()  # its URL now refuses connections
    # Three at once with one request per node: one of them must try the ghost.
    with ThreadPoolExecutor(3) as pool:
        responses = list(pool.map(lambda _: http.post("/v1/chat/completions", json=BODY), range(3)))
    assert all(r.status_code == 200 for r in responses)
    status = {n["name"]: n["status"] for n in http.get("/api/nodes").json()["data"]}
    assert status["ghost"] == "offline"
    http.delete(f"/api/nodes/{ghost.node_id}")


def test_node_api_authentication(router: tuple[Process, Path], http: httpx.Client) -> None:
    registration = {"name": "x", "base_url": "http://127.0.0.1:9", "devices": [
        {"kind": "cuda", "name": "g", "memory_total": 1, "memory_free": 1}]}  # fmt: skip
    bad = http.post("/api/nodes", json=registration, headers={"authorization": "Bearer nope"})
    assert bad.status_code == 401
    anonymous = http.post("/api/nodes", json=registration)
    assert anonymous.status_code == 401
    token = {"authorization": f"Bearer {node_token(router[1])}"}
    unknown = http.post("/api/nodes/does-not-exist/heartbeat", json={}, headers=token)
    assert unknown.status_code == 404
    assert unknown.json()["error"]["code"] == "node_not_found"
    cpu_only = {
        **registration,
        "devices": [{"kind": "cpu", "name": "c", "memory_total": 1, "memory_free": 1}],
    }
    refused = http.post("/api/nodes", json=cpu_only, headers=token)
    assert refused.status_code == 403
    assert "--allow-cpu-nodes" in refused.json()["error"]["message"]


def test_api_keys_scopes_expiry_and_revocation(http: httpx.Client) -> None:
    created = http.post("/api/keys", json={"name": "client", "scopes": ["api"]}).json()
    secret = {"authorization": f"Bearer {created['secret']}"}
    try:
        assert http.post("/v1/chat/completions", json=BODY).status_code == 401  # keys exist now
        assert http.post("/v1/chat/completions", json=BODY, headers=secret).status_code == 200
        # An api key is not an admin key.
        assert http.get("/api/nodes", headers=secret).status_code == 403
        listed = http.get("/api/keys").json()["data"]
        assert all("secret" not in k for k in listed)
        short = http.post(
            "/api/keys", json={"name": "short", "scopes": ["api"], "expires_at": time.time() + 3}
        ).json()
        bearer = {"authorization": f"Bearer {short['secret']}"}
        assert http.get("/v1/models", headers=bearer).status_code == 200
        wait_until(lambda: http.get("/v1/models", headers=bearer).status_code == 401, 10)
        keeper = http.post("/api/keys", json={"name": "keeper", "scopes": ["api"]}).json()
        http.delete(f"/api/keys/{created['id']}")
        revoked = http.post("/v1/chat/completions", json=BODY, headers=secret)
        assert revoked.status_code == 401
        assert "revoked" in revoked.json()["error"]["message"]
        http.delete(f"/api/keys/{keeper['id']}")
    finally:
        http.delete(f"/api/keys/{created['id']}")
    history = http.get("/api/requests", params={"key_id": created["id"]}).json()
    assert history["total"] >= 1


def test_require_node_approval(tmp_path: Path) -> None:
    router = start_router(tmp_path, tmp_path, "--require-node-approval", env=ROUTER_ENV)
    fake = FakeNode("new-node").start()
    try:
        fake.join(router.url, node_token(tmp_path))
        with httpx.Client(base_url=router.url) as http:
            node = http.get(f"/api/nodes/{fake.node_id}").json()
            assert node["status"] == "pending"
            assert http.post("/v1/chat/completions", json=BODY).status_code == 503
            http.post(f"/api/nodes/{fake.node_id}/approve")
            wait_until(lambda: http.get(f"/api/nodes/{fake.node_id}").json()["status"] == "ready")
            assert http.post("/v1/chat/completions", json=BODY).status_code == 200
    finally:
        fake.stop()
        router.stop()


def test_request_id_and_traceparent_reach_the_node(
    http: httpx.Client, fakes: dict[str, FakeNode]
) -> None:
    trace = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    response = http.post(
        "/v1/chat/completions", json=BODY,
        headers={"x-request-id": "req-123", "traceparent": trace},
    )  # fmt: skip
    served = fakes[response.headers["x-llmlb-node"]]
    assert response.headers["x-request-id"] == "req-123"
    assert served.last_headers["x-request-id"] == "req-123"
    assert served.last_headers["traceparent"] == trace
    generated = http.post("/v1/chat/completions", json=BODY)
    node_headers = fakes[generated.headers["x-llmlb-node"]].last_headers
    assert node_headers["x-request-id"] == generated.headers["x-request-id"]
    assert node_headers["traceparent"].startswith("00-")


def test_health_and_ready(http: httpx.Client) -> None:
    assert http.get("/health").json()["status"] == "ok"
    assert http.get("/ready").json() == {"database": "ok"}


def test_distributing_to_an_offline_node_is_refused_naming_it(
    router: tuple[Process, Path], http: httpx.Client
) -> None:
    process, home = router
    ghost = FakeNode("silent-node").start()
    ghost.join(process.url, node_token(home), interval=3600)  # registers, then falls silent
    try:
        wait_until(lambda: http.get(f"/api/nodes/{ghost.node_id}").json()["status"] == "offline")
        answer = http.post(
            "/api/models/distribute",
            json={"model": "gemma-3-270m", "target": "specific", "node_ids": [ghost.node_id]},
        )
        assert answer.status_code == 503
        assert "silent-node" in answer.json()["error"]["message"]
    finally:
        ghost.stop()
        http.delete(f"/api/nodes/{ghost.node_id}")


def test_a_nodes_logs_pass_through_checked_and_bounded(
    http: httpx.Client, fakes: dict[str, FakeNode]
) -> None:
    node = fakes["fake-a"]
    path = f"/api/nodes/{node.node_id}/logs"
    lines = http.get(path, params={"limit": "5", "level": "info", "token": "x", "url": "y"})
    assert lines.status_code == 200
    assert lines.json()["data"][0]["msg"] == "fake line"
    # Only the checked query reaches the node, never the caller's other parameters.
    assert node.logs_query == {"limit": "5", "level": "info", "after": "0"}
    assert http.get(path, params={"level": "loud"}).status_code == 400
    for answer in (
        b"<html>not json</html>",
        b'{"data": 5}',
        b'{"data":["' + b"x" * (13 << 20) + b'"]}',
    ):
        node.behaviour = Behaviour(logs=answer)
        refused = http.get(path)
        assert refused.status_code == 503, answer[:20]
        assert refused.json()["error"]["message"].startswith("node fake-a gave no readable logs")
