"""Request headers are bounded (``max_header_bytes``, 64 KiB): a router or node answers
headers past that with 431 in OpenAI's error shape and closes the connection before reading
more, whether they come at once, in pieces, or as the second request on a keep-alive
connection. A large body behind small headers is not mistaken for large headers."""

from __future__ import annotations

import contextlib
import socket
from collections.abc import Iterator

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


def address(process: Process) -> tuple[str, int]:
    host, port = process.url.rsplit("/", 1)[1].split(":")
    return host, int(port)


def answer(sock: socket.socket) -> tuple[int, bytes]:
    """The status and body of one response (read until the connection closes or the body
    is whole)."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = next((int(line.split(b":")[1]) for line in head.split(b"\r\n")
                   if line.lower().startswith(b"content-length:")), 0)  # fmt: skip
    while len(body) < length:
        chunk = sock.recv(65536)
        if not chunk:
            break
        body += chunk
    return int(head.split()[1]), body


def closed(sock: socket.socket) -> bool:
    try:
        return sock.recv(1) == b""
    except ConnectionResetError:
        return True


def request(path: str, headers: bytes = b"", body: bytes = b"") -> bytes:
    method = b"POST" if body else b"GET"
    head = b"%s %s HTTP/1.1\r\nhost: x\r\n" % (method, path.encode())
    if body:
        head += b"content-type: application/json\r\ncontent-length: %d\r\n" % len(body)
    return head + headers + b"\r\n" + body


@pytest.fixture(params=["router", "node"])
def server(request: pytest.FixtureRequest) -> Process:
    """The session's router or its real node (both serve through the same protocol)."""
    process: Process = request.getfixturevalue(request.param)
    return process


def test_headers_past_the_limit_are_refused_with_431(server: Process) -> None:
    process = server
    with socket.create_connection(address(process), timeout=10) as sock:
        sock.sendall(request("/health", b"x-fits: " + b"a" * 8192 + b"\r\n"))
        assert answer(sock)[0] == 200
    for pieces in (1, 64):  # at once, and in pieces of 16 KiB
        with socket.create_connection(address(process), timeout=10) as sock:
            whole = request("/health", b"x-big: " + b"a" * (pieces * 16384 + LIMIT) + b"\r\n")
            step = len(whole) // pieces
            with contextlib.suppress(BrokenPipeError, ConnectionResetError):  # refused early
                for start in range(0, len(whole), step):
                    sock.sendall(whole[start : start + step])
            status, body = answer(sock)
            assert status == 431
            error = orjson.loads(body)["error"]
            assert error["code"] == "headers_too_large" and str(LIMIT) in error["message"]
            assert closed(sock)


def test_the_second_request_on_a_connection_is_bounded_too(server: Process) -> None:
    process = server
    with socket.create_connection(address(process), timeout=10) as sock:
        sock.sendall(request("/health"))
        assert answer(sock)[0] == 200
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):  # refused early
            sock.sendall(request("/health", b"x-big: " + b"a" * (4 * LIMIT) + b"\r\n"))
        assert answer(sock)[0] == 431


def test_a_large_body_behind_small_headers_is_read(router: Process) -> None:
    """The headers and a 2 MiB body arrive together: the body is not counted as headers."""
    body = orjson.dumps({"model": "none-such", "input": "a" * (2 << 20)})
    with socket.create_connection(address(router), timeout=10) as sock:
        sock.sendall(request("/v1/embeddings", body=body))
        status, reply = answer(sock)
    assert status == 404 and orjson.loads(reply)["error"]["code"] == "model_not_supported"


def test_pipelined_requests_each_get_their_answer(router: Process) -> None:
    with socket.create_connection(address(router), timeout=10) as sock:
        sock.sendall(request("/health") * 3)
        assert [answer(sock)[0] for _ in range(3)] == [200, 200, 200]
