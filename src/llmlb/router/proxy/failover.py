"""Forwarding client requests to nodes: choice, queueing, failover, streaming passthrough.

Bodies travel as the bytes the client sent; the router reads only ``model`` and ``stream``
(plus the prompt's text for ``prefix_affinity``). A connect error, a 5xx or a timeout before the
first byte of the answer moves the request to the next node (never the same one twice);
after the first byte has gone to the client, a failure ends the stream with one error event.
When every node that could serve is at its concurrency limit the request waits in a bounded
queue: a full queue answers 429, a wait past ``queue_timeout`` 504.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import random
import time
from collections.abc import AsyncGenerator, Callable
from dataclasses import dataclass, field

import orjson

from llmlb.common.asgi import LastChunk
from llmlb.common.errors import (
    LlmlbError,
    ModelNotFound,
    ModelNotSupported,
    Overloaded,
    Unavailable,
    UpstreamFailed,
    UpstreamTimeout,
    describe,
    error_body,
)
from llmlb.common.settings import RouterSettings
from llmlb.common.wire import error_message
from llmlb.router.balancer.prefixes import PrefixIndex
from llmlb.router.balancer.ranking import NodeSnapshot, rank
from llmlb.router.cloud.clouds import not_a_provider
from llmlb.router.fleet.node_record import NodeRecord
from llmlb.router.fleet.registry import Registry
from llmlb.router.proxy.nodelink import (
    NodeCutOff,
    NodeHungUp,
    NodeLinkError,
    NodeLinks,
    NodeMixedUp,
    NodeResponse,
    NodeUnreachable,
)
from llmlb.router.proxy.usage import usage_in
from llmlb.router.telemetry.metrics import RouterMetrics

log = logging.getLogger(__name__)

_FORWARDED_HEADERS = ("x-request-id", "traceparent", "tracestate")
# Nodes ranked per request when more hold the model (see Proxy.choose).
SAMPLE = 16


class NodeStalled(TimeoutError):
    """The node heartbeats but does not get the requests sent to it (Registry._stall)."""


# Failures before the first byte that another node may not have (TimeoutError: asyncio.timeout,
# NodeStalled, a node silent for request_timeout).
_RETRYABLE = (NodeLinkError, TimeoutError)


@dataclass
class Routed:
    """What the router knows of a client request."""

    endpoint: str
    path: str
    model: str
    stream: bool
    body: bytes
    prefix: tuple[int, ...] = ()  # prompt block keys, for prefix_affinity
    asked: str = ""  # the model as the client typed it, where that was another name


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


class Capacity:
    """Wakes every queued request when capacity may have appeared.

    A slot freed on one node can serve a request for a model another waiter does not want,
    and capacity also appears without any release (a node registers, turns ready, is
    approved or undrained, loads a model): so every change wakes every waiter, and each one
    ranks the fleet again. Waiters are bounded by the queue size, so this stays cheap.
    """

    def __init__(self) -> None:
        self._event = asyncio.Event()

    def changed(self) -> None:
        self._event.set()
        self._event = asyncio.Event()

    async def wait(self, seconds: float) -> None:
        """Until the next change or ``seconds``, whichever comes first."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(seconds):
                await self._event.wait()


def traceparent() -> str:
    """A new W3C trace context: random, non-zero trace and span ids. They identify, they do
    not protect, so the process's PRNG serves (no system call per request)."""
    trace, span = random.getrandbits(128) or 1, random.getrandbits(64) or 1
    return f"00-{trace:032x}-{span:016x}-01"


def forwarded_headers(incoming: dict[str, str]) -> dict[str, str]:
    """The headers a node gets: the client's request id and trace context, and a new trace
    context when the client sent none."""
    headers = {"content-type": "application/json"}
    for name in _FORWARDED_HEADERS:
        value = incoming.get(name)
        # Never a line break into the node's request (the server's parser refuses them
        # already: this keeps it true whatever serves the router).
        if value is not None and "\r" not in value and "\n" not in value:
            headers[name] = value
    headers.setdefault("traceparent", traceparent())
    return headers


class Proxy:
    def __init__(
        self,
        registry: Registry,
        settings: RouterSettings,
        links: NodeLinks,
        metrics: RouterMetrics,
        capacity: Capacity,
        in_catalog: Callable[[str], bool] = lambda model: False,
    ) -> None:
        self._links = links
        self._in_catalog = in_catalog
        self._registry = registry
        self._settings = settings
        self._metrics = metrics
        self._capacity = capacity
        self._waiting = 0
        self._rotation = 0
        self._prefixes = PrefixIndex()

    @property
    def waiting(self) -> int:
        """Requests queued for a free node now."""
        return self._waiting

    # -- choosing a node -------------------------------------------------------------------

    async def _pick(self, routed: Routed, tried: frozenset[str]) -> tuple[NodeRecord, float]:
        """The best node for the request, waiting (bounded) while all are busy."""
        started = time.monotonic()
        deadline = started + self._settings.queue_timeout
        queued = False
        fetchable = self._in_catalog(routed.model)
        try:
            while True:
                node = self.choose(routed, tried, fetchable)
                if node is not None:
                    node.active += 1
                    return node, (time.monotonic() - started) * 1000
                snapshots = self._registry.snapshots()
                able = [
                    s for s in snapshots
                    if s.serving and (fetchable or s.has(routed.model)) and s.id not in tried
                ]  # fmt: skip
                if not able:
                    raise self._no_node(routed.model, tried, routed.asked)
                if not queued:
                    if self._waiting >= self._settings.queue_size:
                        raise Overloaded(
                            f"every node serving {routed.model!r} is busy and the queue "
                            f"is full ({self._settings.queue_size})",
                            headers={"Retry-After": "1"},
                        )
                    queued = True
                    self._waiting += 1
                    self._metrics.queue_depth.set(self._waiting)
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise UpstreamTimeout(
                        f"waited {self._settings.queue_timeout:.0f} s for a free node "
                        f"serving {routed.model!r}",
                        code="queue_timeout",
                    )
                await self._capacity.wait(remaining)
        finally:
            if queued:
                self._waiting -= 1
                self._metrics.queue_depth.set(self._waiting)

    def choose(self, routed: Routed, tried: frozenset[str], fetchable: bool) -> NodeRecord | None:
        """The best node that can take the request now; None when every one is busy.

        Where more than ``SAMPLE`` nodes hold the model, the best of ``SAMPLE`` of them
        chosen at random (the "power of d choices": close to the best of all, at a cost
        that does not grow with the fleet); all of them only when none of those can serve.
        Nodes without the model come last, and only for a model in the catalog.
        """
        self._rotation += 1
        affinity = self._prefixes.match(routed.prefix) if routed.prefix else {}
        holders = len(self._registry.fleet_models().get(routed.model, ()))
        passes = [SAMPLE, 0] if holders > SAMPLE else [0]
        ranked: list[NodeSnapshot] = []
        for sample in passes:
            snapshots = self._registry.candidates(routed.model, sample, include=list(affinity))
            if ranked := self._rank(snapshots, routed, tried, affinity):
                break
        if not ranked and fetchable:
            ranked = self._rank(self._registry.snapshots(), routed, tried, affinity, True)
        if not ranked:
            return None
        if routed.prefix:
            self._prefixes.add(routed.prefix, ranked[0].id)
        return self._registry.get(ranked[0].id)

    def _rank(
        self, snapshots: list[NodeSnapshot], routed: Routed, tried: frozenset[str],
        affinity: dict[str, int], fetchable: bool = False,
    ) -> list[NodeSnapshot]:  # fmt: skip
        return rank(
            snapshots, routed.model, self._settings.balancer, rotation=self._rotation,
            affinity=affinity, cached=self._prefixes.blocks_of if routed.prefix else None,
            exclude=tried, fetchable=fetchable,
        )  # fmt: skip

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
        self._capacity.changed()

    # -- forwarding ------------------------------------------------------------------------

    async def forward(self, routed: Routed, incoming: dict[str, str]) -> Answer:
        """The first good answer; else the last node's own error answer, relayed as is.

        Raises LlmlbError only when no node answered at all (none could serve, the queue
        was full or timed out, every attempt failed to connect).
        """
        headers = forwarded_headers(incoming)
        tried: set[str] = set()
        last: Answer | LlmlbError | None = None
        queue_wait = 0.0
        for attempt in range(1, self._settings.max_attempts + 1):
            try:
                node, waited = await self._pick(routed, frozenset(tried))
            except (Unavailable, ModelNotFound) as exc:
                if last is None:
                    raise
                return _final(last, exc)
            queue_wait += waited
            tried.add(node.id)
            if attempt > 1:
                self._metrics.retries.inc()
            try:
                answer = await self._attempt(node, routed, headers)
            except _RETRYABLE as exc:
                self._release(node)
                if isinstance(exc, NodeUnreachable):
                    # A fresh connection failed: no traffic until a probe gets through.
                    self._registry.mark_unreachable(node.id)
                last = _upstream_error(node, exc)
                log.warning("attempt %d on %s failed: %s", attempt, node.name, last.message)
                continue
            except BaseException:
                self._release(node)
                raise
            answer = dataclasses.replace(answer, attempts=attempt, queue_wait_ms=queue_wait)
            if answer.chunks is None:
                self._release(node)
                if answer.status >= 500:
                    last = answer
                    log.warning("attempt %d on %s answered %d", attempt, node.name, answer.status)
                    continue
                if _node_side_refusal(answer):
                    last = UpstreamFailed(
                        f"node {node.name} refused the request ({answer.status}): "
                        f"{error_message(answer.body)}"
                    )
                    log.warning("attempt %d on %s: %s", attempt, node.name, last.message)
                    continue
            return answer
        assert last is not None
        return _final(last, None)

    async def _attempt(self, node: NodeRecord, routed: Routed, headers: dict[str, str]) -> Answer:
        # Seen by the registry until the first byte: a node that stops getting requests while
        # it heartbeats has these called off (Registry._stall), to go to another node.
        task = asyncio.current_task()
        assert task is not None
        node.sending[task] = time.monotonic()
        try:
            return await self._attempt_once_or_twice(node, routed, headers)
        except asyncio.CancelledError:
            if task in node.called_off and task.uncancel() == 0:
                raise NodeStalled(f"node {node.name} is not receiving requests") from None
            raise
        finally:
            node.sending.pop(task, None)
            node.called_off.discard(task)

    async def _attempt_once_or_twice(
        self, node: NodeRecord, routed: Routed, headers: dict[str, str]
    ) -> Answer:
        try:
            return await self._send(node, routed, headers)
        except NodeHungUp as exc:
            # Most likely a pooled keep-alive connection the node had already closed (it does
            # after an error answer): not a dead node. Once more, on a connection of its own.
            log.info("retrying on a fresh connection to %s (%s)", node.name, describe(exc))
            return await self._send(node, routed, headers, fresh=True)
        except NodeMixedUp as exc:
            # The pooled connection held an answer to an earlier request (dropped, never
            # delivered): this request may yet be served, on a connection of its own.
            log.warning("node %s answered the wrong request on a reused connection; retrying "
                        "on a fresh one (%s)", node.name, exc)  # fmt: skip
            return await self._send(node, routed, headers, fresh=True)

    async def _send(
        self, node: NodeRecord, routed: Routed, headers: dict[str, str], fresh: bool = False
    ) -> Answer:
        if node.token:
            headers = {**headers, "authorization": f"Bearer {node.token}"}
        async with asyncio.timeout(self._settings.request_timeout):
            response = await self._links.post(
                node.base_url, routed.path, headers, routed.body, fresh
            )
            # The node has the request (its answer began): no longer a candidate for a stall.
            node.sending.pop(asyncio.current_task(), None)  # type: ignore[arg-type]
            try:
                content_type = response.headers.get("content-type", "application/json")
                if routed.stream and response.status == 200:
                    first = await response.read_some()
                    if not first:
                        raise NodeCutOff("the node ended a stream before its first byte")
                else:
                    first, whole = await _read_up_to(response, self._settings.max_buffered_answer)
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
        chunks = self._relay(node, first, response)
        return Answer(
            response.status, node, content_type, chunks=chunks, first_byte_at=time.monotonic()
        )

    async def _relay(
        self, node: NodeRecord, first: bytes, response: NodeResponse
    ) -> AsyncGenerator[bytes, None]:
        """The node's stream as it comes; whoever iterates it must close it (``aclosing``).
        Bytes that end the node's stream come as a ``LastChunk``."""
        try:
            yield LastChunk(first) if response.at_eof() else first
            while chunk := await response.read_some():
                yield LastChunk(chunk) if response.at_eof() else chunk
        except _RETRYABLE as exc:
            self._registry.mark_unreachable(node.id)
            message = f"node {node.name} failed mid-stream: {describe(exc)}"
            log.warning(message)
            yield b"data: " + orjson.dumps(error_body(message, "upstream_error")) + b"\n\n"
            yield b"data: [DONE]\n\n"
        finally:
            # Closing (not releasing) drops the connection when the client left early, which
            # is how the node learns to stop generating.
            if response.at_eof():
                response.release()
            else:
                response.close()
            self._release(node)


async def _read_up_to(response: NodeResponse, limit: int) -> tuple[bytes, bool]:
    """The body, or its first ``limit``-odd bytes when it is longer: (bytes, whole)."""
    if response.content_length is not None and response.content_length > limit:
        return await response.read_some(), False
    parts: list[bytes] = []
    size = 0
    while chunk := await response.read_some():
        parts.append(chunk)
        size += len(chunk)
        if size > limit:
            return b"".join(parts), False
    return b"".join(parts), True


def _node_side_refusal(answer: Answer) -> bool:
    """A 4xx that is the node's problem, not the client's: it refused the router's key
    (401/403), or it lacks the route (404 that is not about the model)."""
    if answer.status in (401, 403):
        return True
    return answer.status == 404 and b'"model_not_' not in answer.body


def _final(last: Answer | LlmlbError, reason: LlmlbError | None) -> Answer:
    """After the last attempt: a node's own answer is relayed, an error raised."""
    if isinstance(last, Answer):
        return last
    if reason is not None:
        raise last from reason
    raise last


def _upstream_error(node: NodeRecord, exc: BaseException) -> LlmlbError:
    if isinstance(exc, TimeoutError):
        return UpstreamTimeout(f"node {node.name} did not answer in time ({describe(exc)})")
    return UpstreamFailed(f"node {node.name} failed: {describe(exc)}")
