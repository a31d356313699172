"""The client API: OpenAI-compatible endpoints, forwarded to nodes.

The three OpenAI POST endpoints are the router's hot path. ``ClientRoutes`` serves them as bare ASGI
in front of Starlette's middleware, routing and exception handling, which together cost about
as much as forwarding itself (``bench/router_overhead.py``); everything else, ``/v1/models``
included, goes through the app as usual. Requests that need translation (a cloud model, the
Responses and Messages dialects) branch off to ``translated`` once the body is read.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send

from llmlb.common import tracing
from llmlb.common.asgi import ORJSONResponse, StreamRelay, error_response, read_body, request_id_of
from llmlb.common.compression import MIN_COMPRESSED, accepts_gzip, gzipped
from llmlb.common.departure import DEPARTURE_KEY, Departure
from llmlb.common.errors import LlmlbError, MethodNotAllowed, ModelNotFound, NotFound
from llmlb.common.logs import request_id_var
from llmlb.router.api import ollama, translated
from llmlb.router.api.common import authorize, service_of
from llmlb.router.cloud import Caller, prefix_of

log = logging.getLogger(__name__)

ENDPOINTS = {"/v1/chat/completions": "chat", "/v1/completions": "completion",
             "/v1/embeddings": "embeddings", "/v1/responses": "responses",
             "/v1/messages": "messages",
             "/v1/messages/count_tokens": "count_tokens",
             # Ollama's API (router.api.ollama)
             "/api/chat": "ollama_chat", "/api/generate": "ollama_generate",
             "/api/embed": "ollama_embed", "/api/embeddings": "ollama_embeddings"}  # fmt: skip
_DIALECTS = {"responses": translated.serve_responses, "messages": translated.serve_messages,
             "count_tokens": translated.serve_count_tokens,
             "ollama_chat": ollama.serve_chat, "ollama_generate": ollama.serve_generate,
             "ollama_embed": ollama.serve_embed,
             "ollama_embeddings": ollama.serve_embeddings}  # fmt: skip
# Anthropic's clients read errors in Anthropic's shape, an unknown route's 404 included;
# Ollama's in Ollama's.
_ANTHROPIC = ("messages", "count_tokens")
_OLLAMA = ("ollama_chat", "ollama_generate", "ollama_embed", "ollama_embeddings")
_TRACE_HEADERS = ("traceparent", "tracestate")


class ClientRoutes:
    """ASGI middleware that answers ``ENDPOINTS`` itself and passes on everything else."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        endpoint = ENDPOINTS.get(scope["path"]) if scope["type"] == "http" else None
        if endpoint is None:
            if scope["type"] == "http" and scope["path"].startswith("/v1/messages/"):
                missing = NotFound(f"no route {scope['path'][:100]!r}", code="not_found")
                await translated.anthropic_error(missing)(scope, receive, send)
                return
            await self.app(scope, receive, send)
            return
        started = time.monotonic()
        request_id = request_id_of(scope)
        token = request_id_var.set(request_id)
        try:
            response: Response | StreamRelay
            try:
                if scope["method"] != "POST":
                    raise MethodNotAllowed("use POST", headers={"Allow": "POST"})
                response = await _forward(Request(scope, receive), endpoint, request_id)
            except LlmlbError as exc:
                if exc.status >= 500:
                    log.warning("%s %s failed: %s", scope["method"], scope["path"], exc.message)
                response = (translated.anthropic_error(exc) if endpoint in _ANTHROPIC
                            else ollama.error(exc) if endpoint in _OLLAMA
                            else error_response(exc))  # fmt: skip
            response.headers["x-request-id"] = request_id
            if isinstance(response, Response) and len(response.body) >= MIN_COMPRESSED:
                response = _gzipped_if_accepted(response, scope)
            await response(scope, receive, send)
            log.info("%s %s %d %.1f ms", scope["method"], scope["path"], response.status_code,
                     (time.monotonic() - started) * 1000)  # fmt: skip
        finally:
            departure = scope.pop(DEPARTURE_KEY, None)
            if departure is not None:
                departure.close()
            request_id_var.reset(token)


def _gzipped_if_accepted(response: Response, scope: Scope) -> Response:
    """A whole answer, gzipped for a client that accepts it (common.compression)."""
    accept = next((v for n, v in scope["headers"] if n == b"accept-encoding"), b"")
    if not accepts_gzip(accept.decode("latin-1")) or "content-encoding" in response.headers:
        return response
    headers = {k: v for k, v in response.headers.items() if k != "content-length"}
    zipped = Response(gzipped(bytes(response.body)), response.status_code, headers=headers)
    zipped.headers["content-encoding"] = "gzip"
    zipped.headers["vary"] = "accept-encoding"
    return zipped


async def _forward(request: Request, endpoint: str, request_id: str) -> Response | StreamRelay:
    service = service_of(request)
    if tracing.ENABLED:
        with tracing.span("llmlb.auth"):
            principal = await authorize(request, "api")
    else:
        principal = await authorize(request, "api")
    raw = await read_body(request, service.settings.max_body_bytes)
    # From here on, one watcher sees the client leave, through to the end of a stream.
    departure = request.scope[DEPARTURE_KEY] = Departure(request.receive, request.scope)
    allowance = service.allowances.of(principal)
    if allowance is not None and allowance.checked:
        model = _model_of(raw, service.fleet.resolve)
        service.limiter.admit(allowance, model, request_id, len(raw))
    who = principal.who
    headers = {"x-request-id": request_id}
    for name in _TRACE_HEADERS:
        if name in request.headers:
            headers[name] = request.headers[name]
    if endpoint in _DIALECTS:
        caller = Caller(request_id, who, headers)
        return await departure.guard(_DIALECTS[endpoint](service.gateway, raw, caller))
    forwarder = service.forwarder
    routed = forwarder.route(endpoint, request.scope["path"], raw)
    if prefix_of(routed.model) is not None:
        caller = Caller(request_id, who, headers)
        work = translated.cloud(service.gateway, endpoint, request.scope["path"], raw, caller)
        return await departure.guard(work)
    forwarding = forwarder.forward(routed, headers, who, request_id)
    # A client that leaves before the answer starts takes the node's work with it.
    answer = await departure.guard(forwarding)
    extra = {"x-llmlb-node": answer.node.name, "x-llmlb-attempts": str(answer.attempts)}
    if answer.queue_wait_ms >= 1:
        extra["x-llmlb-queue-wait-ms"] = str(round(answer.queue_wait_ms))
    if answer.chunks is not None:
        extra.update({"cache-control": "no-cache", "x-accel-buffering": "no"})
        return StreamRelay(answer.chunks, answer.status, answer.content_type, extra)
    return Response(
        answer.body, status_code=answer.status, media_type=answer.content_type, headers=extra
    )


def _model_of(raw: bytes, resolve: Callable[[str], str]) -> str | None:
    """The model a request names, resolved (aliases to their model); None when it names
    none (the request is refused for that later, with the reason)."""
    try:
        model = orjson.loads(raw).get("model")
    except (orjson.JSONDecodeError, AttributeError):
        return None
    if not isinstance(model, str):
        return None
    try:
        return resolve(model)
    except LlmlbError:
        return model


async def models(request: Request) -> Response:
    """The models a client may name: ``?available=true`` only those that answer now. In
    Anthropic's shape for Anthropic's clients (they send ``anthropic-version``)."""
    await authorize(request, "api")
    rows = await _model_rows(request)
    if request.query_params.get("available") in ("1", "true"):
        rows = [row for row in rows if row.get("available", True)]
    if "anthropic-version" in request.headers:
        data = [_anthropic_model(row) for row in rows]
        return ORJSONResponse({"data": data, "has_more": False,
                               "first_id": data[0]["id"] if data else None,
                               "last_id": data[-1]["id"] if data else None})  # fmt: skip
    return ORJSONResponse({"object": "list", "data": rows})


async def model(request: Request) -> Response:
    """One model (the OpenAI SDK's ``models.retrieve``), by its id or an alias."""
    await authorize(request, "api")
    wanted = request.path_params["model"]
    rows = await _model_rows(request)
    found = next((row for row in rows if wanted == row["id"]
                  or wanted in (row.get("aliases") or ())), None)  # fmt: skip
    if found is None:
        raise ModelNotFound(f"no model {wanted[:200]!r} in the fleet, the catalog or a "
                            "configured provider", param="model")  # fmt: skip
    if "anthropic-version" in request.headers:
        return ORJSONResponse(_anthropic_model(found))
    return ORJSONResponse(found)


async def _model_rows(request: Request) -> list[dict[str, Any]]:
    service = service_of(request)
    cloud = await service.clouds.model_list()
    return service.fleet.model_list() + cloud


def _anthropic_model(row: dict[str, Any]) -> dict[str, Any]:
    created = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(int(row.get("created") or 0)))
    return {"type": "model", "id": row["id"], "display_name": row["id"], "created_at": created,
            "lifecycle": "active"}  # fmt: skip
