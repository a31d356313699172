"""Ollama's ``/api/pull`` and ``/api/delete`` over the fleet's model store (admins only).

``ollama pull NAME`` makes a model ready to serve here as on an Ollama server, but for the
fleet: a name the catalog lists (or a Hugging Face reference such as
``hf.co/ORG/REPO:Q4_K_M``, registered on the way, as Ollama takes them) is fetched into the
router's store and distributed to a node with room for it (``target auto``), as the admin
API's tasks do. The progress is Ollama's NDJSON stream (``pulling manifest``, ``pulling
<digest>`` with ``total`` and ``completed``, ``verifying sha256 digest``, ``success``),
read from those tasks. A model some node already holds is there: nothing is fetched. A
client that leaves stops reading, not the tasks (a fleet's transfer resumes; they are in
``/api/tasks``).

``ollama rm NAME`` takes the model off every node that holds it and out of the router's
store, and unregisters it if it was registered. A model nowhere in the fleet is Ollama's
404, ``model 'NAME' not found``.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator
from typing import TYPE_CHECKING, Any

import orjson
from starlette.requests import Request
from starlette.responses import Response

from llmlb.common.asgi import ClosingStreamingResponse, read_json
from llmlb.common.errors import BadRequest, LlmlbError, ModelNotFound, Unavailable
from llmlb.router.api.common import service_of

if TYPE_CHECKING:
    from llmlb.router.service import RouterService

NDJSON = "application/x-ndjson"
POLL_SECONDS = 0.25  # (tasks save their progress once a second)
_MANIFEST_MISSING = "pull model manifest: file does not exist"  # Ollama's words


def _line(data: dict[str, Any]) -> bytes:
    return orjson.dumps(data) + b"\n"


def _wanted(body: dict[str, Any]) -> str:
    wanted = body.get("model") or body.get("name")  # (``name``: older clients')
    if not isinstance(wanted, str) or not wanted:
        raise BadRequest("'model' is required", param="model")
    return wanted


def _stream_flag(body: dict[str, Any]) -> bool:
    stream = body.get("stream", True)
    if not isinstance(stream, bool):
        raise BadRequest("'stream' is a boolean", param="stream")
    return stream


async def pull(request: Request) -> Response:
    service = service_of(request)
    body = await read_json(request, service.settings.max_admin_body_bytes)
    wanted, stream = _wanted(body), _stream_flag(body)
    who = request.state.principal.who
    name = await _catalog_name(service, wanted, who.user or who.key_id)
    lines = _progress(service, name)
    if stream:
        return ClosingStreamingResponse(lines, media_type=NDJSON, headers={
            "cache-control": "no-cache", "x-accel-buffering": "no"})  # fmt: skip
    last: dict[str, Any] = {}
    async for line in lines:
        last = orjson.loads(line)
    if "error" in last:
        return Response(orjson.dumps(last), 500, media_type="application/json")
    return Response(orjson.dumps({"status": "success"}), 200, media_type="application/json")


async def _catalog_name(service: RouterService, wanted: str, who: str | None) -> str:
    """The fleet's name for what to pull: a catalog entry, a model the fleet serves, or a
    Hugging Face reference registered now."""
    name = service.fleet.resolve(wanted)
    if service.fleet.knows(name):
        return name
    if "/" in wanted:  # ORG/REPO, hf.co/..., a link: Hugging Face's
        entry, _ = await service.registrations.register(wanted, None, [], who)
        return entry.name
    raise ModelNotFound(_MANIFEST_MISSING, param="model")


def _held_in_fleet(service: RouterService, name: str) -> bool:
    return any(name in node.load.models_on_disk or name in node.load.models_loaded
               for node in service.registry.all())  # fmt: skip


async def _progress(service: RouterService, name: str) -> AsyncGenerator[bytes, None]:
    """Ollama's pull stream for the tasks that bring ``name`` into the fleet; a failure
    ends it with an error line, as Ollama's does."""
    yield _line({"status": "pulling manifest"})
    try:
        if not _held_in_fleet(service, name):
            entry = service.models.entry(name)
            digest = f"sha256:{entry.sha256}" if entry.sha256 else f"sha256:{name}"
            status = f"pulling {digest.removeprefix('sha256:')[:12]}"
            task = await service.tasks.create("router_pull", name, None)
            async for done, total in _followed(service, task["id"]):
                yield _progress_line(status, digest, done, total)
            yield _line({"status": "verifying sha256 digest"})
            async for line in _distributed(service, name, digest):
                yield line
        yield _line({"status": "writing manifest"})
        yield _line({"status": "success"})
    except LlmlbError as exc:
        yield _line({"error": exc.message})


async def _distributed(service: RouterService, name: str,
                       digest: str) -> AsyncGenerator[bytes, None]:  # fmt: skip
    """A node with room for the model fetches it from the router; with none, nodes fetch
    it when it is first asked for (the catalog lists it)."""
    try:
        distribution = await service.distributor.distribute(name, "auto", None, 1)
    except Unavailable as exc:
        yield _line({"status": f"{exc.message}: a node fetches it when it is asked for"})
        return
    for task in distribution.tasks:
        node = service.registry.get(task["node_id"]).name
        async for done, total in _followed(service, task["id"]):
            yield _progress_line(f"pulling to node {node}", digest, done, total)


def _progress_line(status: str, digest: str, done: int, total: int) -> bytes:
    line = {"status": status, "digest": digest, "total": total}
    return _line({**line, "completed": done} if done else line)  # (Ollama's omits a 0)


async def _followed(service: RouterService, task_id: str) -> AsyncGenerator[tuple[int, int], None]:
    """(bytes done, bytes in all) of a task as it runs, each change once and the last
    always; raises the task's error if it fails."""
    seen: tuple[int, int] | None = None
    while True:
        task = await service.tasks.get(task_id)
        total = int(task["bytes_total"] or 0)
        now = (int(task["bytes_done"] or 0), total)
        if task["state"] == "failed":
            raise Unavailable(str(task["error"] or "the transfer failed"))
        if now != seen and total:
            seen = now
            yield now
        if task["state"] == "completed":
            return
        await asyncio.sleep(POLL_SECONDS)


async def delete(request: Request) -> Response:
    service = service_of(request)
    body = await read_json(request, service.settings.max_admin_body_bytes)
    wanted = _wanted(body)
    name = service.models.canonical(service.fleet.resolve(wanted))
    holders = [node for node in service.registry.all() if not node.is_endpoint
               and (name in node.assigned or name in node.load.models_on_disk)]  # fmt: skip
    registered = service.catalog.is_registered(name)
    in_store = service.models.store.get(name) is not None
    if not (holders or registered or in_store):
        raise ModelNotFound(f"model '{wanted[:200]}' not found", param="model")
    for node in holders:
        await service.distributor.remove_from_node(node.id, name)
    service.models.store.remove(name)
    if registered:
        await service.registrations.remove(name)
    return Response(status_code=200)
