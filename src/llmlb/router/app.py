"""The router's HTTP API (Starlette): the client API, node API and admin API."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any, overload

import orjson
from prometheus_client import CONTENT_TYPE_LATEST
from pydantic import BaseModel, ValidationError
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import FileResponse, Response
from starlette.routing import Route

from llmlb.common.asgi import (
    EXCEPTION_HANDLERS,
    ClosingStreamingResponse,
    ORJSONResponse,
    RequestIdMiddleware,
    read_body,
    read_json,
)
from llmlb.common.credentials import bearer_token
from llmlb.common.errors import BadRequest, LlmlbError, NotFound
from llmlb.common.wire import NodeLoad, RegisterRequest
from llmlb.router.auth import Principal
from llmlb.router.keys import Scope
from llmlb.router.service import UNKNOWN_MODEL_LABEL, RouterService

Handler = Callable[[Request], Awaitable[Response]]
HISTORY_PAGE_MAX = 1000  # rows per page of /api/requests
# An idle event stream sends a comment this often, so proxies and clients see it alive.
EVENTS_KEEPALIVE_SECONDS = 15.0


def _validated(model: type[BaseModel], data: Any) -> Any:
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise BadRequest(f"{where}: {first['msg']}", param=where or None) from exc


def _float_param(request: Request, name: str) -> float | None:
    value = request.query_params.get(name)
    if value is None:
        return None
    try:
        return float(value)
    except ValueError:
        raise BadRequest(f"query parameter {name!r} must be a number", param=name) from None


@overload
def _int_param(request: Request, name: str, default: int, low: int, high: int) -> int: ...
@overload
def _int_param(request: Request, name: str, default: None, low: int, high: int) -> int | None: ...
def _int_param(request: Request, name: str, default: int | None, low: int, high: int) -> int | None:
    """An integer query parameter within [low, high]; 400 naming it otherwise."""
    value = request.query_params.get(name)
    if value is None:
        return default
    if not (value.isascii() and value.lstrip("-").isdigit() and len(value) <= 20):
        raise BadRequest(f"query parameter {name!r} must be an integer", param=name)
    number = int(value)
    if not low <= number <= high:
        raise BadRequest(f"query parameter {name!r} must be between {low} and {high}", param=name)
    return number


def _range_start(header: str | None) -> int:
    """The start of a ``bytes=N-`` range (what resuming downloaders send); 0 otherwise."""
    if header and header.startswith("bytes=") and header.endswith("-"):
        start = header[6:-1]
        if start.isdigit():
            return int(start)
    return 0


def create_app(service: RouterService) -> Starlette:
    settings = service.settings

    async def authorize(request: Request, scope: Scope) -> Principal:
        client = request.client.host if request.client else None
        return await service.auth.require(
            scope,
            request.headers.get("authorization"),
            request.headers.get("x-api-key"),
            client,
        )

    def guarded(scope: Scope, handler: Handler) -> Handler:
        async def wrapper(request: Request) -> Response:
            await authorize(request, scope)
            return await handler(request)

        return wrapper

    # -- client API ------------------------------------------------------------------------

    def _proxied(endpoint: str, path: str) -> Handler:
        async def handler(request: Request) -> Response:
            principal = await authorize(request, "api")
            raw = await read_body(request, settings.max_body_bytes)
            routed = service.route(endpoint, path, raw)
            request_id = request.scope["state"]["request_id"]
            headers = {"x-request-id": request_id}
            for name in ("traceparent", "tracestate"):
                if name in request.headers:
                    headers[name] = request.headers[name]
            answer = await service.forward(routed, headers, principal.key_id, request_id)
            extra = {
                "x-llmlb-node": answer.node.name,
                "x-llmlb-attempts": str(answer.attempts),
            }
            if answer.queue_wait_ms >= 1:
                extra["x-llmlb-queue-wait-ms"] = str(round(answer.queue_wait_ms))
            if answer.chunks is not None:
                extra.update({"cache-control": "no-cache", "x-accel-buffering": "no"})
                return ClosingStreamingResponse(
                    answer.chunks, status_code=answer.status, media_type=answer.content_type,
                    headers=extra,
                )  # fmt: skip
            return Response(
                answer.body, status_code=answer.status, media_type=answer.content_type,
                headers=extra,
            )  # fmt: skip

        return handler

    async def models(request: Request) -> Response:
        await authorize(request, "api")
        return ORJSONResponse({"object": "list", "data": service.model_list()})

    # -- node API --------------------------------------------------------------------------

    def _bearer(request: Request) -> str | None:
        return bearer_token(request.headers.get("authorization"))

    async def register(request: Request) -> Response:
        await authorize(request, "node")
        payload = _validated(RegisterRequest, await read_json(request, 1024 * 1024))
        answer = await service.register_node(payload, _bearer(request))
        return ORJSONResponse(answer.model_dump(), status_code=201)

    async def heartbeat(request: Request) -> Response:
        await authorize(request, "node")
        load = _validated(NodeLoad, await read_json(request, 1024 * 1024))
        node_id = request.path_params["node_id"]
        return ORJSONResponse(await service.heartbeat(node_id, load, _bearer(request)))

    # -- admin API -------------------------------------------------------------------------

    async def list_nodes(request: Request) -> Response:
        return ORJSONResponse({"data": service.nodes()})

    async def show_node(request: Request) -> Response:
        return ORJSONResponse(service.node(request.path_params["node_id"]))

    def _node_flag(**flags: bool) -> Handler:
        async def handler(request: Request) -> Response:
            node_id = request.path_params["node_id"]
            await service.registry.set_flags(node_id, **flags)
            return ORJSONResponse(service.node(node_id))

        return handler

    async def remove_node(request: Request) -> Response:
        await service.registry.remove(request.path_params["node_id"])
        return Response(status_code=204)

    async def list_keys(request: Request) -> Response:
        return ORJSONResponse({"data": [k.to_dict() for k in await service.keys.list()]})

    async def create_key(request: Request) -> Response:
        body = await read_json(request, 64 * 1024)
        scopes = body.get("scopes", ["api"])
        expires_at = body.get("expires_at")
        if not isinstance(scopes, list) or not all(isinstance(s, str) for s in scopes):
            raise BadRequest("'scopes' must be an array of strings", param="scopes")
        if expires_at is not None and not isinstance(expires_at, int | float):
            raise BadRequest("'expires_at' must be a Unix time", param="expires_at")
        key, secret = await service.keys.create(
            str(body.get("name") or "unnamed"), scopes, expires_at
        )
        return ORJSONResponse({**key.to_dict(), "secret": secret}, status_code=201)

    async def revoke_key(request: Request) -> Response:
        key = await service.keys.revoke(request.path_params["key_id"])
        return ORJSONResponse(key.to_dict())

    async def list_requests(request: Request) -> Response:
        q = request.query_params
        limit = _int_param(request, "limit", 100, 1, HISTORY_PAGE_MAX)
        offset = _int_param(request, "offset", 0, 0, 2**53)
        status = _int_param(request, "status", None, 100, 599)
        total, rows = await service.history.query(
            model=q.get("model"), node_id=q.get("node_id"), key_id=q.get("key_id"),
            status=status, since=_float_param(request, "since"),
            until=_float_param(request, "until"), limit=limit, offset=offset,
        )  # fmt: skip
        return ORJSONResponse({"total": total, "limit": limit, "offset": offset, "data": rows})

    # -- models ----------------------------------------------------------------------------

    async def catalog_for_nodes(request: Request) -> Response:
        await authorize(request, "node")
        base = str(request.base_url).rstrip("/")
        return ORJSONResponse({"data": service.models.listing(base)})

    async def blob(request: Request) -> Response:
        await authorize(request, "node")
        name = request.path_params["name"]
        stored = service.models.held(name)
        known = stored is not None or name in service.catalog
        service.metrics.blob_requests.labels(name if known else UNKNOWN_MODEL_LABEL).inc()
        if stored is not None:
            headers = {"etag": f'"{stored.sha256}"'} if stored.sha256 else {}
            return FileResponse(stored.path, headers=headers, media_type="application/octet-stream")
        if request.method == "HEAD":  # a look must not start a download from the origin
            raise NotFound(
                f"model {name!r} is not in the router's store (a GET pulls it through)",
                code="model_not_on_router",
            )
        start = _range_start(request.headers.get("range"))
        stream = await service.models.pull_through(name, start)
        headers = {"content-length": str(stream.total - start), "accept-ranges": "bytes"}
        if stream.sha256:
            headers["etag"] = f'"{stream.sha256}"'
        if start:
            headers["content-range"] = f"bytes {start}-{stream.total - 1}/{stream.total}"
        return ClosingStreamingResponse(stream.chunks, status_code=206 if start else 200,
                                 media_type="application/octet-stream",
                                 headers=headers)  # fmt: skip

    async def pull_to_router(request: Request) -> Response:
        name = request.path_params["name"]
        service.models.entry(name)  # 404 model_not_supported before a task exists
        task = await service.tasks.create("router_pull", name, None)
        return ORJSONResponse({"task_id": task["id"], "task": task}, status_code=202)

    async def available(request: Request) -> Response:
        return ORJSONResponse({"data": service.distributor.available()})

    async def distribute(request: Request) -> Response:
        body = await read_json(request, 64 * 1024)
        if not isinstance(body.get("model"), str):
            raise BadRequest("'model' is required", param="model")
        node_ids = body.get("node_ids")
        if node_ids is not None and not (
            isinstance(node_ids, list) and all(isinstance(n, str) for n in node_ids)
        ):
            raise BadRequest("'node_ids' must be an array of node ids", param="node_ids")
        count = body.get("count", 1)
        if not isinstance(count, int) or count < 1:
            raise BadRequest("'count' must be a positive integer", param="count")
        result = await service.distributor.distribute(
            body["model"], str(body.get("target", "all")), node_ids, count
        )
        tasks = result.tasks
        return ORJSONResponse(
            {"task_ids": [t["id"] for t in tasks], "tasks": tasks, "skipped": result.skipped},
            status_code=202,
        )

    async def pull_to_node(request: Request) -> Response:
        body = await read_json(request, 64 * 1024)
        model = body.get("model")
        if not isinstance(model, str):
            raise BadRequest("'model' is required", param="model")
        node_id = request.path_params["node_id"]
        task = (await service.distributor.distribute(model, "specific", [node_id])).tasks[0]
        return ORJSONResponse({"task_id": task["id"], "task": task}, status_code=202)

    async def remove_model_from_node(request: Request) -> Response:
        await service.distributor.remove_from_node(
            request.path_params["node_id"], request.path_params["name"]
        )
        return Response(status_code=204)

    async def list_tasks(request: Request) -> Response:
        return ORJSONResponse({"data": await service.tasks.list(request.query_params.get("state"))})

    async def show_task(request: Request) -> Response:
        return ORJSONResponse(await service.tasks.get(request.path_params["task_id"]))

    async def events(request: Request) -> Response:
        async def frames() -> AsyncGenerator[bytes, None]:
            yield b": connected\n\n"
            with service.events.subscribe() as queue:
                while True:
                    try:
                        event = await asyncio.wait_for(queue.get(), EVENTS_KEEPALIVE_SECONDS)
                    except TimeoutError:
                        yield b": keep-alive\n\n"
                        continue
                    kind = str(event.get("type", "message")).encode()
                    yield b"event: " + kind + b"\ndata: " + orjson.dumps(event) + b"\n\n"

        return ClosingStreamingResponse(frames(), media_type="text/event-stream",
                                 headers={"cache-control": "no-cache"})  # fmt: skip

    # -- operations ------------------------------------------------------------------------

    async def health(request: Request) -> Response:
        return ORJSONResponse({"status": "ok", "version": service.version(), "time": time.time()})

    async def ready(request: Request) -> Response:
        ok = await service.ready()
        return ORJSONResponse(
            {"database": "ok" if ok else "unreachable"}, status_code=200 if ok else 503
        )

    async def metrics(request: Request) -> Response:
        return Response(service.metrics.render(), media_type=CONTENT_TYPE_LATEST)

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        await service.start()
        try:
            yield
        finally:
            await service.close()

    def admin(handler: Handler) -> Handler:
        return guarded("admin", handler)

    post, get, delete = ["POST"], ["GET"], ["DELETE"]
    routes = [
        Route("/v1/chat/completions", _proxied("chat", "/v1/chat/completions"), methods=post),
        Route("/v1/completions", _proxied("completion", "/v1/completions"), methods=post),
        Route("/v1/embeddings", _proxied("embeddings", "/v1/embeddings"), methods=post),
        Route("/v1/models", models, methods=get),
        Route("/api/nodes", register, methods=post),
        Route("/api/nodes/{node_id}/heartbeat", heartbeat, methods=post),
        Route("/api/nodes", admin(list_nodes), methods=get),
        Route("/api/nodes/{node_id}", admin(show_node), methods=get),
        Route("/api/nodes/{node_id}", admin(remove_node), methods=delete),
        Route("/api/nodes/{node_id}/drain", admin(_node_flag(draining=True)), methods=post),
        Route("/api/nodes/{node_id}/undrain", admin(_node_flag(draining=False)), methods=post),
        Route("/api/nodes/{node_id}/approve", admin(_node_flag(approved=True)), methods=post),
        Route("/api/keys", admin(list_keys), methods=get),
        Route("/api/keys", admin(create_key), methods=post),
        Route("/api/keys/{key_id}", admin(revoke_key), methods=delete),
        Route("/api/requests", admin(list_requests), methods=get),
        Route("/v0/models", catalog_for_nodes, methods=get),
        Route("/v0/models/blob/{name}", blob, methods=["GET", "HEAD"]),
        Route("/api/models/available", admin(available), methods=get),
        Route("/api/models/distribute", admin(distribute), methods=post),
        Route("/api/models/{name}/pull", admin(pull_to_router), methods=post),
        Route("/api/nodes/{node_id}/models/pull", admin(pull_to_node), methods=post),
        Route("/api/nodes/{node_id}/models/{name}", admin(remove_model_from_node), methods=delete),
        Route("/api/tasks", admin(list_tasks), methods=get),
        Route("/api/tasks/{task_id}", admin(show_task), methods=get),
        Route("/api/events", admin(events), methods=get),
        Route("/health", health, methods=get),
        Route("/ready", ready, methods=get),
        Route("/metrics", metrics, methods=get),
    ]
    return Starlette(
        routes=routes,
        middleware=[Middleware(RequestIdMiddleware)],
        exception_handlers=EXCEPTION_HANDLERS,
        lifespan=lifespan,
    )


__all__ = ["LlmlbError", "create_app"]
