"""Request headers are bounded (``max_header_bytes``, 64 KiB): a router or node answers
headers past that with 431 in OpenAI's error shape and closes the connection before reading
more, whether they come at once, in pieces, or as the second request on a keep-alive
connection. A large body behind small headers is not mistaken for large headers."""

from __future__ import annotations

import contextlib
import socket
from collections.abc import Iterator
from typing import Any

import orjson
import pytest

from tests.support import Process, start_router

LIMIT = 65536


@pytest.fixture(scope="module")
def router(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Process]:
    home = tmp_path_factory.mktemp("header-router")
    process = start_router(home, home)
    yield process
    process.stop()


@pytest.fixture(params=["router", "node"])
def server(request: pytest.FixtureRequest) -> Process:
    """The module's router or the session's real node (both serve through one protocol)."""
    process: Process = request.getfixturevalue(request.param)
    return process


class Connection:
    """One raw HTTP/1.1 connection: what is sent, and the responses read back one by one."""

    def __init__(self, process: Process) -> None:
        host, port = process.url.rsplit("/", 1)[1].split(":")
        self.sock = socket.create_connection((host, int(port)), timeout=10)
        self.reader = self.sock.makefile("rb")

    def __enter__(self) -> Connection:
        return self

    def __exit__(self, *_: Any) -> None:
        self.reader.close()
        self.sock.close()

    def send(self, data: bytes, pieces: int = 1) -> None:
        step = -(-len(data) // pieces)
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):  # refused early
            for start in range(0, len(data), step):
                self.sock.sendall(data[start : start + step])

    def answer(self) -> tuple[int, bytes]:
        status = int(self.reader.readline().split()[1])
        length = 0
        while (line := self.reader.readline()) not in (b"\r\n", b""):
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
        return status, self.reader.read(length)

    def closed(self) -> bool:
        try:
            return self.reader.read(1) == b""
        except ConnectionResetError:
            return True


def request(path: str, headers: bytes = b"", body: bytes = b"") -> bytes:
    method = b"POST" if body else b"GET"
    head = b"%s %s HTTP/1.1\r\nhost: x\r\n" % (method, path.encode())
    if body:
        head += b"content-type: application/json\r\ncontent-length: %d\r\n" % len(body)
    return head + headers + b"\r\n" + body


def big_header(size: int) -> bytes:
    return b"x-big: " + b"a" * size + b"\r\n"


def test_headers_past_the_limit_are_refused_with_431(server: Process) -> None:
    with Connection(server) as connection:
        connection.send(request("/health", big_header(8192)))
        assert connection.answer()[0] == 200
    for pieces in (1, 64):  # at once, and in pieces of 16 KiB
        with Connection(server) as connection:
            connection.send(request("/health", big_header(pieces * 16384 + LIMIT)), pieces)
            status, body = connection.answer()
            assert status == 431
            error = orjson.loads(body)["error"]
            assert error["code"] == "headers_too_large" and str(LIMIT) in error["message"]
            assert connection.closed()


def test_the_second_request_on_a_connection_is_bounded_too(server: Process) -> None:
    with Connection(server) as connection:
        connection.send(request("/health"))
        assert connection.answer()[0] == 200
        connection.send(request("/health", big_header(4 * LIMIT)))
        assert connection.answer()[0] == 431


def test_a_large_body_behind_small_headers_is_read(router: Process) -> None:
    """The headers and a 2 MiB body arrive together: the body is not counted as headers."""
    body = orjson.dumps({"model": "none-such", "input": "a" * (2 << 20)})
    with Connection(router) as connection:
        connection.send(request("/v1/embeddings", body=body))
        status, reply = connection.answer()
    assert status == 404 and orjson.loads(reply)["error"]["code"] == "model_not_supported"


def test_pipelined_requests_each_get_their_answer(router: Process) -> None:
    with Connection(router) as connection:
        connection.send(request("/health") * 3)
        assert [connection.answer()[0] for _ in range(3)] == [200, 200, 200]
