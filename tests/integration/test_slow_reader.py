"""A client that opens a stream and stops reading it, its connection left open: the router
holds a bounded amount for it, gives up once a write has waited ``send_timeout``, drops the
connection, and the node's work is cancelled; the slot is free again."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import httpx

from tests.fakenode import Behaviour, FakeNode
from tests.support import node_token, start_router, wait_until

ASK = {"model": "fake-model", "messages": [{"role": "user", "content": "hi"}]}


def test_a_client_that_stops_reading_does_not_hold_the_node(tmp_path: Path) -> None:
    router = start_router(tmp_path, tmp_path, env={
        "LLMLB_AUTO_DISTRIBUTE": "none", "LLMLB_SEND_TIMEOUT": "2"})  # fmt: skip
    # An endless-looking stream: about 40 MB, far more than the buffers on the way hold.
    fake = FakeNode("talkative", behaviour=Behaviour(chunks=300_000, chunk_delay=0)).start()
    stalled = None
    try:
        fake.join(router.url, node_token(tmp_path))
        with httpx.Client(base_url=router.url, timeout=10) as http:
            wait_until(lambda: len(http.get("/api/nodes").json()["data"]) == 1)
            body = json.dumps({**ASK, "stream": True}).encode()
            host, port = router.url.rsplit("/", 1)[1].split(":")
            stalled = socket.create_connection((host, int(port)))
            stalled.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            stalled.sendall(
                b"POST /v1/chat/completions HTTP/1.1\r\nhost: router\r\n"
                b"content-type: application/json\r\ncontent-length: "
                + str(len(body)).encode()
                + b"\r\n\r\n"
                + body
            )
            assert stalled.recv(64).startswith(b"HTTP/1.1 200")  # then it reads no more
            wait_until(lambda: fake.streams_cancelled == 1, 30)
            # Its connection is dropped, not left to drain into a client that never reads.
            stalled.settimeout(10)
            try:
                while stalled.recv(1 << 20):
                    pass
            except ConnectionResetError:
                pass  # dropped: what was still buffered for it is gone
            wait_until(lambda: http.get("/api/nodes").json()["data"][0]["router_in_flight"] == 0)
            answer = http.post("/v1/chat/completions", json=ASK)
            assert answer.status_code == 200  # the node serves others again
        log = router.log_path.read_text()
        assert "to take in more of its stream" in log
        assert "returned without completing" not in log  # ended by us, not by uvicorn
    finally:
        if stalled is not None:
            stalled.close()
        fake.stop()
        router.stop()
