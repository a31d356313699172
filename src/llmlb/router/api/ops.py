"""Probes and metrics: open to anyone who can reach the router."""

from __future__ import annotations

import time

from prometheus_client import CONTENT_TYPE_LATEST
from starlette.requests import Request
from starlette.responses import Response

from llmlb import __version__
from llmlb.common.asgi import ORJSONResponse
from llmlb.router.api.common import service_of


async def health(request: Request) -> Response:
    answer = {"status": "ok", "version": __version__, "time": time.time()}
    worker = service_of(request).worker
    if worker is not None:  # which of the router's processes answered (``--workers``)
        answer["worker"] = worker.index
    return ORJSONResponse(answer)


async def ready(request: Request) -> Response:
    ok = await service_of(request).ready()
    return ORJSONResponse(
        {"database": "ok" if ok else "unreachable"}, status_code=200 if ok else 503
    )


async def startup(request: Request) -> Response:
    """200 once the router has started (migrations applied, fleet and keys loaded): a
    Kubernetes startup probe, so a slow first migration is not killed by the liveness one."""
    started = service_of(request).started
    return ORJSONResponse({"started": started}, status_code=200 if started else 503)


async def metrics(request: Request) -> Response:
    return Response(service_of(request).metrics.render(), media_type=CONTENT_TYPE_LATEST)


async def openapi_json(request: Request) -> Response:
    """The router's OpenAPI document (public: it names routes, not data; router.api.openapi)."""
    return Response(request.app.state.openapi, media_type="application/json")
