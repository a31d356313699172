"""A client request on its way to a node: the choice, the wait for capacity, and failover.

Bodies travel as the bytes the client sent; the router reads only ``model`` and ``stream``
(plus the prompt's text for ``prefix_affinity``). What happens after each try is decided in
``router.proxy.decisions``: a failure before the answer began moves the request to the next
node (never the same one twice), and after the first byte has gone to the client a failure
ends the stream with one error event (``router.proxy.relay``). When every node that could
serve is at its concurrency limit the request waits in a bounded line
(``router.proxy.admission``): a full line answers 429, a wait past ``queue_timeout`` 504.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import AsyncGenerator, Callable
from dataclasses import dataclass, field

import orjson

from llmlb.common import tracing
from llmlb.common.errors import (
    LlmlbError,
    ModelNotFound,
    ModelNotSupported,
    Unavailable,
    UpstreamFailed,
    UpstreamTimeout,
    describe,
)
from llmlb.common.settings import RouterSettings
from llmlb.common.wire import error_message
from llmlb.router.balancer.choice import Chooser
from llmlb.router.cloud.clouds import not_a_provider
from llmlb.router.fleet.node_record import NodeRecord
from llmlb.router.fleet.registry import Registry
from llmlb.router.proxy.admission import Capacity, WaitLine, WaitPlace
from llmlb.router.proxy.decisions import marks_unreachable, should_retry_here, should_try_next
from llmlb.router.proxy.node_errors import NodeCutOff, NodeMixedUp
from llmlb.router.proxy.relay import read_up_to, relay
from llmlb.router.proxy.routing import Routed, forwarded_headers
from llmlb.router.proxy.transport import NodeTransport
from llmlb.router.proxy.usage import usage_in
from llmlb.router.telemetry.metrics import RouterMetrics
from llmlb.router.workers.board import Board

log = logging.getLogger(__name__)

# With worker processes, a slot freed by another worker wakes no waiter here: a queued
# request looks again this often as well.
OTHER_WORKERS_POLL_SECONDS = 0.05


@dataclass(frozen=True)
class Answer:
    """A node's answer, ready to relay: a whole body or a stream of raw bytes.

    A value: ``forward`` returns it whole, and layers above wrap it with ``replace``.
    """

    status: int
    node: NodeRecord
    content_type: str
    body: bytes = b""
    chunks: AsyncGenerator[bytes, None] | None = None
    attempts: int = 1
    queue_wait_ms: float = 0.0
    usage: dict[str, int] = field(default_factory=dict)
    first_byte_at: float | None = None


class Proxy:
    def __init__(
        self,
        registry: Registry,
        settings: RouterSettings,
        transport: NodeTransport,
        metrics: RouterMetrics,
        capacity: Capacity,
        in_catalog: Callable[[str], bool] = lambda model: False,
        board: Board | None = None,
    ) -> None:
        self._transport = transport
        self._board = board  # (with worker processes: what the others have in flight)
        self._in_catalog = in_catalog
        self._registry = registry
        self._settings = settings
        self._metrics = metrics
        self._capacity = capacity
        self._chooser = Chooser(registry, settings.balancer)
        self._line = WaitLine(settings.queue_size, settings.queue_timeout,
                              on_depth=metrics.queue_depth.set, board=board)  # fmt: skip
        self._poll = OTHER_WORKERS_POLL_SECONDS if board is not None else float("inf")

    @property
    def waiting(self) -> int:
        """Requests queued for a free node now (by every worker)."""
        elsewhere = self._board.waiting_elsewhere() if self._board is not None else 0
        return self._line.waiting + elsewhere

    # -- choosing a node -------------------------------------------------------------------

    def choose(self, routed: Routed, tried: frozenset[str], fetchable: bool) -> NodeRecord | None:
        """The best node that can take the request now (``router.balancer.choice``); None
        when every one that could is busy."""
        node_id = self._chooser.choose(routed.model, routed.prefix, tried, fetchable)
        return self._registry.get(node_id) if node_id is not None else None

    async def _pick(self, routed: Routed, tried: frozenset[str]) -> tuple[NodeRecord, float]:
        """The best node for the request, waiting (bounded) while all are busy: (the node,
        the milliseconds waited)."""
        started = time.monotonic()
        fetchable = self._in_catalog(routed.model)
        place: WaitPlace | None = None
        caught_up = False  # (the node table read at most once per request)
        try:
            while True:
                node = self.choose(routed, tried, fetchable)
                if node is not None:
                    node.active += 1
                    if self._board is not None:
                        self._board.publish(node.id, node.active)
                    return node, (time.monotonic() - started) * 1000
                able = [
                    s for s in self._registry.snapshots()
                    if s.serving and s.can_serve(routed.model, fetchable) and s.id not in tried
                ]  # fmt: skip
                if not able:
                    # (with workers: a node that joined through another one, read now)
                    if not caught_up and await self._registry.caught_up():
                        caught_up = True
                        continue
                    raise self._no_node(routed.model, tried, routed.asked)
                if place is None:
                    place = self._line.join(
                        f"every node serving {routed.model!r} is busy and the queue is full "
                        f"({self._line.size})"
                    )  # fmt: skip
                remaining = place.remaining()
                if remaining <= 0:
                    raise place.timed_out(f"waited {self._line.timeout:.0f} s for a free node "
                                          f"serving {routed.model!r}")  # fmt: skip
                await self._capacity.wait(min(remaining, self._poll))
        finally:
            if place is not None:
                place.leave()

    def _no_node(self, model: str, tried: frozenset[str], asked: str = "") -> LlmlbError:
        if tried:
            return Unavailable(
                f"no other healthy node can serve {model!r}", headers={"Retry-After": "5"}
            )
        if model not in self._registry.fleet_models() and not self._in_catalog(model):
            if ":" in (asked or model):
                return not_a_provider(asked or model, model)
            return ModelNotSupported(
                f"model {model!r} is not supported: no node holds it and it is not in the catalog",
                param="model",
            )
        return Unavailable(
            f"no ready node can serve {model!r} right now (offline, draining or pending)",
            code="no_healthy_node",
            headers={"Retry-After": "5"},
        )

    def _release(self, node: NodeRecord) -> None:
        node.active -= 1
        if self._board is not None:
            self._board.publish(node.id, node.active)
        self._capacity.changed()

    # -- forwarding ------------------------------------------------------------------------

    async def forward(self, routed: Routed, incoming: dict[str, str]) -> Answer:
        """The first good answer; else the last node's own error answer, relayed as is.

        Raises LlmlbError only when no node answered at all (none could serve, the queue
        was full or timed out, every try failed before an answer began).
        """
        headers = forwarded_headers(incoming)
        tried: set[str] = set()
        answered: Answer | None = None  # the last node's own error answer, to relay
        failed: LlmlbError | None = None  # the last failure, when no node answered
        queue_wait = 0.0
        for attempt in range(1, self._settings.max_attempts + 1):
            try:
                node, waited = await self._pick(routed, frozenset(tried))
            except (Unavailable, ModelNotFound) as exc:
                if answered is not None:
                    return answered
                if failed is not None:
                    raise failed from exc
                raise
            queue_wait += waited
            if attempt == 1:
                self._metrics.queue_wait.observe(waited / 1000)
            if waited and tracing.ENABLED:
                now = time.time_ns()
                tracing.interval("llmlb.queue", now - int(waited * 1e6), now, waited_ms=waited)
            tried.add(node.id)
            if attempt > 1:
                self._metrics.retries.inc()
            try:
                if tracing.ENABLED:
                    answer = await self._traced_attempt(node, routed, headers, attempt)
                else:
                    answer = await self._attempt(node, routed, headers)
            except BaseException as exc:
                self._release(node)
                if not should_try_next(exc):
                    raise
                if marks_unreachable(exc):
                    self._registry.mark_unreachable(node.id)
                failed, answered = _upstream_error(node, exc), None
                log.warning("attempt %d on %s failed: %s", attempt, node.name, failed.message)
                continue
            answer = dataclasses.replace(answer, attempts=attempt, queue_wait_ms=queue_wait)
            if answer.chunks is not None:
                return answer  # relayed as it comes, whatever its status
            self._release(node)
            if not should_try_next(answer.status, answer.body):
                return answer
            if answer.status >= 500:
                answered, failed = answer, None
                log.warning("attempt %d on %s answered %d", attempt, node.name, answer.status)
            else:  # the node refused the router (its key, its route): not the client's doing
                failed, answered = UpstreamFailed(
                    f"node {node.name} refused the request ({answer.status}): "
                    f"{error_message(answer.body)}"
                ), None  # fmt: skip
                log.warning("attempt %d on %s: %s", attempt, node.name, failed.message)
        if answered is not None:
            return answered
        assert failed is not None
        raise failed

    async def _traced_attempt(self, node: NodeRecord, routed: Routed, headers: dict[str, str],
                              attempt: int) -> Answer:  # fmt: skip
        """``_attempt`` as a client span, its context the node's ``traceparent``."""
        with tracing.span("llmlb.attempt", "client", node=node.name, node_id=node.id,
                          attempt=attempt) as current:  # fmt: skip
            try:
                answer = await self._attempt(node, routed, tracing.inject(headers))
            except BaseException as exc:
                tracing.failed(current, describe(exc))
                raise
            if current is not None:
                current.set_attribute("llmlb.outcome", answer.status)
                if answer.status >= 500:
                    tracing.failed(current, f"the node answered {answer.status}")
            return answer

    async def _attempt(self, node: NodeRecord, routed: Routed, headers: dict[str, str]) -> Answer:
        # Known to the fleet until the node's answer begins: a node that heartbeats but does
        # not get what it is sent has its waiting exchanges called off (fleet.health), which
        # they raise as NodeStalled, to go to another node.
        token = object()
        node.sending[token] = time.monotonic()
        try:
            try:
                return await self._send(node, routed, headers, token)
            except BaseException as exc:
                if not should_retry_here(exc):
                    raise
                if isinstance(exc, NodeMixedUp):
                    log.warning("node %s answered the wrong request on a reused connection; "
                                "retrying on a fresh one (%s)", node.name, exc)  # fmt: skip
                else:  # most likely a pooled connection the node had closed: not a dead node
                    log.info("retrying on a fresh connection to %s (%s)", node.name, describe(exc))
                return await self._send(node, routed, headers, token, fresh=True)
        finally:
            node.sending.pop(token, None)

    async def _send(
        self, node: NodeRecord, routed: Routed, headers: dict[str, str], token: object,
        fresh: bool = False,
    ) -> Answer:  # fmt: skip
        if node.token:
            headers = {**headers, "authorization": f"Bearer {node.token}"}
        body = routed.body
        if node.upstream:  # an endpoint: the model by its own name for it
            body = renamed(body, node.upstream.get(routed.model, routed.model))
        # A model the node loads first answers after its load: that wait is the balancer's
        # to weigh from the node's load times, not a slow link or queue, so it is not counted.
        loaded = routed.model in node.load.models_loaded
        async with asyncio.timeout(self._settings.request_timeout):
            sent = time.monotonic()
            response = await self._transport.post(
                node.base_url, routed.path, headers, body, fresh, echoes=node.echoes_ids
            )
            node.sending.pop(token, None)  # the node has the request: its answer began
            if loaded:
                node.answered_after(time.monotonic() - sent)
            try:
                content_type = response.headers.get("content-type", "application/json")
                if routed.stream and response.status == 200:
                    first = await response.read_some()
                    if not first:
                        raise NodeCutOff("the node ended a stream before its first byte")
                else:
                    first, whole = await read_up_to(response, self._settings.max_buffered_answer)
                    if whole:
                        response.release()
                        return Answer(
                            response.status, node, content_type, body=first,
                            usage=usage_in(first), first_byte_at=time.monotonic(),
                        )  # fmt: skip
                    # Larger than the router will hold: relayed as it comes instead.
            except BaseException:
                response.close()
                raise
        chunks = relay(node.name, first, response,
                       broke=lambda exc: self._registry.mark_unreachable(node.id),
                       ended=lambda: self._release(node))  # fmt: skip
        return Answer(
            response.status, node, content_type, chunks=chunks, first_byte_at=time.monotonic()
        )


def renamed(body: bytes, model: str) -> bytes:
    """The request with ``model`` in place of the name the client used (only re-encoded when
    the names differ: most endpoints' names are the fleet's)."""
    parsed = orjson.loads(body)
    if parsed.get("model") == model:
        return body
    parsed["model"] = model
    return orjson.dumps(parsed)


def _upstream_error(node: NodeRecord, exc: BaseException) -> LlmlbError:
    if isinstance(exc, TimeoutError):
        return UpstreamTimeout(f"node {node.name} did not answer in time ({describe(exc)})")
    return UpstreamFailed(f"node {node.name} failed: {describe(exc)}")
