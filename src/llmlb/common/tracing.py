"""OpenTelemetry tracing: a client request is one trace across the router and its node.

Off unless an OTLP endpoint is given (``--otlp-endpoint``, or OpenTelemetry's own
``OTEL_EXPORTER_OTLP_ENDPOINT`` / ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT``; ``OTEL_SDK_DISABLED``
turns it off again). Then spans go over OTLP/HTTP in batches, sampled as OpenTelemetry's
variables say (``OTEL_TRACES_SAMPLER``, ``OTEL_TRACES_SAMPLER_ARG``; every request by
default), named by ``OTEL_SERVICE_NAME`` or ``llmlb-router`` / ``llmlb-node``.

- The router: a server span per client request (``TracedRequests``, around the whole
  answer, a stream to its end) with ``llmlb.auth``, ``llmlb.queue`` (a wait for a node),
  one ``llmlb.attempt`` client span per node tried (its node and outcome), ``llmlb.relay``
  (first byte to last, with token counts) and ``llmlb.cloud`` for a provider's call. Each
  attempt's context goes to its node as W3C ``traceparent``; a client's own ``traceparent``
  makes the request a child of the client's span.
- The node: a server span per generation (a child of the router's attempt), with
  ``llmlb.prepare`` (validation, the model resolved), ``llmlb.engine`` (a slot, a load if the
  model was not loaded: ``llmlb.model_load``), and ``llmlb.prompt`` and ``llmlb.generation``
  placed by llama.cpp's own timings, with token counts and the time to first token.

No prompt or answer text goes into a span. When tracing is off, each point of the request
path costs one test of ``ENABLED`` (the SDK is not even imported).
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import Iterator, Mapping
from contextvars import ContextVar
from typing import TYPE_CHECKING, Any

from starlette.types import ASGIApp, Receive, Scope, Send

if TYPE_CHECKING:
    from opentelemetry.trace import Span, Tracer

log = logging.getLogger(__name__)

ENABLED = False
# Whether the request being served is sampled: its children are spans only then (an unsampled
# request's would cost the SDK's work for spans nobody keeps).
_sampled: ContextVar[bool] = ContextVar("llmlb_trace_sampled", default=True)
_tracer: Tracer | None = None
_provider: Any = None
_ENDPOINT_VARIABLES = ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT")


def configure(service: str, endpoint: str | None) -> bool:
    """Turn tracing on when an endpoint is given (here or in OpenTelemetry's variables)."""
    global ENABLED, _tracer, _provider
    if os.environ.get("OTEL_SDK_DISABLED", "").lower() == "true":
        return False
    if not endpoint and not any(os.environ.get(v) for v in _ENDPOINT_VARIABLES):
        return False
    from opentelemetry import trace
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import SERVICE_NAME, Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    traces = os.environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
    if endpoint and not traces:  # (as the variable, the base URL: /v1/traces is added)
        traces = endpoint.rstrip("/") + "/v1/traces"
    name = os.environ.get("OTEL_SERVICE_NAME") or service
    _provider = TracerProvider(resource=Resource.create({SERVICE_NAME: name}))
    _provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=traces)))
    trace.set_tracer_provider(_provider)
    _tracer = trace.get_tracer("llmlb")
    ENABLED = True
    log.info("tracing to %s as %s", traces or os.environ.get(_ENDPOINT_VARIABLES[1]), name)
    return True


def shutdown() -> None:
    """Send what is batched (at a clean stop)."""
    if _provider is not None:
        _provider.shutdown()


def _now_ns() -> int:
    return time.time_ns()


def epoch_ns(monotonic: float) -> int:
    """A ``time.monotonic()`` reading as wall-clock nanoseconds (a span's start or end)."""
    return _now_ns() - int((time.monotonic() - monotonic) * 1e9)


@contextlib.contextmanager
def span(name: str, kind: str = "internal", **attributes: Any) -> Iterator[Span | None]:
    """A child of the current span while the block runs; nothing when tracing is off or the
    request is not sampled."""
    if not ENABLED or _tracer is None or not _sampled.get():
        yield None
        return
    from opentelemetry.trace import SpanKind

    with _tracer.start_as_current_span(name, kind=SpanKind[kind.upper()],
                                       attributes=_clean(attributes)) as current:  # fmt: skip
        yield current


def interval(name: str, start_ns: int, end_ns: int, **attributes: Any) -> None:
    """A finished child of the current span, placed by its own times (a queue wait, llama.cpp's
    prompt and generation)."""
    if not ENABLED or _tracer is None or not _sampled.get():
        return
    child = _tracer.start_span(name, start_time=start_ns, attributes=_clean(attributes))
    child.end(end_time=max(end_ns, start_ns))


def annotate(**attributes: Any) -> None:
    """Attributes on the current span (the request's, where no child is open)."""
    if not ENABLED or not _sampled.get():
        return
    from opentelemetry import trace

    trace.get_current_span().set_attributes(_clean(attributes))


def failed(current: Span | None, message: str) -> None:
    if current is not None:
        from opentelemetry.trace import Status, StatusCode

        current.set_status(Status(StatusCode.ERROR, message[:300]))


def inject(headers: dict[str, str]) -> dict[str, str]:
    """``headers`` with the current span's ``traceparent`` (and ``tracestate``)."""
    if not ENABLED:
        return headers
    from opentelemetry.propagate import inject as propagate

    carried = dict(headers)
    propagate(carried)
    return carried


def _clean(attributes: Mapping[str, Any]) -> dict[str, Any]:
    return {f"llmlb.{k}": v for k, v in attributes.items() if v is not None}


class TracedRequests:
    """ASGI middleware: a server span around each request to ``paths`` (its whole answer,
    a stream to its last byte), a child of the caller's ``traceparent`` when it sends one."""

    def __init__(self, app: ASGIApp, paths: frozenset[str], prefix: str) -> None:
        self.app = app
        self._paths = paths
        self._prefix = prefix

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] not in self._paths or _tracer is None:
            await self.app(scope, receive, send)
            return
        from opentelemetry.propagate import extract
        from opentelemetry.trace import SpanKind, Status, StatusCode

        carrier = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]
                   if k in (b"traceparent", b"tracestate")}  # fmt: skip
        status = 500
        name = f"{self._prefix} {scope['method']} {scope['path']}"

        async def sending(message: Any) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        with _tracer.start_as_current_span(
            name, context=extract(carrier), kind=SpanKind.SERVER,
            attributes={"http.request.method": scope["method"], "url.path": scope["path"]},
        ) as current:  # fmt: skip
            if not current.is_recording():  # (not sampled: the context still goes on)
                token = _sampled.set(False)
                try:
                    await self.app(scope, receive, send)
                finally:
                    _sampled.reset(token)
                return
            try:
                await self.app(scope, receive, sending)
            finally:
                current.set_attribute("http.response.status_code", status)
                if status >= 500:
                    current.set_status(Status(StatusCode.ERROR))
