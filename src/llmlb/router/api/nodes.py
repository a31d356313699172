"""The node API: registration, heartbeats, the catalog as nodes see it, model files."""

from __future__ import annotations

import re

from starlette.requests import Request
from starlette.responses import FileResponse, Response
from starlette.types import ASGIApp, Receive, Scope, Send

from llmlb.common.asgi import (
    ClosingStreamingResponse,
    ORJSONResponse,
    error_response,
    read_json,
)
from llmlb.common.credentials import bearer_token
from llmlb.common.errors import BadRequest, LlmlbError, NotFound
from llmlb.common.names import UNKNOWN_MODEL_LABEL
from llmlb.common.wire import NodeLoad, RegisterRequest
from llmlb.router.api.common import authorize, service_of, validated


async def register(request: Request) -> Response:
    await authorize(request, "node")
    service = service_of(request)
    body = await read_json(request, service.settings.max_node_report_bytes)
    payload = validated(RegisterRequest, body)
    token = bearer_token(request.headers.get("authorization"))
    answer = await service.fleet.register_node(payload, token)
    return ORJSONResponse(answer.model_dump(), status_code=201)


_HEARTBEAT = re.compile(r"/api/nodes/([^/]+)/heartbeat")


class HeartbeatRoute:
    """ASGI middleware that answers ``POST /api/nodes/{id}/heartbeat`` itself, in front of
    Starlette's routing, middleware and request log: a fleet of 1,000 nodes sends 100 a
    second, and those layers cost more than the heartbeat (``bench/control_plane.py``)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        match = _HEARTBEAT.fullmatch(scope["path"]) if scope["type"] == "http" else None
        if match is None or scope["method"] != "POST":
            await self.app(scope, receive, send)
            return
        response: Response
        try:
            response = await heartbeat(Request(scope, receive), match.group(1))
        except LlmlbError as exc:
            response = error_response(exc)
        await response(scope, receive, send)


async def heartbeat(request: Request, node_id: str) -> Response:
    await authorize(request, "node")
    service = service_of(request)
    load = validated(NodeLoad, await read_json(request, service.settings.max_node_report_bytes))
    token = bearer_token(request.headers.get("authorization"))
    return ORJSONResponse(await service.fleet.heartbeat(node_id, load, token))


async def catalog(request: Request) -> Response:
    await authorize(request, "node")
    base = str(request.base_url).rstrip("/")
    return ORJSONResponse({"data": service_of(request).models.listing(base)})


def _range_start(header: str | None) -> int:
    """The start of a ``bytes=N-`` range (what resuming downloaders send); 0 otherwise."""
    if header and header.startswith("bytes=") and header.endswith("-"):
        start = header[6:-1]
        if start.isdigit():
            return int(start)
    return 0


async def blob(request: Request) -> Response:
    """A model file (``?part=N``: a part of a split model; ``?file=mmproj``: a vision
    model's projector): from the router's store (Range, ETag), or pulled through from its
    origin while it downloads."""
    await authorize(request, "node")
    service = service_of(request)
    models = service.models
    name = models.canonical(request.path_params["name"])
    known = name in service.catalog or models.store.get(name) is not None
    service.metrics.blob_requests.labels(name if known else UNKNOWN_MODEL_LABEL).inc()
    part = _part_number(request.query_params.get("part"))
    which = request.query_params.get("file")
    if which not in (None, "mmproj"):
        raise BadRequest("file is 'mmproj' (a vision model's projector) or absent", param="file")
    if which is None and part is None and models.is_split(name):
        raise BadRequest(f"model {name!r} is a split model: ask for each ?part=N", param="part")
    if which == "mmproj":
        path, _, sha256 = models.projector(name)
        held = path if path.is_file() else None
    elif part is not None:
        path, _, sha256 = models.part(name, part)
        held = path if path.is_file() else None
    else:
        stored = models.held(name)
        held, sha256 = (stored.path, stored.sha256) if stored else (None, None)
    if held is not None:
        headers = {"etag": f'"{sha256}"'} if sha256 else {}
        return FileResponse(held, headers=headers, media_type="application/octet-stream")
    if request.method == "HEAD":  # a look must not start a download from the origin
        raise NotFound(
            f"model {name!r} is not in the router's store (a GET pulls it through)",
            code="model_not_on_router",
        )
    start = _range_start(request.headers.get("range"))
    if which == "mmproj":
        stream = await models.projector_through(name, start)
    elif part is not None:
        stream = await models.part_through(name, part, start)
    else:
        stream = await models.pull_through(name, start)
    headers = {"content-length": str(stream.total - start), "accept-ranges": "bytes"}
    if stream.sha256:
        headers["etag"] = f'"{stream.sha256}"'
    if start:
        headers["content-range"] = f"bytes {start}-{stream.total - 1}/{stream.total}"
    return ClosingStreamingResponse(
        stream.chunks, status_code=206 if start else 200,
        media_type="application/octet-stream", headers=headers,
    )  # fmt: skip


def _part_number(value: str | None) -> int | None:
    if value is None:
        return None
    if not (value.isascii() and value.isdigit() and len(value) <= 3):
        raise BadRequest("part must be a part number (1, 2, ...)", param="part")
    return int(value)
