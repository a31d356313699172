"""A loopback OTLP/HTTP trace receiver: what a collector gets from llmlb's exporters,
decoded from the protobuf (``ExportTraceServiceRequest``) into plain spans."""

from __future__ import annotations

import gzip
import threading
from dataclasses import dataclass, field
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from tests.support import ThreadServer


@dataclass
class Span:
    service: str
    name: str
    trace_id: str
    span_id: str
    parent_id: str  # "" for a root
    kind: int  # OTLP's: 1 internal, 2 server, 3 client
    attributes: dict[str, Any]
    start_ns: int
    end_ns: int
    error: bool


def _value(value: Any) -> Any:
    kind = value.WhichOneof("value")
    return getattr(value, kind) if kind else None


@dataclass
class Receiver:
    spans: list[Span] = field(default_factory=list)
    url: str = ""
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _server: ThreadServer | None = None

    async def _traces(self, request: Request) -> Response:
        from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
            ExportTraceServiceRequest,
            ExportTraceServiceResponse,
        )

        body = await request.body()
        if request.headers.get("content-encoding") == "gzip":
            body = gzip.decompress(body)
        exported = ExportTraceServiceRequest.FromString(body)
        spans = []
        for resource in exported.resource_spans:
            attributes = {a.key: _value(a.value) for a in resource.resource.attributes}
            service = str(attributes.get("service.name", ""))
            for scope in resource.scope_spans:
                for span in scope.spans:
                    spans.append(Span(
                        service, span.name, span.trace_id.hex(), span.span_id.hex(),
                        span.parent_span_id.hex(), int(span.kind),
                        {a.key: _value(a.value) for a in span.attributes},
                        span.start_time_unix_nano, span.end_time_unix_nano,
                        span.status.code == 2,
                    ))  # fmt: skip
        with self._lock:
            self.spans.extend(spans)
        return Response(ExportTraceServiceResponse().SerializeToString(),
                        media_type="application/x-protobuf")  # fmt: skip

    def start(self) -> Receiver:
        app = Starlette(routes=[Route("/v1/traces", self._traces, methods=["POST"])])
        self._server = ThreadServer(app)
        self.url = self._server.url
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.stop()

    def trace(self, trace_id: str) -> list[Span]:
        with self._lock:
            return [s for s in self.spans if s.trace_id == trace_id]
