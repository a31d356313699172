"""The router's HTTP/1.1 client for its nodes, against loopback servers that write exact bytes:
framing, keep-alive, a node that hangs up or goes silent, a slow reader, cancellation."""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field

import pytest
import uvloop

from llmlb.router.proxy.node_connection import NodeResponse
from llmlb.router.proxy.node_errors import (
    NodeBadAnswer,
    NodeCutOff,
    NodeHungUp,
    NodeMixedUp,
    NodeUnreachable,
)
from llmlb.router.proxy.nodelink import NodeLinks

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]
_OK = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 2\r\n\r\n{}"


@dataclass
class Node:
    url: str
    connections: int = 0
    requests: list[bytes] = field(default_factory=list)
    closed: asyncio.Event = field(default_factory=asyncio.Event)


_STATUS_LINE = re.compile(rb"(HTTP/1\.[01] [0-9]+[^\r\n]*\r\n)")
_REQUEST_ID = re.compile(rb"\r\nx-request-id: ([^\r]*)\r\n")


def echoing(raw: bytes, request: bytes) -> bytes:
    """``raw`` with the request's id echoed in each answer's head, as a node echoes it."""
    found = _REQUEST_ID.search(request)
    assert found is not None
    return _STATUS_LINE.sub(lambda m: m.group(1) + b"x-request-id: " + found.group(1) + b"\r\n",
                            raw)  # fmt: skip


async def read_request(reader: asyncio.StreamReader) -> bytes:
    """One request, head and Content-Length body."""
    head = await reader.readuntil(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":")[1])
    return head + await reader.readexactly(length)


@contextlib.asynccontextmanager
async def node(answer: Handler) -> AsyncIterator[Node]:
    """A loopback node whose every connection is handed to ``answer``."""
    state = Node("")

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        state.connections += 1
        try:
            await answer(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()
            state.closed.set()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    state.url = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"
    try:
        yield state
    finally:
        server.close()


def answering(*answers: bytes, state: list[bytes] | None = None) -> Handler:
    """Reads a request and writes the next answer, for as long as there are answers."""

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        for raw in answers:
            request = await read_request(reader)
            if state is not None:
                state.append(request)
            writer.write(echoing(raw, request))
            await writer.drain()
        await reader.read()  # until the client closes

    return answer


def hanging_up_after(raw: bytes) -> Handler:
    """Reads a request, writes ``raw`` and closes the connection."""

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        request = await read_request(reader)
        writer.write(echoing(raw, request))
        await writer.drain()

    return answer


async def read_all(response: NodeResponse) -> bytes:
    parts = []
    while chunk := await response.read_some():
        parts.append(chunk)
    return b"".join(parts)


def links(read_timeout: float = 30.0, keepalive: float = 15.0) -> NodeLinks:
    return NodeLinks(None, connect_timeout=5.0, read_timeout=read_timeout, keepalive=keepalive)


def on_uvloop(main: Callable[[], Awaitable[None]]) -> None:
    """As the router runs: uvloop orders timers, I/O and ``connection_made`` its own way."""
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(main())  # type: ignore[arg-type]


async def until(condition: Callable[[], bool]) -> None:
    """Until the pool's state says so (it has no event to wait on), at most 10 s."""
    async with asyncio.timeout(10):
        while not condition():  # noqa: ASYNC110
            await asyncio.sleep(0.01)


async def test_requests_one_after_another_share_one_connection() -> None:
    seen: list[bytes] = []
    async with node(answering(_OK, _OK, _OK, state=seen)) as n:
        pool = links()
        for _ in range(3):
            response = await pool.post(n.url, "/v1/chat/completions", {"x-request-id": "r1"}, b"{}")
            assert (response.status, await read_all(response)) == (200, b"{}")
            response.release()
        await pool.close()
    assert n.connections == 1
    assert seen[0].startswith(b"POST /v1/chat/completions HTTP/1.1\r\n")
    assert b"\r\nx-request-id: r1\r\n" in seen[0]
    assert b"\r\ncontent-length: 2\r\n\r\n{}" in seen[0]


async def test_a_chunked_stream_arrives_whole_and_its_end_is_known() -> None:
    events = [b"data: %d\n\n" % i for i in range(5)]
    chunked = b"".join(b"%x\r\n%s\r\n" % (len(e), e) for e in events) + b"0\r\n\r\n"
    head = (
        b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n"
    )
    async with node(answering(head + chunked)) as n:
        pool = links()
        response = await pool.post(n.url, "/v1/completions", {}, b"{}")
        assert response.headers["content-type"] == "text/event-stream"
        assert await read_all(response) == b"".join(events)
        assert response.at_eof()
        response.release()
        await pool.close()


async def test_an_answer_that_ends_with_the_connection_is_read_whole() -> None:
    async with node(
        hanging_up_after(b"HTTP/1.0 200 OK\r\ncontent-type: text/plain\r\n\r\nall of it")
    ) as n:
        pool = links()
        response = await pool.post(n.url, "/x", {}, b"{}")
        assert await read_all(response) == b"all of it"
        response.release()
        await pool.close()


async def connections_for_two_requests(answer: bytes) -> int:
    """How many connections two requests in turn took, each answered with ``answer``."""
    async with node(answering(answer, answer)) as n:
        pool = links()
        for _ in range(2):
            response = await pool.post(n.url, "/x", {}, b"{}")
            assert await read_all(response) == b"{}"
            response.release()
        await pool.close()
    return n.connections


async def test_a_node_that_closes_after_answering_gets_a_new_connection_next_time() -> None:
    closing = _OK.replace(b"\r\n\r\n", b"\r\nconnection: close\r\n\r\n", 1)
    assert await connections_for_two_requests(closing) == 2


async def test_a_node_that_is_down_is_unreachable() -> None:
    async with node(answering(_OK)) as n:
        url = n.url
    with pytest.raises(NodeUnreachable, match="cannot connect"):
        await links().post(url, "/x", {}, b"{}")


async def test_a_node_that_hangs_up_mid_stream_is_a_cut_off_not_a_short_answer() -> None:
    async with node(
        hanging_up_after(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n")
    ) as n:
        response = await links().post(n.url, "/x", {}, b"{}")
        assert await response.read_some() == b"hello"
        with pytest.raises(NodeCutOff, match="closed the connection"):
            await response.read_some()
        response.close()


async def test_a_node_that_hangs_up_before_answering_is_a_hang_up() -> None:
    async with node(hanging_up_after(b"")) as n:
        with pytest.raises(NodeHungUp):
            await links().post(n.url, "/x", {}, b"{}")


async def test_bytes_that_are_not_http_are_a_bad_answer() -> None:
    async with node(answering(b"SSH-2.0-OpenSSH_9.2\r\n\r\n")) as n:
        with pytest.raises(NodeBadAnswer, match=r"not HTTP/1\.1"):
            await links().post(n.url, "/x", {}, b"{}")


async def test_a_stream_that_goes_silent_times_out_and_drops_the_connection() -> None:
    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        request = await read_request(reader)
        head = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n2\r\nhi\r\n"
        writer.write(echoing(head, request))
        await writer.drain()
        await reader.read()  # silent until the client gives up

    async with node(answer) as n:
        response = await links(read_timeout=0.2).post(n.url, "/x", {}, b"{}")
        assert await response.read_some() == b"hi"
        with pytest.raises(TimeoutError, match="sent nothing for"):
            async with asyncio.timeout(10):  # far past the link's own 0.2 s
                await response.read_some()
        response.close()
        await asyncio.wait_for(n.closed.wait(), 10)


async def test_a_slow_reader_holds_a_bounded_buffer_and_loses_nothing() -> None:
    total = 64 * 1024 * 1024  # more than loopback's socket buffers hold
    block = b"x" * 65536
    sent_all = asyncio.Event()

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        request = await read_request(reader)
        writer.write(echoing(b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n" % total, request))
        for _ in range(total // len(block)):
            writer.write(block)
            await writer.drain()
        sent_all.set()

    async with node(answer) as n:
        response = await links().post(n.url, "/x", {}, b"{}")
        connection = response._connection
        # Nothing reads for a second: unpaused, loopback would move all 64 MiB into the
        # router's memory well within it. Paused, the node's writes wait.
        for _ in range(50):
            await asyncio.sleep(0.02)
            assert connection._buffered < 1024 * 1024
        assert not sent_all.is_set()
        assert len(await read_all(response)) == total
        response.release()


async def test_a_request_called_off_while_the_node_works_drops_its_connection() -> None:
    got_request = asyncio.Event()

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        got_request.set()
        assert await reader.read() == b""  # the router's side closed

    async with node(answer) as n:
        pool = links()
        call = asyncio.create_task(pool.post(n.url, "/x", {}, b"{}"))
        await asyncio.wait_for(got_request.wait(), 10)
        call.cancel()
        with pytest.raises(asyncio.CancelledError):
            await call
        await asyncio.wait_for(n.closed.wait(), 10)


async def test_an_answer_closed_before_its_end_is_not_reused() -> None:
    stream = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n2\r\nhi\r\n"
    async with node(answering(stream, _OK)) as n:
        pool = links()
        response = await pool.post(n.url, "/x", {}, b"{}")
        assert await response.read_some() == b"hi"
        response.close()  # the client left: the node must learn it by the connection closing
        response = await pool.post(n.url, "/x", {}, b"{}")
        response.release()
        await pool.close()
    assert n.connections == 2


def test_keep_alive_works_on_uvloop_too() -> None:
    """The router runs on uvloop, whose transports call ``connection_made`` a turn later."""

    async def main() -> None:
        assert await connections_for_two_requests(_OK) == 1

    on_uvloop(main)


async def test_headers_without_end_are_a_bad_answer() -> None:
    endless = b"HTTP/1.1 200 OK\r\n" + b"x-padding: " + b"y" * 70_000 + b"\r\n\r\n"
    async with node(answering(endless)) as n:
        with pytest.raises(NodeBadAnswer, match="headers are over"):
            await links().post(n.url, "/x", {}, b"{}")


async def test_an_interim_answer_is_skipped_for_the_real_one() -> None:
    async with node(answering(b"HTTP/1.1 100 Continue\r\n\r\n" + _OK)) as n:
        response = await links().post(n.url, "/x", {}, b"{}")
        assert (response.status, await read_all(response)) == (200, b"{}")
        response.release()


async def test_a_node_behind_a_path_prefix_gets_the_prefix() -> None:
    seen: list[bytes] = []
    async with node(answering(_OK, state=seen)) as n:
        response = await links().post(n.url + "/gpu1", "/v1/chat/completions", {}, b"{}")
        response.release()
    assert seen[0].startswith(b"POST /gpu1/v1/chat/completions HTTP/1.1\r\n")


async def test_a_whole_answer_cut_short_is_a_cut_off_whatever_the_header_case() -> None:
    async with node(
        hanging_up_after(b'HTTP/1.1 200 OK\r\nTransfer-Encoding: Chunked\r\n\r\n5\r\n{"a":\r\n')
    ) as n:
        response = await links().post(n.url, "/x", {}, b"{}")
        with pytest.raises(NodeCutOff):
            await read_all(response)
        response.close()


async def test_bytes_after_the_answer_drop_the_connection_not_the_answer() -> None:
    """More bytes than the answer's length said (a second answer, whole or not): the answer
    is whole and is the request's (its ids say so); the connection is never used again."""
    surplus = _OK + b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nab"
    assert await connections_for_two_requests(surplus) == 2


async def test_bytes_sent_to_an_idle_connection_take_it_out_of_the_pool() -> None:
    released = asyncio.Event()

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(echoing(_OK, await read_request(reader)))
        await writer.drain()
        await released.wait()
        writer.write(b"HTTP/1.1 408 Request Timeout\r\ncontent-length: 0\r\n\r\n")
        await writer.drain()
        await reader.read()

    async with node(answer) as n:
        pool = links()
        response = await pool.post(n.url, "/x", {}, b"{}")
        assert await read_all(response) == b"{}"
        response.release()
        assert pool.idle_count() == 1
        released.set()
        await until(lambda: pool.idle_count() == 0)
        await asyncio.wait_for(n.closed.wait(), 10)


async def test_idle_connections_past_the_keepalive_are_closed_without_new_traffic() -> None:
    async with node(answering(_OK)) as n:
        pool = links(keepalive=0.1)
        response = await pool.post(n.url, "/x", {}, b"{}")
        await read_all(response)
        response.release()
        await asyncio.wait_for(n.closed.wait(), 10)  # the router closed it, unasked
        assert pool.idle_count() == 0


def test_a_reader_slower_than_the_read_timeout_does_not_make_the_node_look_silent() -> None:
    total = 32 * 1024 * 1024

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        request = await read_request(reader)
        writer.write(echoing(b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n" % total, request))
        writer.write(b"x" * total)
        await writer.drain()

    async def main() -> None:
        async with node(answer) as n:
            response = await links(read_timeout=0.2).post(n.url, "/x", {}, b"{}")
            await until(lambda: response._connection._paused)
            await asyncio.sleep(0.5)  # the client reads slower than the node's read timeout
            assert len(await read_all(response)) == total
            response.release()

    on_uvloop(main)


def _exchange_of(request: bytes) -> bytes:
    found = re.search(rb"\r\nx-llmlb-exchange: ([0-9a-f]+)\r\n", request)
    assert found is not None
    return found.group(1)


def _answer_to(request: bytes, content: bytes) -> bytes:
    """A whole answer to ``request`` that echoes both its ids, as a node does."""
    head = b"HTTP/1.1 200 OK\r\nx-llmlb-exchange: %s\r\ncontent-length: %d\r\n\r\n" % (
        _exchange_of(request), len(content))  # fmt: skip
    return echoing(head, request) + content


async def test_a_late_answer_to_an_earlier_request_is_never_delivered_to_the_next() -> None:
    """A node that answers twice: the second copy lands on the reused connection just as the
    next request goes out, and must not be taken for that request's answer."""

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        first = await read_request(reader)
        writer.write(_answer_to(first, b"for the first"))
        await read_request(reader)
        writer.write(_answer_to(first, b"for the first"))  # again, late
        await reader.read()

    async with node(answer) as n:
        pool = links()
        response = await pool.post(n.url, "/x", {"x-request-id": "first"}, b"{}")
        assert await read_all(response) == b"for the first"
        response.release()
        with pytest.raises(NodeMixedUp, match="not for this request"):
            await pool.post(n.url, "/x", {"x-request-id": "second"}, b"{}")
        await asyncio.wait_for(n.closed.wait(), 10)  # and the connection is dropped
        await pool.close()


async def test_two_requests_with_one_client_id_are_still_told_apart() -> None:
    """Clients choose their ids, and two may choose the same: the exchange id differs."""

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        first = await read_request(reader)
        writer.write(_answer_to(first, b"for the first"))
        await read_request(reader)
        writer.write(_answer_to(first, b"for the first"))
        await reader.read()

    async with node(answer) as n:
        pool = links()
        response = await pool.post(n.url, "/x", {"x-request-id": "same"}, b"{}")
        assert await read_all(response) == b"for the first"
        response.release()
        with pytest.raises(NodeMixedUp, match="exchange"):
            await pool.post(n.url, "/x", {"x-request-id": "same"}, b"{}")
        await pool.close()


async def test_an_answer_that_does_not_echo_the_request_id_is_refused() -> None:
    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(_OK)  # no x-request-id at all
        await reader.read()

    async with node(answer) as n:
        with pytest.raises(NodeMixedUp, match="x-request-id missing"):
            await links().post(n.url, "/x", {"x-request-id": "mine"}, b"{}")


async def test_an_endless_header_line_is_cut_off_at_the_limit() -> None:
    """llhttp holds a header line until it ends, copying it again as it grows: the router
    must stop reading long before the node stops writing."""
    offered = 64 * 1024 * 1024
    written = 0

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal written
        request = await read_request(reader)
        writer.write(echoing(b"HTTP/1.1 200 OK\r\n", request) + b"x-endless: ")
        block = b"a" * 16384
        while written < offered:
            writer.write(block)
            await writer.drain()
            written += len(block)

    async with node(answer) as n:
        with pytest.raises(NodeBadAnswer, match="headers are over"):
            await links().post(n.url, "/x", {"x-request-id": "r"}, b"{}")
        await asyncio.wait_for(n.closed.wait(), 30)
    assert written < offered // 4  # what loopback's buffers held, not all of it


async def test_a_status_that_http_lacks_is_a_bad_answer() -> None:
    async with node(answering(b"HTTP/1.1 999 Odd\r\ncontent-length: 2\r\n\r\n{}")) as n:
        with pytest.raises(NodeBadAnswer, match="status 999"):
            await links().post(n.url, "/x", {"x-request-id": "r"}, b"{}")


async def test_a_flood_of_interim_answers_is_a_bad_answer() -> None:
    flood = b"HTTP/1.1 100 Continue\r\n\r\n" * 10_000 + _OK
    async with node(answering(flood)) as n:
        with pytest.raises(NodeBadAnswer, match="interim answers"):
            await links().post(n.url, "/x", {"x-request-id": "r"}, b"{}")
