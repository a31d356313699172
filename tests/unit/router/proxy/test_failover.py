"""Failover (router.proxy.failover.Proxy) over a scripted transport: no sockets, each try's
outcome chosen by the test, what the client gets and which nodes were tried checked."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import orjson
import pytest

from llmlb.common.errors import ModelNotSupported, UpstreamFailed, UpstreamTimeout
from llmlb.common.settings import RouterSettings
from llmlb.common.wire import Device, NodeLoad, RegisterRequest
from llmlb.router.fleet.node_record import EndpointConfig
from llmlb.router.fleet.registry import Registry
from llmlb.router.proxy.admission import Capacity
from llmlb.router.proxy.failover import Proxy
from llmlb.router.proxy.node_errors import NodeHungUp, NodeMixedUp, NodeStalled, NodeUnreachable
from llmlb.router.proxy.routing import Routed
from llmlb.router.storage.db import open_database
from llmlb.router.telemetry.metrics import RouterMetrics

GPU = Device(kind="cuda", name="GPU", memory_total=80 << 30, memory_free=80 << 30)
HOLDS = NodeLoad(state="ready", models_loaded=["m"], models_on_disk=["m"], slots_total=4)
GOOD = b'{"id":"x","choices":[],"usage":{"prompt_tokens":3,"completion_tokens":2}}'


@dataclass
class Scripted:
    """A node's answer, as the transport hands it to the proxy."""

    status: int
    body: bytes
    headers: dict[str, str] = field(default_factory=lambda: {"content-type": "application/json"})
    _sent: bool = False
    ended: str = ""  # "released" or "closed"

    @property
    def content_length(self) -> int | None:
        return len(self.body)

    def at_eof(self) -> bool:
        return self._sent

    async def read_some(self) -> bytes:
        if self._sent:
            return b""
        self._sent = True
        return self.body

    def release(self) -> None:
        self.ended = "released"

    def close(self) -> None:
        self.ended = "closed"


Outcome = Scripted | BaseException | asyncio.Event


class ScriptedTransport:
    """Hands out the scripted outcomes in order of the calls; an Event holds the call until
    it is set (then the next outcome follows)."""

    def __init__(self, *outcomes: Outcome) -> None:
        self._outcomes = list(outcomes)
        self.calls: list[tuple[str, bool]] = []  # (node's base URL, on a fresh connection)
        self.sent: list[tuple[bytes, bool]] = []  # (the body, whether ids must be echoed)
        self.called = asyncio.Event()

    async def post(
        self, base_url: str, path: str, headers: dict[str, str], body: bytes, fresh: bool = False,
        echoes: bool = True,
    ) -> Scripted:  # fmt: skip
        self.calls.append((base_url, fresh))
        self.sent.append((body, echoes))
        self.called.set()
        outcome = self._outcomes.pop(0)
        if isinstance(outcome, asyncio.Event):
            await outcome.wait()
            outcome = self._outcomes.pop(0)
        if isinstance(outcome, BaseException):
            raise outcome
        assert isinstance(outcome, Scripted), "an Event is followed by the outcome it holds"
        return outcome

    @property
    def nodes(self) -> list[str]:
        return [url for url, _ in self.calls]


@pytest.fixture
async def registry(tmp_path: Path) -> AsyncIterator[Registry]:
    engine = await open_database(f"sqlite+aiosqlite:///{tmp_path / 'db.sqlite'}")
    registry = Registry(engine, heartbeat_interval=10.0, allow_cpu_nodes=False,
                        require_approval=False, node_max_concurrency=None)  # fmt: skip
    for index in range(2):
        request = RegisterRequest(name=f"n{index}", base_url=f"http://n{index}:1", devices=[GPU],
                                  load=HOLDS)  # fmt: skip
        await registry.register(request)
    yield registry
    await engine.dispose()


def proxy(registry: Registry, transport: ScriptedTransport, home: Path) -> Proxy:
    settings = RouterSettings(home=home, auto_distribute="none", request_timeout=5.0)
    metrics = RouterMetrics(registry.all, 10.0)
    return Proxy(registry, settings, transport, metrics, Capacity())


REQUEST = Routed("chat", "/v1/chat/completions", "m", False, orjson.dumps({"model": "m"}))


async def test_a_node_that_is_down_passes_the_request_to_the_next(
    registry: Registry, tmp_path: Path
) -> None:
    transport = ScriptedTransport(NodeUnreachable("connection refused"), Scripted(200, GOOD))
    answer = await proxy(registry, transport, tmp_path).forward(REQUEST, {})
    assert (answer.status, answer.body, answer.attempts) == (200, GOOD, 2)
    assert answer.usage == {"prompt_tokens": 3, "completion_tokens": 2}
    first, second = transport.nodes
    assert first != second  # never the same node twice
    assert [n.unreachable for n in registry.all() if n.base_url == first] == [True]
    assert all(n.active == 0 for n in registry.all())  # every slot given back


async def test_a_closed_pooled_connection_is_retried_on_the_same_node_fresh(
    registry: Registry, tmp_path: Path
) -> None:
    for hiccup in (NodeHungUp("closed before the answer"), NodeMixedUp("x-request-id differs")):
        transport = ScriptedTransport(hiccup, Scripted(200, GOOD))
        answer = await proxy(registry, transport, tmp_path).forward(REQUEST, {})
        assert (answer.status, answer.attempts) == (200, 1)
        (node, pooled), (again, fresh) = transport.calls
        assert node == again and (pooled, fresh) == (False, True)
        assert not any(n.unreachable for n in registry.all())  # not the node's fault


async def test_the_clients_own_mistake_is_answered_at_once(
    registry: Registry, tmp_path: Path
) -> None:
    missing = b'{"error":{"code":"model_not_found","message":"no model m"}}'
    for status, body in ((400, b'{"error":{"message":"bad"}}'), (404, missing)):
        transport = ScriptedTransport(Scripted(status, body))
        answer = await proxy(registry, transport, tmp_path).forward(REQUEST, {})
        assert (answer.status, answer.body, len(transport.calls)) == (status, body, 1)


async def test_when_every_node_fails_the_last_nodes_own_answer_is_relayed(
    registry: Registry, tmp_path: Path
) -> None:
    busy = b'{"error":{"message":"overloaded"}}'
    transport = ScriptedTransport(Scripted(503, b"{}"), Scripted(503, busy))
    answer = await proxy(registry, transport, tmp_path).forward(REQUEST, {})
    assert (answer.status, answer.body, answer.attempts) == (503, busy, 2)
    assert len(set(transport.nodes)) == 2


async def test_a_node_that_refuses_the_routers_key_is_the_routers_problem_not_the_clients(
    registry: Registry, tmp_path: Path
) -> None:
    refused = Scripted(401, b'{"error":{"message":"bad node token"}}')
    transport = ScriptedTransport(refused, Scripted(401, refused.body))
    with pytest.raises(UpstreamFailed, match="refused the request \\(401\\): bad node token"):
        await proxy(registry, transport, tmp_path).forward(REQUEST, {})


async def test_failures_before_any_answer_end_in_a_gateway_error_naming_the_node(
    registry: Registry, tmp_path: Path
) -> None:
    transport = ScriptedTransport(NodeStalled("called off"), TimeoutError())
    with pytest.raises(UpstreamTimeout, match="did not answer in time") as caught:
        await proxy(registry, transport, tmp_path).forward(REQUEST, {})
    assert caught.value.status == 504
    assert len(set(transport.nodes)) == 2
    assert all(n.active == 0 and not n.sending for n in registry.all())


async def test_a_waiting_exchange_is_known_to_the_fleet_until_the_answer_begins(
    registry: Registry, tmp_path: Path
) -> None:
    # What the stall watch (router.fleet.health) reads: which node holds a request it has not
    # begun to answer, and since when.
    held = asyncio.Event()
    transport = ScriptedTransport(held, Scripted(200, GOOD))
    forwarding = asyncio.create_task(proxy(registry, transport, tmp_path).forward(REQUEST, {}))
    async with asyncio.timeout(10):
        await transport.called.wait()
    (waiting,) = [n for n in registry.all() if n.base_url == transport.nodes[0]]
    assert len(waiting.sending) == 1 and waiting.active == 1
    held.set()
    answer = await forwarding
    assert answer.status == 200
    assert not waiting.sending and waiting.active == 0


async def test_a_stalled_node_is_left_for_the_next(registry: Registry, tmp_path: Path) -> None:
    transport = ScriptedTransport(NodeStalled("called off by the fleet"), Scripted(200, GOOD))
    answer = await proxy(registry, transport, tmp_path).forward(REQUEST, {})
    assert (answer.status, answer.attempts) == (200, 2)
    assert transport.calls[0][0] != transport.calls[1][0]


async def test_a_model_no_node_holds_is_the_clients_mistake(
    registry: Registry, tmp_path: Path
) -> None:
    transport = ScriptedTransport()
    other = Routed("chat", "/v1/chat/completions", "nope", False, b'{"model":"nope"}')
    with pytest.raises(ModelNotSupported) as caught:
        await proxy(registry, transport, tmp_path).forward(other, {})
    assert caught.value.status == 404 and not transport.calls  # as OpenAI answers


async def test_an_endpoint_gets_its_own_name_for_the_model_and_no_id_echo_is_required(
    registry: Registry, tmp_path: Path
) -> None:
    endpoint = await registry.add_endpoint(
        "vllm", "http://vllm:8000", "vllm", "k", EndpointConfig()
    )
    own = NodeLoad(state="ready", models_loaded=["m"], slots_total=4)
    registry.endpoint_polled(endpoint.id, own, {"m": "org/m"})
    for node in registry.all():
        if not node.is_endpoint:
            await registry.set_flags(node.id, draining=True)  # only the endpoint serves
    transport = ScriptedTransport(Scripted(200, GOOD))
    answer = await proxy(registry, transport, tmp_path).forward(REQUEST, {})
    assert answer.status == 200 and answer.node.id == endpoint.id
    ((body, echoes),) = transport.sent
    assert orjson.loads(body) == {"model": "org/m"} and echoes is False


async def test_an_answer_that_waited_for_a_models_load_does_not_make_the_node_look_slow(
    registry: Registry, tmp_path: Path
) -> None:
    # The first byte's wait ranks nodes (a slow link, a queue); a load's seconds are the
    # node's to report and the balancer's to weigh apart. Counted, a fleet's first answers
    # (each node loading the model) ranked the one whose load took longest second, long after.
    cold, warm = registry.all()
    await registry.heartbeat(cold.id, NodeLoad(state="ready", models_on_disk=["m"], slots_total=4))
    await registry.set_flags(warm.id, draining=True)  # only the cold node serves
    transport = ScriptedTransport(Scripted(200, GOOD), Scripted(200, GOOD))
    forwarder = proxy(registry, transport, tmp_path)
    assert (await forwarder.forward(REQUEST, {})).status == 200
    assert cold.first_byte_seconds == 0.0  # not measured: it loaded the model
    await registry.heartbeat(cold.id, HOLDS)  # loaded now
    assert (await forwarder.forward(REQUEST, {})).status == 200
    assert cold.first_byte_seconds > 0.0
