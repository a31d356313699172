"""A thousand clients that connect and send nothing: the router keeps serving everyone
else, and closes each idle connection once its header timeout has passed."""

from __future__ import annotations

import resource
import selectors
import socket
import time
from pathlib import Path

import httpx

from tests.support import start_router

IDLE = 1000


def test_a_thousand_idle_connections_neither_block_nor_stay(tmp_path: Path) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(max(soft, 4096), hard), hard))
    router = start_router(tmp_path, tmp_path, env={"LLMLB_HEADER_TIMEOUT": "2"})
    host, port = router.url.rsplit("/", 1)[1].split(":")
    idle = []
    try:
        for _ in range(IDLE):
            idle.append(socket.create_connection((host, int(port)), timeout=10))
        opened = time.monotonic()
        with httpx.Client(base_url=router.url, timeout=10) as http:
            for _ in range(20):  # others are served while the thousand wait
                assert http.get("/health").status_code == 200
        # Each idle connection is closed by the router (EOF) after the header timeout.
        closed = 0
        with selectors.DefaultSelector() as selector:
            for sock in idle:
                selector.register(sock, selectors.EVENT_READ, sock)
            deadline = opened + 30
            while closed < IDLE and time.monotonic() < deadline:
                for key, _ in selector.select(timeout=1):
                    conn: socket.socket = key.data
                    try:
                        data = conn.recv(4096)
                    except ConnectionResetError:
                        data = b""
                    if not data or b"408" in data:
                        selector.unregister(conn)
                        closed += 1
        took = time.monotonic() - opened
        assert closed == IDLE, f"{IDLE - closed} idle connections still open after {took:.0f} s"
        assert took < 15
    finally:
        for sock in idle:
            sock.close()
        router.stop()
