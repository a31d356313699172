"""A node the router cannot reach although it heartbeats: the path from the router to it
black-holes traffic (connections stay open, nothing arrives, nothing closes). The router
sees from the node's own reports that its requests never arrived, calls them off and serves
them from another node, stops sending there, and takes the node back once a probe gets
through."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx

from tests.blackhole import BlackHoleProxy
from tests.fakenode import FakeNode
from tests.support import node_token, start_router, wait_until

BODY = {"model": "fake-model", "messages": [{"role": "user", "content": "hi"}]}


def test_requests_lost_on_the_way_to_a_node_are_served_by_another(tmp_path: Path) -> None:
    router = start_router(tmp_path, tmp_path, env={
        "LLMLB_AUTO_DISTRIBUTE": "none", "LLMLB_HEARTBEAT_INTERVAL": "0.5",
        "LLMLB_BALANCER": "round_robin"})  # fmt: skip
    cut_off, healthy = FakeNode("cut-off").start(), FakeNode("healthy").start()
    proxy = BlackHoleProxy(int(cut_off.url.rsplit(":", 1)[1])).start()
    try:
        cut_off.join(router.url, node_token(tmp_path), base_url=proxy.url)
        healthy.join(router.url, node_token(tmp_path))
        with httpx.Client(base_url=router.url, timeout=60) as http:

            def statuses() -> dict[str, str]:
                return {n["name"]: n["status"] for n in http.get("/api/nodes").json()["data"]}

            wait_until(lambda: statuses() == {"cut-off": "ready", "healthy": "ready"})
            assert {http.post("/v1/chat/completions", json=BODY).headers["x-llmlb-node"]
                    for _ in range(4)} == {"cut-off", "healthy"}  # fmt: skip
            proxy.swallow()
            started = time.monotonic()
            with ThreadPoolExecutor(8) as pool:
                answers = list(pool.map(
                    lambda _: http.post("/v1/chat/completions", json=BODY), range(8)))  # fmt: skip
            took = time.monotonic() - started
            assert [a.status_code for a in answers] == [200] * 8
            assert {a.headers["x-llmlb-node"] for a in answers} == {"healthy"}
            assert took < 10  # two heartbeats and a retry, not the 600 s request timeout
            assert statuses()["cut-off"] == "offline"
            assert http.post("/v1/chat/completions", json=BODY).headers["x-llmlb-attempts"] == "1"
            proxy.restore()
            wait_until(lambda: statuses()["cut-off"] == "ready", 15)
        assert "has not received the" in router.log_path.read_text()
    finally:
        proxy.stop()
        cut_off.stop()
        healthy.stop()
        router.stop()
