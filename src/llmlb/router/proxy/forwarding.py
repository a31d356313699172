"""Client requests through the router: read what routing needs, forward, record.

The proxy picks nodes and moves bytes; this module decides what a request is (model,
stream, prefix) and writes what happened to history and metrics once it is over.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
from collections.abc import AsyncGenerator, Callable
from typing import Any

import orjson

from llmlb.common import tracing
from llmlb.common.errors import BadRequest, LlmlbError
from llmlb.common.logs import ACCESS_LOGGER
from llmlb.common.names import UNKNOWN_MODEL_LABEL
from llmlb.common.settings import RouterSettings
from llmlb.common.wire import parse_object
from llmlb.router.balancer.prefixes import prefix_blocks
from llmlb.router.proxy import capabilities
from llmlb.router.proxy.failover import Answer, Proxy
from llmlb.router.proxy.images import ImageFetcher, image_urls
from llmlb.router.proxy.routing import Routed
from llmlb.router.proxy.usage import usage_in
from llmlb.router.telemetry.history import History, RequestRecord, Who
from llmlb.router.telemetry.metrics import MAX_NODE_LABELS, RouterMetrics

_BODY_LOG_LIMIT = 64 * 1024
# The usage object of a stream is in its last event; this much of the tail always holds it.
_USAGE_TAIL = 4096
# The history column's width: longer names are refused before they reach a node or a row.
MAX_MODEL_NAME = 200


access_log = logging.getLogger(ACCESS_LOGGER)


@dataclasses.dataclass(frozen=True)
class Outcome:
    """How a request ended, as history and metrics record it."""

    status: int
    node_id: str | None = None  # a node's id, or a cloud provider's name
    provider: str = "local"
    usage: dict[str, int] = dataclasses.field(default_factory=dict)
    first_byte_at: float | None = None
    attempts: int = 1
    error: str | None = None
    response_body: bytes = b""
    node_name: str | None = None  # a node's name, or a cloud provider's (a metric label)


def outcome_of(answer: Answer | None, status: int, error: str | None = None) -> Outcome:
    if answer is None:
        return Outcome(status, error=error)
    return Outcome(status, answer.node.id, "local", answer.usage, answer.first_byte_at,
                   answer.attempts, error, answer.body, answer.node.name)  # fmt: skip


@dataclasses.dataclass(frozen=True)
class _Series:
    requests: Any
    latency: Any
    ttft: Any
    tokens_in: Any
    tokens_out: Any


class Forwarder:
    def __init__(
        self,
        settings: RouterSettings,
        proxy: Proxy,
        history: History,
        metrics: RouterMetrics,
        known_model: Callable[[str], bool],
        resolve: Callable[[str], str] = lambda model: model,
        capabilities: Callable[[str], frozenset[str] | None] = lambda model: None,
        images: ImageFetcher | None = None,
    ) -> None:
        self.settings = settings
        self.proxy = proxy
        self.history = history
        self.metrics = metrics
        self._known_model = known_model
        self._resolve = resolve  # a name as typed -> the name the nodes know
        self._capabilities = capabilities  # from the catalog; None: a model it does not list
        self._images = images  # puts images given by URL inline for nodes
        # Bounded: endpoints x known models (others share one label) x status codes.
        self._metric_series: dict[tuple[str, str, str, int, str], _Series] = {}
        self._node_labels: set[str] = set()

    def route(self, endpoint: str, path: str, raw: bytes) -> Routed:
        body = parse_object(raw)
        model = body.get("model")
        if not isinstance(model, str) or not model:
            raise BadRequest("'model' is required and must be a non-empty string", param="model")
        if len(model) > MAX_MODEL_NAME:
            raise BadRequest(f"'model' is longer than {MAX_MODEL_NAME} characters", param="model")
        asked, canonical = model, self._resolve(model)
        if canonical != model:  # an alias (gpt-oss:20b): the nodes know one name only
            model = body["model"] = canonical
            raw = orjson.dumps(body)
        needs = capabilities.needed(endpoint, body)
        if self._known_model(model):  # an unknown one is a 404, later
            capabilities.check(model, endpoint, body, self._capabilities(model), needs)
        stream = body.get("stream") or False  # null is the default, as OpenAI's schema says
        if not isinstance(stream, bool):
            raise BadRequest("'stream' must be a boolean", param="stream")
        affine = self.settings.balancer == "prefix_affinity"
        prefix = prefix_blocks(model, body) if affine else ()
        # (The dialects arrive translated to chat: their images by URL are parts like these.)
        # (Only a request with images needs "vision": the others pay no scan for URLs.)
        fetch = "vision" in needs and self._images is not None and bool(image_urls(body))
        return Routed(endpoint, path, model, stream, raw, prefix, asked if asked != model else "",
                      fetch)  # fmt: skip

    async def forward(
        self, routed: Routed, headers: dict[str, str], who: Who, request_id: str
    ) -> Answer:
        """The node's answer, recorded in history and metrics once it is complete."""
        started = time.monotonic()
        try:
            if routed.fetch_images and self._images is not None:
                routed = dataclasses.replace(routed, body=await self._images.inline(routed.body))
            answer = await self.proxy.forward(routed, headers)
        except LlmlbError as exc:
            self.record(routed, request_id, who, started, outcome_of(None, exc.status, exc.message))
            raise
        except asyncio.CancelledError:  # the client left while the node was working
            self.record(routed, request_id, who, started, outcome_of(None, 499, "client left"))
            raise
        if answer.chunks is None:
            self.record(routed, request_id, who, started, outcome_of(answer, answer.status))
            return answer
        chunks = self._recorded_stream(routed, answer, answer.chunks, request_id, who, started)
        return dataclasses.replace(answer, chunks=chunks)

    async def _recorded_stream(
        self,
        routed: Routed,
        answer: Answer,
        chunks: AsyncGenerator[bytes, None],
        request_id: str,
        who: Who,
        started: float,
    ) -> AsyncGenerator[bytes, None]:
        """Relays the stream; when it ends (or the client leaves) closes the node's side at
        once and records what was seen, usage included."""
        kept: list[bytes] = []
        size = 0
        tail = b""
        pieces = 0  # generated pieces seen: the token count when the stream ends early
        status = answer.status  # a large non-200 answer is relayed as a stream too
        try:
            async with contextlib.aclosing(chunks) as relay:
                async for chunk in relay:
                    tail = (tail + chunk)[-_USAGE_TAIL:]
                    pieces += chunk.count(b'"content":"') + chunk.count(b'"text":"')
                    if self.settings.log_bodies and size < _BODY_LOG_LIMIT:
                        kept.append(chunk)
                        size += len(chunk)
                    yield chunk
        except BaseException:
            status = 499  # the client went away
            raise
        finally:
            # llama.cpp sends one piece per token; the usage event, when the stream got that
            # far, has the exact counts.
            usage = {"completion_tokens": pieces, **usage_in(tail)}
            seen = dataclasses.replace(answer, body=b"".join(kept), usage=usage)
            self.record(routed, request_id, who, started, outcome_of(seen, status))

    def _series(self, endpoint: str, model_label: str, provider: str, status: int,
                node: str | None) -> _Series:  # fmt: skip
        """The metric children of one (endpoint, model, provider, status, node): looked up
        once, not per request (prometheus_client's ``labels`` costs several microseconds a
        call)."""
        key = (endpoint, model_label, provider, status, node or "")
        series = self._metric_series.get(key)
        if series is None:
            m = self.metrics
            node_label = self._node_label(node)
            series = _Series(
                m.requests.labels(endpoint, model_label, provider, str(status)),
                m.latency.labels(endpoint, provider, node_label),
                m.ttft.labels(endpoint, provider, node_label),
                m.tokens.labels(model_label, provider, "in"),
                m.tokens.labels(model_label, provider, "out"),
            )  # fmt: skip
            self._metric_series[key] = series
        return series

    def _node_label(self, node: str | None) -> str:
        """A node's name as a label, bounded (MAX_NODE_LABELS: the rest are "other")."""
        if node is None:
            return "none"  # (refused before any node: no node's latency)
        if node not in self._node_labels and len(self._node_labels) >= MAX_NODE_LABELS:
            return "other"
        self._node_labels.add(node)
        return node

    def _model_label(self, model: str) -> str:
        """A metric label: a model the fleet or the catalog knows, or one fixed label."""
        return model if self._known_model(model) else UNKNOWN_MODEL_LABEL

    def record(
        self, routed: Routed, request_id: str, who: Who, started: float,
        outcome: Outcome,
    ) -> None:  # fmt: skip
        latency = time.monotonic() - started
        status = outcome.status
        label = self._model_label(routed.model)
        series = self._series(routed.endpoint, label, outcome.provider, status, outcome.node_name)
        series.requests.inc()
        series.latency.observe(latency)
        usage = outcome.usage
        if usage:
            series.tokens_in.inc(usage.get("prompt_tokens", 0))
            series.tokens_out.inc(usage.get("completion_tokens", 0))
        ttft = None
        if outcome.first_byte_at is not None:
            ttft = (outcome.first_byte_at - started) * 1000
            series.ttft.observe(ttft / 1000)
        if outcome.error is not None or status >= 400:
            self.metrics.errors.labels(str(status)).inc()
        if access_log.isEnabledFor(logging.INFO):  # (one check when it is off)
            _log_access(routed, request_id, who, outcome, latency, ttft)
        if tracing.ENABLED:
            _trace(routed, request_id, outcome)
        log_bodies = self.settings.log_bodies
        self.history.add(
            RequestRecord(
                ts=time.time(),
                request_id=request_id,
                key_id=who.key_id,
                user=who.user,
                endpoint=routed.endpoint,
                model=routed.model[:MAX_MODEL_NAME],
                node_id=outcome.node_id,
                status=status,
                latency_ms=round(latency * 1000, 2),
                ttft_ms=round(ttft, 2) if ttft is not None else None,
                tokens_in=usage.get("prompt_tokens"),
                tokens_out=usage.get("completion_tokens"),
                attempts=outcome.attempts,
                error=outcome.error,
                request_body=routed.body[:_BODY_LOG_LIMIT].decode(errors="replace")
                if log_bodies
                else None,
                response_body=outcome.response_body[:_BODY_LOG_LIMIT].decode(errors="replace")
                if log_bodies
                else None,
            )
        )


def _log_access(routed: Routed, request_id: str, who: Who, outcome: Outcome, latency: float,
                ttft: float | None) -> None:  # fmt: skip
    """A settled request's access line (``common.logs``): no body, the model bounded."""
    usage = outcome.usage
    fields = {
        "request_id": request_id, "key_id": who.key_id, "user": who.user,
        "endpoint": routed.endpoint, "model": routed.model[:MAX_MODEL_NAME],
        "node": outcome.node_id, "provider": outcome.provider, "status": outcome.status,
        "latency_ms": round(latency * 1000, 2),
        "ttft_ms": round(ttft, 2) if ttft is not None else None,
        "tokens_in": usage.get("prompt_tokens"), "tokens_out": usage.get("completion_tokens"),
        "attempts": outcome.attempts,
    }  # fmt: skip
    access_log.info(" ".join(f"{k}={v}" for k, v in fields.items() if v is not None),
                    extra={"fields": fields})  # fmt: skip


def _trace(routed: Routed, request_id: str, outcome: Outcome) -> None:
    """The request's span told how it ended, and the relay (first byte to last) as a child."""
    usage = outcome.usage
    tokens = {"tokens_in": usage.get("prompt_tokens"), "tokens_out": usage.get("completion_tokens")}
    tracing.annotate(request_id=request_id, endpoint=routed.endpoint,
                     model=routed.model[:MAX_MODEL_NAME], node=outcome.node_name,
                     provider=outcome.provider, status=outcome.status,
                     attempts=outcome.attempts, **tokens)  # fmt: skip
    if outcome.first_byte_at is not None:
        tracing.interval("llmlb.relay", tracing.epoch_ns(outcome.first_byte_at), time.time_ns(),
                         **tokens)  # fmt: skip
