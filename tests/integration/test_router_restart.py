"""A router restarted (SIGTERM, then started again on its port) while clients keep sending:
every request the router accepted is answered, the ones it did not accept fail to connect
(never a half answer), and the history after the restart holds every answered request."""

from __future__ import annotations

import threading
from pathlib import Path

import httpx

from tests.fakenode import Behaviour, FakeNode
from tests.support import free_port, node_token, start_router, wait_until

BODY = {"model": "fake-model", "messages": [{"role": "user", "content": "hi"}]}
ENV = {"LLMLB_AUTO_DISTRIBUTE": "none", "LLMLB_HEARTBEAT_INTERVAL": "0.5"}


def test_a_router_restart_under_load_loses_no_accepted_request(tmp_path: Path) -> None:
    port = free_port()
    router = start_router(tmp_path, tmp_path, port=port, env=ENV)
    fake = FakeNode("steady", behaviour=Behaviour(delay=0.2)).start()
    fake.join(router.url, node_token(tmp_path))
    answered: list[int] = []
    refused: list[str] = []
    broken: list[str] = []
    stop = threading.Event()

    def client() -> None:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30) as http:
            while not stop.is_set():
                try:
                    reply = http.post("/v1/chat/completions", json=BODY)
                except httpx.ConnectError as exc:
                    refused.append(type(exc).__name__)  # not accepted: the router was down
                    continue
                except httpx.HTTPError as exc:
                    broken.append(repr(exc))  # accepted, then lost: must never happen
                    continue
                answered.append(reply.status_code)

    try:
        with httpx.Client(base_url=router.url) as http:
            wait_until(lambda: len(http.get("/api/nodes").json()["data"]) == 1)
        clients = [threading.Thread(target=client) for _ in range(6)]
        for thread in clients:
            thread.start()
        wait_until(lambda: len(answered) >= 20)
        router.stop()  # SIGTERM: in-flight requests finish, new connections are refused
        before = len(answered)
        router = start_router(tmp_path, tmp_path, port=port, env=ENV, name="router-again")
        wait_until(lambda: len(answered) >= before + 20, 30)  # the node rejoined, served again
        stop.set()
        for thread in clients:
            thread.join(30)
        assert broken == []
        assert set(answered) <= {200, 503}  # 503: the moment before the node re-registered
        ok = answered.count(200)
        with httpx.Client(base_url=router.url) as http:
            wait_until(lambda: http.get("/api/requests", params={"status": 200}).json()["total"]
                       == ok, 15)  # fmt: skip
    finally:
        stop.set()
        fake.stop()
        router.stop()
