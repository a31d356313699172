"""What the dashboard reads beyond the plain admin API: figures, node history and logs, node
labels, one request of the history and the history as a file.

Every handler here is wrapped in ``admin`` by the route table (``router.app``).
"""

from __future__ import annotations

import csv
import io
import logging
import re
import time
from collections.abc import AsyncGenerator
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response

from llmlb.common import logs
from llmlb.common.asgi import (
    ClosingStreamingResponse,
    LogQuery,
    ORJSONResponse,
    log_lines,
    read_json,
)
from llmlb.common.errors import BadRequest
from llmlb.router.api.common import float_param, int_param, service_of
from llmlb.router.telemetry import HistoryFilter

log = logging.getLogger(__name__)

EXPORT_MAX_ROWS = 100_000
_FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")
_TAG = re.compile(r"[A-Za-z0-9._:-]{1,32}")
_EXPORT_COLUMNS = (
    "id", "ts", "request_id", "key_id", "user", "endpoint", "model", "node_id", "status",
    "latency_ms", "ttft_ms", "tokens_in", "tokens_out", "attempts", "error",
)  # fmt: skip


def history_filter(request: Request) -> HistoryFilter:
    q = request.query_params
    return HistoryFilter(
        model=q.get("model") or None, node_id=q.get("node_id") or None,
        key_id=q.get("key_id") or None, user=q.get("user") or None,
        status=int_param(request, "status", None, 100, 599),
        since=float_param(request, "since"), until=float_param(request, "until"),
    )  # fmt: skip


async def overview(request: Request) -> Response:
    return ORJSONResponse(await service_of(request).overview.now())


async def series(request: Request) -> Response:
    """Requests, errors and tokens per minute over the last ``minutes`` (at most a day)."""
    minutes = int_param(request, "minutes", 60, 1, 1440)
    since = (time.time() // 60 - minutes + 1) * 60
    rows = await service_of(request).history.series(since, 60)
    return ORJSONResponse({"bucket_seconds": 60, "since": since, "data": rows})


async def node_trends(request: Request) -> Response:
    service = service_of(request)
    node = service.fleet.record(request.path_params["node_id"])  # 404 for an unknown id
    return ORJSONResponse({"data": service.overview.trends.of(node.id)})


async def label_node(request: Request) -> Response:
    """``{"label": "gpu-3 (rack 2)", "tags": ["rack2", "a100"]}``: the operator's names."""
    service = service_of(request)
    body = await read_json(request, service.settings.max_admin_body_bytes)
    node = service.fleet.record(request.path_params["node_id"])
    label = body.get("label", node.label)
    tags = body.get("tags", node.tags)
    if label is not None and (not isinstance(label, str) or len(label) > 100):
        raise BadRequest("'label' is a string of at most 100 characters", param="label")
    if label is not None and any(ord(c) < 32 or ord(c) == 127 for c in label):
        raise BadRequest("'label' must not contain control characters", param="label")
    if (
        not isinstance(tags, list)
        or len(tags) > 16
        or not all(isinstance(t, str) and _TAG.fullmatch(t) for t in tags)
    ):
        raise BadRequest(
            "'tags' is up to 16 tags of 1 to 32 letters, digits and . _ : -", param="tags"
        )
    await service.fleet.set_label(node.id, label or None, sorted(set(tags)))
    return ORJSONResponse(service.fleet.node(node.id))


async def router_logs(request: Request) -> Response:
    return ORJSONResponse({"data": log_lines(request)})


async def node_logs(request: Request) -> Response:
    """The node's recent log lines, fetched from it with its own key. Only the checked query
    goes to the node, and only a bounded JSON answer comes back from it."""
    query = LogQuery.of(request)
    lines = await _from_node(request, "/api/logs", "logs", query.params())
    return ORJSONResponse({"data": lines})


async def node_models(request: Request) -> Response:
    """The models on a node as the node lists them (name, size, sha256, when installed and
    last used, loaded, assigned), the assigned ones it still lacks, and its sync state."""
    service = service_of(request)
    node = service.fleet.record(request.path_params["node_id"])
    rows = await _from_node(request, "/v1/models", "models", {})
    models = []
    for row in rows:
        if not isinstance(row, dict):
            continue
        name = row.get("id")
        models.append({
            "name": name, **{k: row.get(k) for k in _NODE_MODEL_FIELDS},
            "assigned": name in node.assigned, "state": "on_disk",
        })  # fmt: skip
        if row.get("loaded"):
            models[-1]["state"] = "loaded"
    have = {m["name"] for m in models}
    for name in node.assigned:
        if name not in have:
            download = node.load.downloads.get(name) or {}
            models.append({"name": name, "assigned": True, "loaded": False,
                           "state": download.get("state") or "missing",
                           "bytes_done": download.get("bytes_done"),
                           "bytes_total": download.get("bytes_total")})  # fmt: skip
    return ORJSONResponse({"data": models, "sync": node.load.sync.model_dump()})


_NODE_MODEL_FIELDS = ("size_bytes", "sha256", "parts", "installed_at", "last_used", "loaded")


async def _from_node(request: Request, path: str, what: str, params: dict[str, str]) -> list[Any]:
    """A node's ``{"data": [...]}`` answer, fetched with its own key (fleet.control)."""
    service = service_of(request)
    node = service.fleet.record(request.path_params["node_id"])
    if node.is_endpoint and path != "/v1/models":
        raise BadRequest(f"{node.name} is an endpoint ({node.kind}): the router cannot read "
                         f"its {what}", code="node_is_endpoint")  # fmt: skip
    return await service.control.listing(node, path, what, params)


async def show_request(request: Request) -> Response:
    row_id = request.path_params["row_id"]
    if not row_id.isdigit() or len(row_id) > 18:
        raise BadRequest("a request's id is a number", param="id")
    return ORJSONResponse(await service_of(request).history.get(int(row_id)))


async def export_requests(request: Request) -> Response:
    """The filtered history as ``format=csv`` or ``format=json`` (JSON lines), newest first,
    at most ``limit`` rows (100,000), streamed a page at a time."""
    kind = request.query_params.get("format", "csv")
    if kind not in ("csv", "json"):
        raise BadRequest("'format' is csv or json", param="format")
    limit = int_param(request, "limit", EXPORT_MAX_ROWS, 1, EXPORT_MAX_ROWS)
    pages = service_of(request).history.export(history_filter(request), limit)

    async def lines() -> AsyncGenerator[bytes, None]:
        if kind == "csv":
            yield csv_row(_EXPORT_COLUMNS)
        async for rows in pages:
            if kind == "csv":
                yield b"".join(csv_row(tuple(r.get(c) for c in _EXPORT_COLUMNS)) for r in rows)
            else:
                yield b"".join(orjson.dumps(r) + b"\n" for r in rows)

    stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime())
    extension, media = ("csv", "text/csv") if kind == "csv" else ("jsonl", "application/x-ndjson")
    filename = f"llmlb-requests-{stamp}.{extension}"
    return ClosingStreamingResponse(
        lines(), media_type=media,
        headers={"content-disposition": f'attachment; filename="{filename}"'},
    )  # fmt: skip


def csv_row(values: tuple[Any, ...]) -> bytes:
    out = io.StringIO()
    # A cell that starts with = + - @ (or a tab or carriage return before one) is a formula
    # to a spreadsheet: quote it as text.
    cells = ["'" + v if isinstance(v, str) and v[:1] in _FORMULA_STARTS else v for v in values]
    csv.writer(out, lineterminator="\n").writerow(cells)
    return out.getvalue().encode()


# -- log levels, while the process runs (common.logs) -----------------------------------------


async def log_levels(request: Request) -> Response:
    return ORJSONResponse({"data": logs.levels()})


async def set_log_level(request: Request) -> Response:
    """``{"logger": NAME, "level": LEVEL}`` for this router (each router has its own)."""
    body = await read_json(request, service_of(request).settings.max_admin_body_bytes)
    name, level = logs.level_change(body)
    logs.set_level(name, level)
    log.warning("log level of %s set to %s", name or "the root logger", level or "its parent's")
    return ORJSONResponse({"data": logs.levels()})


async def set_node_log_level(request: Request) -> Response:
    """The same for a node, passed on to it with its own key."""
    service = service_of(request)
    body = await read_json(request, service.settings.max_admin_body_bytes)
    name, level = logs.level_change(body)
    node = service.fleet.record(request.path_params["node_id"])
    if node.is_endpoint:
        raise BadRequest(f"{node.name} is an endpoint ({node.kind}): its logs are its own",
                         code="node_is_endpoint")  # fmt: skip
    levels = await service.control.set_log_level(node, name, level)
    return ORJSONResponse({"data": levels})
