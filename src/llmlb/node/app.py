"""The node's HTTP API (Starlette): parse, call the service, answer."""

from __future__ import annotations

import asyncio
import contextlib
import hmac
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

from llmlb.common.asgi import (
    EXCEPTION_HANDLERS,
    ORJSONResponse,
    RequestIdMiddleware,
    read_json,
)
from llmlb.common.errors import AuthenticationFailed, BadRequest, LlmlbError, NotFound
from llmlb.common.store import validate_name
from llmlb.node.engine import Endpoint
from llmlb.node.registration import RouterLink
from llmlb.node.service import NodeService

SSE_HEADERS = {"cache-control": "no-cache", "x-accel-buffering": "no"}


def create_app(service: NodeService, link: RouterLink | None = None) -> Starlette:
    limit = service.settings.max_body_bytes
    token = service.settings.node_token

    def guarded(handler: Any) -> Any:
        """With a router, only callers holding the node's key (the router) get in."""
        if not token:
            return handler

        async def check(request: Request) -> Response:
            scheme, _, offered = request.headers.get("authorization", "").partition(" ")
            if scheme.lower() != "bearer" or not hmac.compare_digest(offered.strip(), token):
                raise AuthenticationFailed(
                    "this node serves its router only: send the node key as a bearer token"
                )
            return await handler(request)  # type: ignore[no-any-return]

        return check

    async def _body(request: Request) -> dict[str, Any]:
        return await read_json(request, limit)

    def _generation(endpoint: Endpoint) -> Any:
        async def handler(request: Request) -> Response:
            body = await _body(request)
            label = str(body.get("model"))
            try:
                if body.get("stream") is True:
                    frames = await service.open_stream(endpoint, body)
                    response: Response = StreamingResponse(
                        frames, media_type="text/event-stream", headers=SSE_HEADERS
                    )
                else:
                    response = ORJSONResponse(await service.complete(endpoint, body))
            except LlmlbError as exc:
                service.metrics.errors.labels(exc.code or exc.error_type).inc()
                service.metrics.requests.labels(endpoint, label, str(exc.status)).inc()
                raise
            service.metrics.requests.labels(endpoint, label, "200").inc()
            return response

        return handler

    async def embeddings(request: Request) -> Response:
        body = await _body(request)
        try:
            result = await service.embeddings(body)
        except LlmlbError as exc:
            service.metrics.errors.labels(exc.code or exc.error_type).inc()
            raise
        service.metrics.requests.labels("embeddings", str(body.get("model")), "200").inc()
        return ORJSONResponse(result)

    async def models(request: Request) -> Response:
        return ORJSONResponse({"object": "list", "data": service.list_models()})

    async def pull(request: Request) -> Response:
        body = await _body(request)
        name = body.get("model")
        if not isinstance(name, str):
            raise BadRequest("'model' is required", param="model")
        return ORJSONResponse(await service.pull(name), status_code=202)

    async def downloads(request: Request) -> Response:
        return ORJSONResponse({"data": service.resolver.active_progress()})

    async def download(request: Request) -> Response:
        name = request.path_params["name"]
        validate_name(name)
        progress = service.resolver.progress_of(name)
        if progress is None:
            raise NotFound(f"no download of {name!r} and it is not here", code="not_found")
        return ORJSONResponse(progress)

    async def delete_model(request: Request) -> Response:
        await service.delete_model(request.path_params["name"])
        return Response(status_code=204)

    async def health(request: Request) -> Response:
        return ORJSONResponse(service.health())

    async def startup(request: Request) -> Response:
        ready = service.state != "initializing"
        return ORJSONResponse({"state": service.state}, status_code=200 if ready else 503)

    async def metrics(request: Request) -> Response:
        return Response(service.metrics.render(), media_type=CONTENT_TYPE_LATEST)

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        service.state = "ready"
        link_task = asyncio.create_task(link.run()) if link is not None else None
        try:
            yield
        finally:
            service.state = "draining"
            if link is not None and link_task is not None:
                link_task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await link_task
                await link.goodbye()
            await service.pool.close()
            await service.resolver.close()

    return Starlette(
        routes=[
            Route("/v1/chat/completions", guarded(_generation("chat")), methods=["POST"]),
            Route("/v1/completions", guarded(_generation("completion")), methods=["POST"]),
            Route("/v1/embeddings", guarded(embeddings), methods=["POST"]),
            Route("/v1/models", guarded(models), methods=["GET"]),
            Route("/api/pull", guarded(pull), methods=["POST"]),
            Route("/api/downloads", guarded(downloads), methods=["GET"]),
            Route("/api/downloads/{name}", guarded(download), methods=["GET"]),
            Route("/api/models/{name}", guarded(delete_model), methods=["DELETE"]),
            Route("/health", health, methods=["GET"]),
            Route("/startup", startup, methods=["GET"]),
            Route("/metrics", metrics, methods=["GET"]),
        ],
        middleware=[Middleware(RequestIdMiddleware)],
        exception_handlers=EXCEPTION_HANDLERS,
        lifespan=lifespan,
    )
