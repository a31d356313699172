"""A router restarted (SIGTERM, then started again on its port) while clients keep sending:
every request the router accepted is answered, the ones it did not accept fail to connect
(never a half answer), and the history after the restart holds every answered request."""

from __future__ import annotations

import signal
import socket
import threading
from pathlib import Path
from typing import IO

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


def test_a_request_begun_on_a_kept_alive_connection_as_the_router_stops_is_answered(
    tmp_path: Path,
) -> None:
    """uvicorn closes a connection between requests at once when it stops, and a request
    that was already arriving on it was reset: its client saw an accepted request lost. Here
    the next request's first bytes are on the wire when the router stops listening; the rest
    follows, and it is answered, with the connection closed after."""
    router = start_router(tmp_path, tmp_path, env=ENV)
    host, port = router.url.rsplit("/", 1)[1].split(":")
    request = f"GET /v1/models HTTP/1.1\r\nhost: {host}\r\n\r\n".encode()
    with socket.create_connection((host, int(port)), timeout=10) as sock, \
            sock.makefile("rb") as reader:  # fmt: skip
        sock.sendall(request)
        assert _answer(reader)[0] == 200  # the connection is kept alive
        sock.sendall(request[:10])
        router.proc.send_signal(signal.SIGTERM)
        wait_until(lambda: _refused(host, int(port)))  # stopping: the connections were told
        sock.sendall(request[10:])
        status, headers = _answer(reader)
        assert status == 200
        assert headers.get("connection") == "close"
        assert reader.read() == b""  # and then closed
    assert router.proc.wait(30) == 0


def _answer(reader: IO[bytes]) -> tuple[int, dict[str, str]]:
    """One response's status and headers; its body is read and dropped."""
    status = int(reader.readline().split()[1])
    headers: dict[str, str] = {}
    while (line := reader.readline()) not in (b"\r\n", b""):
        name, _, value = line.decode().partition(":")
        headers[name.strip().lower()] = value.strip()
    reader.read(int(headers.get("content-length", "0")))
    return status, headers


def _refused(host: str, port: int) -> bool:
    try:
        socket.create_connection((host, port), timeout=1).close()
    except ConnectionRefusedError:
        return True
    return False
