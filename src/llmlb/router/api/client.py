"""The client API: OpenAI-compatible endpoints, forwarded to nodes."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response

from llmlb.common.asgi import (
    ClosingStreamingResponse,
    ORJSONResponse,
    read_body,
    until_disconnected,
)
from llmlb.router.api.common import authorize, service_of

_TRACE_HEADERS = ("traceparent", "tracestate")


async def _forward(request: Request, endpoint: str) -> Response:
    service = service_of(request)
    principal = await authorize(request, "api")
    raw = await read_body(request, service.settings.max_body_bytes)
    forwarder = service.forwarder
    routed = forwarder.route(endpoint, request.url.path, raw)
    request_id = request.scope["state"]["request_id"]
    headers = {"x-request-id": request_id}
    for name in _TRACE_HEADERS:
        if name in request.headers:
            headers[name] = request.headers[name]
    forwarding = forwarder.forward(routed, headers, principal.key_id, request_id)
    # A client that leaves before the answer starts takes the node's work with it.
    answer = await until_disconnected(request, forwarding)
    extra = {"x-llmlb-node": answer.node.name, "x-llmlb-attempts": str(answer.attempts)}
    if answer.queue_wait_ms >= 1:
        extra["x-llmlb-queue-wait-ms"] = str(round(answer.queue_wait_ms))
    if answer.chunks is not None:
        extra.update({"cache-control": "no-cache", "x-accel-buffering": "no"})
        return ClosingStreamingResponse(
            answer.chunks, status_code=answer.status, media_type=answer.content_type,
            headers=extra,
        )  # fmt: skip
    return Response(
        answer.body, status_code=answer.status, media_type=answer.content_type, headers=extra
    )


async def chat_completions(request: Request) -> Response:
    return await _forward(request, "chat")


async def completions(request: Request) -> Response:
    return await _forward(request, "completion")


async def embeddings(request: Request) -> Response:
    return await _forward(request, "embeddings")


async def models(request: Request) -> Response:
    await authorize(request, "api")
    return ORJSONResponse({"object": "list", "data": service_of(request).fleet.model_list()})
