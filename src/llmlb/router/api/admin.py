"""The admin API: nodes, keys, request history, models and their distribution, tasks, events.

Every handler here is wrapped in ``admin`` by the route table (``router.app``).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator
from typing import Any

import orjson
from pydantic import BaseModel, ConfigDict, Field
from starlette.requests import Request
from starlette.responses import Response

from llmlb.common.asgi import ClosingStreamingResponse, ORJSONResponse, read_json
from llmlb.common.errors import BadRequest
from llmlb.common.wire import EndpointSpec
from llmlb.router.access import KeyLimits, key_name, with_resolved_models
from llmlb.router.api.common import Handler, int_param, service_of, validated
from llmlb.router.api.console import history_filter
from llmlb.router.telemetry import COUNT_CAP

HISTORY_PAGE_MAX = 1000  # rows per page of /api/requests
# An idle event stream sends a comment this often, so proxies and clients see it alive.
EVENTS_KEEPALIVE_SECONDS = 15.0


async def _body(request: Request) -> dict[str, Any]:
    return await read_json(request, service_of(request).settings.max_admin_body_bytes)


# -- nodes ----------------------------------------------------------------------------------


async def list_nodes(request: Request) -> Response:
    return ORJSONResponse({"data": service_of(request).fleet.nodes()})


async def show_node(request: Request) -> Response:
    return ORJSONResponse(service_of(request).fleet.node(request.path_params["node_id"]))


def node_flag(**flags: bool) -> Handler:
    """A handler that sets operator flags (approved, draining) on a node."""

    async def handler(request: Request) -> Response:
        fleet = service_of(request).fleet
        node_id = request.path_params["node_id"]
        await fleet.set_flags(node_id, **flags)
        return ORJSONResponse(fleet.node(node_id))

    return handler


async def remove_node(request: Request) -> Response:
    await service_of(request).fleet.remove(request.path_params["node_id"])
    return Response(status_code=204)


# -- endpoints: other OpenAI-compatible servers (router.fleet.endpoints) ----------------------


async def list_endpoints(request: Request) -> Response:
    return ORJSONResponse({"data": service_of(request).fleet.endpoint_list()})


async def add_endpoint(request: Request) -> Response:
    spec = validated(EndpointSpec, await _body(request))
    if spec.key_env is not None:  # (the router's environment is not the caller's to read)
        raise BadRequest("give the endpoint's key itself as 'key' (key_env is for the "
                         "settings file)", param="key_env")  # fmt: skip
    return ORJSONResponse(await service_of(request).fleet.add_endpoint(spec), status_code=201)


async def remove_endpoint(request: Request) -> Response:
    fleet = service_of(request).fleet
    node = fleet.endpoints.get(request.path_params["node_id"])
    await fleet.remove(node.id)
    return Response(status_code=204)


# -- keys and history ------------------------------------------------------------------------


async def list_keys(request: Request) -> Response:
    keys = await service_of(request).keys.list()
    return ORJSONResponse({"data": [k.to_dict() for k in keys]})


async def create_key(request: Request) -> Response:
    body = await _body(request)
    scopes = body.get("scopes", ["api"])
    expires_at = body.get("expires_at")
    if not isinstance(scopes, list) or not all(isinstance(s, str) for s in scopes):
        raise BadRequest("'scopes' must be an array of strings", param="scopes")
    if expires_at is not None and not isinstance(expires_at, int | float):
        raise BadRequest("'expires_at' must be a Unix time", param="expires_at")
    service = service_of(request)
    limits = with_resolved_models(
        validated(KeyLimits, body.get("limits") or {}), service.catalog.resolve
    )
    key, secret = await service.keys.create(key_name(body.get("name")), scopes, expires_at, limits)
    return ORJSONResponse({**key.to_dict(), "secret": secret}, status_code=201)


async def revoke_key(request: Request) -> Response:
    key = await service_of(request).keys.revoke(request.path_params["key_id"])
    return ORJSONResponse(key.to_dict())


async def list_requests(request: Request) -> Response:
    limit = int_param(request, "limit", 100, 1, HISTORY_PAGE_MAX)
    offset = int_param(request, "offset", 0, 0, 2**53)
    total, rows = await service_of(request).history.query(
        history_filter(request), limit=limit, offset=offset
    )
    # Past COUNT_CAP matches the count stops: "total" is then a floor ("100,000 or more").
    return ORJSONResponse({"total": min(total, COUNT_CAP), "total_exact": total <= COUNT_CAP,
                           "limit": limit, "offset": offset, "data": rows})  # fmt: skip


# -- models -----------------------------------------------------------------------------------


async def available(request: Request) -> Response:
    return ORJSONResponse({"data": service_of(request).distributor.available()})


class _Registration(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model: str = Field(min_length=1, max_length=500)  # hf.co/ORG/REPO:QUANT, a link, ...
    name: str | None = Field(default=None, max_length=128)
    aliases: list[str] = Field(default_factory=list, max_length=32)


async def register_model(request: Request) -> Response:
    """A model from Hugging Face into the catalog (router.distribution.registrations)."""
    body = validated(_Registration, await _body(request))
    service = service_of(request)
    who = request.state.principal.who
    entry, how = await service.registrations.register(
        body.model, body.name, body.aliases, who.user or who.key_id
    )
    return ORJSONResponse({**entry.public(), "chosen": how}, status_code=201)


async def list_registered(request: Request) -> Response:
    return ORJSONResponse({"data": service_of(request).registrations.listing()})


async def update_registered(request: Request) -> Response:
    registrations = service_of(request).registrations
    entry = await registrations.update(request.path_params["name"], await _body(request))
    return ORJSONResponse(entry.public())


async def unregister_model(request: Request) -> Response:
    await service_of(request).registrations.remove(request.path_params["name"])
    return Response(status_code=204)


async def pull_to_router(request: Request) -> Response:
    service = service_of(request)
    name = service.models.entry(request.path_params["name"]).name  # 404 before a task exists
    task = await service.tasks.create("router_pull", name, None)
    return ORJSONResponse({"task_id": task["id"], "task": task}, status_code=202)


async def distribute(request: Request) -> Response:
    body = await _body(request)
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
    result = await service_of(request).distributor.distribute(
        body["model"], str(body.get("target", "all")), node_ids, count
    )
    tasks = result.tasks
    return ORJSONResponse(
        {"task_ids": [t["id"] for t in tasks], "tasks": tasks, "skipped": result.skipped},
        status_code=202,
    )


async def pull_to_node(request: Request) -> Response:
    body = await _body(request)
    model = body.get("model")
    if not isinstance(model, str):
        raise BadRequest("'model' is required", param="model")
    node_id = request.path_params["node_id"]
    distributor = service_of(request).distributor
    task = (await distributor.distribute(model, "specific", [node_id])).tasks[0]
    return ORJSONResponse({"task_id": task["id"], "task": task}, status_code=202)


async def remove_model_from_node(request: Request) -> Response:
    await service_of(request).distributor.remove_from_node(
        request.path_params["node_id"], request.path_params["name"]
    )
    return Response(status_code=204)


# -- tasks and live events ----------------------------------------------------------------------


async def list_tasks(request: Request) -> Response:
    tasks = await service_of(request).tasks.list(request.query_params.get("state"))
    return ORJSONResponse({"data": tasks})


async def show_task(request: Request) -> Response:
    return ORJSONResponse(await service_of(request).tasks.get(request.path_params["task_id"]))


async def events(request: Request) -> Response:
    bus = service_of(request).events

    async def frames() -> AsyncGenerator[bytes, None]:
        yield b": connected\n\n"
        with bus.subscribe() as queue:
            while True:
                try:
                    async with asyncio.timeout(EVENTS_KEEPALIVE_SECONDS):
                        event = await queue.get()
                except TimeoutError:
                    yield b": keep-alive\n\n"
                    continue
                kind = str(event.get("type", "message")).encode()
                yield b"event: " + kind + b"\ndata: " + orjson.dumps(event) + b"\n\n"

    return ClosingStreamingResponse(
        frames(), media_type="text/event-stream", headers={"cache-control": "no-cache"}
    )
