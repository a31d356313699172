"""The node's HTTP API (Starlette): parse, call the service, answer."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import orjson
from prometheus_client import CONTENT_TYPE_LATEST
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from llmlb.common import tracing
from llmlb.common.asgi import (
    EXCEPTION_HANDLERS,
    ClosingStreamingResponse,
    ORJSONResponse,
    RequestIdMiddleware,
    log_lines,
    read_json,
)
from llmlb.common.credentials import bearer_token, same_secret
from llmlb.common.departure import until_disconnected
from llmlb.common.errors import AuthenticationFailed, BadRequest, LlmlbError, NotFound
from llmlb.common.logs import level_change, levels, set_level
from llmlb.common.openapi import document, routes_of
from llmlb.common.tracing import TracedRequests
from llmlb.node.assemble import Endpoint
from llmlb.node.router_links import RouterLinks
from llmlb.node.service import NodeService
from llmlb.node.validation import ChatRequest

log = logging.getLogger(__name__)
SSE_HEADERS = {"cache-control": "no-cache", "x-accel-buffering": "no"}
MAX_LEVEL_CHANGE_BYTES = 4096


NODE_PROBES = {"/health", "/startup", "/metrics", "/openapi.json"}
TRACED_PATHS = frozenset({"/v1/chat/completions", "/v1/completions", "/v1/embeddings"})


def create_app(service: NodeService, links: RouterLinks | None = None) -> Starlette:
    limit = service.settings.max_body_bytes
    inventory, inference = service.inventory, service.inference
    token = service.settings.node_token

    def guarded(handler: Any) -> Any:
        """With a router, only callers holding the node's key (the router) get in."""
        if not token:
            return handler

        async def check(request: Request) -> Response:
            offered = bearer_token(request.headers.get("authorization"))
            if offered is None or not same_secret(offered, token):
                raise AuthenticationFailed(
                    "this node serves its router only: send the node key as a bearer token"
                )
            return await handler(request)  # type: ignore[no-any-return]

        return check

    async def _body(request: Request) -> dict[str, Any]:
        return await read_json(request, limit)

    def _generation(endpoint: Endpoint) -> Any:
        async def handler(request: Request) -> Response:
            with service.handling():
                return await generate(request)

        async def generate(request: Request) -> Response:
            body = await _body(request)
            try:
                if body.get("stream") is True:
                    frames = await inference.open_stream(endpoint, body)
                    response: Response = ClosingStreamingResponse(
                        frames, media_type="text/event-stream", headers=SSE_HEADERS
                    )
                else:
                    answer = await until_disconnected(request, inference.complete(endpoint, body))
                    response = ORJSONResponse(answer)
            except LlmlbError as exc:
                service.metrics.errors.labels(exc.code or exc.error_type).inc()
                label = inventory.model_label(body)
                service.metrics.requests.labels(endpoint, label, str(exc.status)).inc()
                raise
            service.metrics.requests.labels(endpoint, inventory.model_label(body), "200").inc()
            return response

        return handler

    async def count_tokens(request: Request) -> Response:
        with service.handling():
            body = await _body(request)
            return ORJSONResponse(await inference.count_tokens(body))

    async def embeddings(request: Request) -> Response:
        with service.handling():
            return await embed(request)

    async def embed(request: Request) -> Response:
        body = await _body(request)
        try:
            result = await inference.embeddings(body)
        except LlmlbError as exc:
            service.metrics.errors.labels(exc.code or exc.error_type).inc()
            raise
        service.metrics.requests.labels("embeddings", inventory.model_label(body), "200").inc()
        return ORJSONResponse(result)

    async def models(request: Request) -> Response:
        return ORJSONResponse({"object": "list", "data": inventory.list_models()})

    async def pull(request: Request) -> Response:
        body = await _body(request)
        name = body.get("model")
        if not isinstance(name, str):
            raise BadRequest("'model' is required", param="model")
        assign = body.get("assign") is True  # the router assigns it (see node.sync)
        return ORJSONResponse(await inventory.pull(name, assign=assign), status_code=202)

    async def downloads(request: Request) -> Response:
        return ORJSONResponse({"data": service.resolver.active_progress()})

    async def download(request: Request) -> Response:
        name = service.resolver.canonical(request.path_params["name"])
        progress = service.resolver.progress_of(name)
        if progress is None:
            raise NotFound(f"no download of {name!r} and it is not here", code="not_found")
        return ORJSONResponse(progress)

    async def delete_model(request: Request) -> Response:
        await inventory.delete_model(request.path_params["name"])
        return Response(status_code=204)

    async def logs(request: Request) -> Response:
        """The node's recent log lines (``limit``, ``level``, ``after``: a line's ``seq``)."""
        return ORJSONResponse({"data": log_lines(request)})

    async def log_levels(request: Request) -> Response:
        if request.method == "PUT":  # (common.logs: existing loggers only, secrets' kept)
            name, level = level_change(await read_json(request, MAX_LEVEL_CHANGE_BYTES))
            set_level(name, level)
            log.warning("log level of %s set to %s", name or "the root logger",
                        level or "its parent's")  # fmt: skip
        return ORJSONResponse({"data": levels()})

    async def health(request: Request) -> Response:
        health = service.health()
        if links is not None and links.current():
            health["routers"] = [link.status() for link in links.current()]
            health["router"] = health["routers"][0]
            if not any(status["connected"] for status in health["routers"]):
                health["status"] = "degraded"  # serving, but no router hears us
        return ORJSONResponse(health)

    async def startup(request: Request) -> Response:
        """503 until the node can do its job: registered (with a router) and the models the
        router assigned are on disk."""
        state = service.reported_state()
        waiting_for = []
        if state == "initializing":
            waiting_for.append("assigned models")
        if links is not None and all(link.node_id is None for link in links.current()):
            waiting_for.append("registration with the router")
        body = {"state": state, "waiting_for": waiting_for}
        return ORJSONResponse(body, status_code=503 if waiting_for else 200)

    async def openapi_json(request: Request) -> Response:
        """This node's OpenAPI document (public: it names routes, not data)."""
        return Response(request.app.state.openapi, media_type="application/json")

    async def metrics(request: Request) -> Response:
        return Response(service.metrics.render(), media_type=CONTENT_TYPE_LATEST)

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        service.state = "ready"
        if links is not None:
            await links.start()
        try:
            yield
        finally:
            service.state = "draining"
            # Each link never dies with an error (see RouterLink.run); each says goodbye.
            if links is not None:
                await links.close()
            await service.pool.close()
            await service.resolver.close()

    # A generation's span (common.tracing), a child of the router's attempt.
    traced = [Middleware(TracedRequests, paths=TRACED_PATHS, prefix="llmlb.node")]
    traced = traced if tracing.ENABLED else []
    app = Starlette(
        routes=[
            Route("/v1/chat/completions", guarded(_generation("chat")), methods=["POST"]),
            Route("/v1/completions", guarded(_generation("completion")), methods=["POST"]),
            Route("/v1/embeddings", guarded(embeddings), methods=["POST"]),
            Route("/api/count_tokens", guarded(count_tokens), methods=["POST"]),
            Route("/v1/models", guarded(models), methods=["GET"]),
            Route("/api/pull", guarded(pull), methods=["POST"]),
            Route("/api/downloads", guarded(downloads), methods=["GET"]),
            Route("/api/downloads/{name}", guarded(download), methods=["GET"]),
            Route("/api/models/{name}", guarded(delete_model), methods=["DELETE"]),
            Route("/api/logs", guarded(logs), methods=["GET"]),
            Route("/api/logs/levels", guarded(log_levels), methods=["GET", "PUT"]),
            Route("/health", health, methods=["GET"]),
            Route("/startup", startup, methods=["GET"]),
            Route("/metrics", metrics, methods=["GET"]),
            Route("/openapi.json", openapi_json, methods=["GET"]),
        ],
        middleware=[*traced, Middleware(RequestIdMiddleware)],
        exception_handlers=EXCEPTION_HANDLERS,
        lifespan=lifespan,
    )
    app.router.redirect_slashes = False  # as on the router: an unknown path is a 404
    app.state.body_timeout = service.settings.body_timeout
    # With a router, every route but the probes needs the node key.
    app.state.openapi = orjson.dumps(document(
        "llmlb node", routes_of(app.routes),
        lambda _method, path: None if path in NODE_PROBES else "node",
        {("post", "/v1/chat/completions"): ChatRequest},
    ))  # fmt: skip
    return app
