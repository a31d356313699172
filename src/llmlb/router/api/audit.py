"""The audit trail through the admin API (``router.telemetry.audit``): ``GET /api/audit``
(newest first, filtered by ``user``, ``key_id``, ``action``, ``since``, ``until``; paged by
``limit`` and ``offset``) and ``GET /api/audit/export`` (``format=csv`` or ``json`` lines)."""

from __future__ import annotations

import time
from collections.abc import AsyncGenerator

import orjson
from starlette.requests import Request
from starlette.responses import Response

from llmlb.common.asgi import ClosingStreamingResponse, ORJSONResponse
from llmlb.common.errors import BadRequest
from llmlb.router.api.common import float_param, int_param, service_of
from llmlb.router.api.console import EXPORT_MAX_ROWS, csv_row
from llmlb.router.telemetry import AuditFilter

PAGE_MAX = 1000
COLUMNS = ("id", "ts", "user", "key_id", "source", "action", "target", "status", "detail")


def audit_filter(request: Request) -> AuditFilter:
    q = request.query_params
    return AuditFilter(user=q.get("user") or None, key_id=q.get("key_id") or None,
                       action=q.get("action") or None, since=float_param(request, "since"),
                       until=float_param(request, "until"))  # fmt: skip


async def list_audit(request: Request) -> Response:
    limit = int_param(request, "limit", 100, 1, PAGE_MAX)
    offset = int_param(request, "offset", 0, 0, 2**53)
    total, rows = await service_of(request).audit.query(audit_filter(request), limit=limit,
                                                        offset=offset)  # fmt: skip
    return ORJSONResponse({"total": total, "limit": limit, "offset": offset, "data": rows})


async def export_audit(request: Request) -> Response:
    kind = request.query_params.get("format", "csv")
    if kind not in ("csv", "json"):
        raise BadRequest("'format' is csv or json", param="format")
    limit = int_param(request, "limit", EXPORT_MAX_ROWS, 1, EXPORT_MAX_ROWS)
    trail, filters = service_of(request).audit, audit_filter(request)

    async def lines() -> AsyncGenerator[bytes, None]:
        if kind == "csv":
            yield csv_row(COLUMNS)
        for offset in range(0, limit, PAGE_MAX):
            _, rows = await trail.query(filters, limit=min(PAGE_MAX, limit - offset),
                                        offset=offset)  # fmt: skip
            if kind == "csv":
                yield b"".join(csv_row(tuple(
                    orjson.dumps(r[c]).decode() if isinstance(r[c], dict | list) else r[c]
                    for c in COLUMNS)) for r in rows)  # fmt: skip
            else:
                yield b"".join(orjson.dumps(r) + b"\n" for r in rows)
            if len(rows) < PAGE_MAX:
                return

    stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime())
    extension, media = ("csv", "text/csv") if kind == "csv" else ("jsonl", "application/x-ndjson")
    filename = f"llmlb-audit-{stamp}.{extension}"
    return ClosingStreamingResponse(lines(), media_type=media, headers={
        "content-disposition": f'attachment; filename="{filename}"'})  # fmt: skip
