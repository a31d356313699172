"""A node that misbehaves on the wire, behind a real router: it may fail its own requests,
never another client's. Raw-socket nodes (``tests.fakenode.RawNode``) write what no HTTP
server would: late second answers on a keep-alive connection, endless headers, statuses HTTP
lacks, floods of interim answers."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Iterator

import httpx
import orjson
import pytest

from tests.fakenode import RawHandler, RawNode, RawRequest, stream_answer, whole_answer
from tests.support import Process, node_token, start_router, wait_until

ROUTER_ENV = {
    "LLMLB_AUTO_DISTRIBUTE": "none",
    "LLMLB_NODE_MAX_CONCURRENCY": "64",
    "LLMLB_QUEUE_SIZE": "1024",
    "LLMLB_QUEUE_TIMEOUT": "60",
    # Long: a node's fault must end a request by what it is, not by the clock.
    "LLMLB_REQUEST_TIMEOUT": "60",
    "LLMLB_HEARTBEAT_INTERVAL": "10",
}


@pytest.fixture(scope="module")
def router(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Process, str]]:
    home = tmp_path_factory.mktemp("hostile-router")
    process = start_router(home, home, env=ROUTER_ENV)
    yield process, node_token(home)
    process.stop()


@pytest.fixture
def raw_nodes() -> Iterator[list[RawNode]]:
    started: list[RawNode] = []
    yield started
    for node in started:
        node.stop()


def join(router: tuple[Process, str], raw_nodes: list[RawNode], model: str,
         handler: RawHandler, name: str = "") -> RawNode:  # fmt: skip
    node = RawNode(name or f"raw-{model}", model=model, handler=handler).start()
    node.join(router[0].url, router[1], interval=5)
    raw_nodes.append(node)
    with httpx.Client(base_url=router[0].url) as http:
        wait_until(lambda: any(
            n["name"] == node.name and n["status"] == "ready"
            for n in http.get("/api/nodes").json()["data"]
        ))  # fmt: skip
    return node


def asked(request: RawRequest) -> str:
    """What the client asked: each client asks something of its own."""
    return str(request.json()["messages"][-1]["content"])


def answering_twice(share: float, stream: bool) -> RawHandler:
    """A node that answers every request, and sends a ``share`` of its answers a second
    time, late: as the next request on the same connection arrives, before that one's own
    answer (as a buggy gateway or a retrying proxy in front of a node may). Every late copy
    lands on a connection the router has reused for another client's request."""
    chance = random.Random(7)
    owed: dict[asyncio.StreamWriter, bytes] = {}  # per connection: the copy still to send

    async def handler(request: RawRequest, writer: asyncio.StreamWriter) -> bool:
        if writer in owed:
            writer.write(owed.pop(writer))
        content = f"the answer to {asked(request)}"
        answer = (stream_answer(request, [content[:10], content[10:]]) if stream
                  else whole_answer(request, content))  # fmt: skip
        writer.write(answer)
        if chance.random() < share:
            owed[writer] = answer
        return True

    return handler


async def many_clients(url: str, model: str, clients: int, stream: bool) -> dict[str, int]:
    """``clients`` concurrent clients, each asking its own question under its own request
    id: how many got their own answer, another's, or an error."""
    counts = {"own": 0, "another's": 0, "error": 0}
    limits = httpx.Limits(max_connections=clients)
    async with httpx.AsyncClient(base_url=url, timeout=120, limits=limits) as http:

        async def one(index: int) -> None:
            question = f"question {index:04d}"
            body = {"model": model, "stream": stream,
                    "messages": [{"role": "user", "content": question}]}  # fmt: skip
            response = await http.post("/v1/chat/completions", json=body,
                                       headers={"x-request-id": f"client-{index}"})  # fmt: skip
            if response.status_code != 200:
                counts["error"] += 1
                return
            if stream:
                text = "".join(
                    (orjson.loads(line[6:])["choices"] or [{}])[0].get("delta", {})
                    .get("content") or ""
                    for line in response.text.splitlines()
                    if line.startswith("data: {") and '"choices"' in line
                )  # fmt: skip
            else:
                text = response.json()["choices"][0]["message"]["content"]
            counts["own" if text == f"the answer to {question}" else "another's"] += 1

        await asyncio.gather(*(one(index) for index in range(clients)))
    return counts


@pytest.mark.parametrize(("stream", "clients"), [(False, 600), (True, 400)])
async def test_a_node_that_answers_twice_never_gives_a_client_another_clients_answer(
    router: tuple[Process, str], raw_nodes: list[RawNode], stream: bool, clients: int
) -> None:
    model = f"twice-{'stream' if stream else 'whole'}"
    node = join(router, raw_nodes, model, answering_twice(0.3, stream))
    mixed_up_before = mixed_ups(router[0])
    counts = await many_clients(router[0].url, model, clients, stream)
    assert counts["another's"] == 0, counts
    # The late copies did land on reused connections: each cost a fresh connection (the
    # request was sent again there), not an innocent client's answer.
    assert node.connections > 10, node.connections
    assert counts["own"] >= clients * 0.95, counts
    assert mixed_ups(router[0]) > mixed_up_before  # caught, and the request sent again


def mixed_ups(router: Process) -> int:
    """Answers the router caught on the wrong request, as its log says (a warning each)."""
    return router.log_path.read_text(errors="replace").count("answered the wrong request")


def _endless_header(limit: int) -> RawHandler:
    async def handler(request: RawRequest, writer: asyncio.StreamWriter) -> bool:
        writer.write(b"HTTP/1.1 200 OK\r\n" + request.echoed() + b"x-endless: ")
        block, sent = b"a" * 65536, 0
        while sent < limit:
            writer.write(block)
            await writer.drain()
            sent += len(block)
        return False

    return handler


def test_a_node_whose_header_never_ends_costs_the_router_little(
    router: tuple[Process, str], raw_nodes: list[RawNode]
) -> None:
    join(router, raw_nodes, "endless", _endless_header(128 << 20))
    with httpx.Client(base_url=router[0].url, timeout=120) as http:
        body = {"model": "endless", "messages": [{"role": "user", "content": "hi"}]}
        answer = http.post("/v1/chat/completions", json=body)
        assert answer.status_code == 502, answer.text
        assert "headers are over" in answer.json()["error"]["message"]
        assert http.get("/health").status_code == 200


@pytest.mark.parametrize(
    ("model", "raw", "reason"),
    [
        ("status-999", b"HTTP/1.1 999 Odd\r\n<ids>content-length: 2\r\n\r\n{}", "status 999"),
        ("interim-flood", b"HTTP/1.1 100 Continue\r\n\r\n" * 5000
         + b"HTTP/1.1 200 OK\r\n<ids>content-length: 2\r\n\r\n{}", "interim answers"),
        ("no-id", b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n{}", "x-request-id missing"),
    ],
)  # fmt: skip
def test_an_answer_no_node_may_send_is_a_502_in_openais_shape(
    router: tuple[Process, str], raw_nodes: list[RawNode], model: str, raw: bytes, reason: str
) -> None:
    async def handler(request: RawRequest, writer: asyncio.StreamWriter) -> bool:
        writer.write(raw.replace(b"<ids>", request.echoed()))
        return True

    join(router, raw_nodes, model, handler)
    with httpx.Client(base_url=router[0].url, timeout=120) as http:
        body = {"model": model, "messages": [{"role": "user", "content": "hi"}]}
        answer = http.post("/v1/chat/completions", json=body)
    assert answer.status_code == 502, answer.text
    error = answer.json()["error"]
    assert reason in error["message"]
    assert error["type"] == "upstream_error"


def test_a_misbehaving_node_leaves_a_well_behaved_one_serving(
    router: tuple[Process, str], raw_nodes: list[RawNode]
) -> None:
    async def good(request: RawRequest, writer: asyncio.StreamWriter) -> bool:
        writer.write(whole_answer(request, "fine"))
        return True

    join(router, raw_nodes, "shared", _endless_header(32 << 20), name="raw-endless")
    join(router, raw_nodes, "shared", good, name="raw-good")
    with httpx.Client(base_url=router[0].url, timeout=120) as http:
        body = {"model": "shared", "messages": [{"role": "user", "content": "hi"}]}
        answers = [http.post("/v1/chat/completions", json=body) for _ in range(4)]
    assert [a.status_code for a in answers] == [200] * 4, [a.text for a in answers]
    assert {a.json()["choices"][0]["message"]["content"] for a in answers} == {"fine"}
