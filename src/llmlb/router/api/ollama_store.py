"""Ollama's ``/api/pull`` and ``/api/delete`` over the fleet's model store (admins only).

``ollama pull NAME`` makes a model ready to serve here as on an Ollama server, but for the
fleet: a name the catalog lists (or a Hugging Face reference such as
``hf.co/ORG/REPO:Q4_K_M``, registered on the way, as Ollama takes them) is fetched into the
router's store and distributed to a node with room for it (``target auto``), as the admin
API's tasks do. The progress is Ollama's NDJSON stream (``pulling manifest``, ``pulling
<digest>`` with ``total`` and ``completed``, ``verifying sha256 digest``, ``success``),
read from those tasks; a transfer already under way for the model is followed, not started
again. A model some live node already holds is there: nothing is fetched. A client that
leaves stops reading, not the tasks (a fleet's transfer resumes; they are in
``/api/tasks``).

``ollama rm NAME`` takes the model off every node's list, off the disks of those that are
up, out of the router's store, and unregisters it if it was registered. A model nowhere in
the fleet is Ollama's 404, ``model 'NAME' not found``; one being pulled is a 409 (the pull
would bring it back).

Unlike Ollama, a name that cannot be pulled is a 404 before the stream starts (a client's
mistake is a 4xx), where Ollama answers 200 and an error line.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections.abc import AsyncGenerator
from typing import TYPE_CHECKING, Any

import orjson
from starlette.requests import Request
from starlette.responses import Response

from llmlb.common.asgi import ClosingStreamingResponse, read_json
from llmlb.common.errors import BadRequest, Conflict, LlmlbError, ModelNotFound, Unavailable
from llmlb.router.api.common import service_of
from llmlb.router.distribution import ACTIVE

if TYPE_CHECKING:
    from llmlb.router.service import RouterService

log = logging.getLogger(__name__)

NDJSON = "application/x-ndjson"
POLL_SECONDS = 0.25  # (tasks save their progress once a second)
STALLED_SECONDS = 300.0  # a task whose row has not changed for this long is reported stuck
_MANIFEST_MISSING = "pull model manifest: file does not exist"  # Ollama's words
_HUB_HOSTS = ("hf.co/", "huggingface.co/", "http://", "https://")


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


def _digest(text: str) -> str:
    """A digest for a progress line: Ollama's clients key their bars by it (and slice it)."""
    return "sha256:" + hashlib.sha256(text.encode()).hexdigest()


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
    Hugging Face reference (registered now unless it was already, here or by another
    router)."""
    name = service.fleet.resolve(wanted)
    if service.fleet.knows(name):
        return name
    if "/" not in wanted:
        raise ModelNotFound(_MANIFEST_MISSING, param="model")
    await service.registrations.sync()  # (another router may have registered it)
    # ``ORG/REPO:QUANT`` is the same reference as ``hf.co/ORG/REPO:QUANT``.
    as_typed = wanted if wanted.lower().startswith(_HUB_HOSTS) else f"hf.co/{wanted}"
    for reference in (wanted, as_typed):
        name = service.fleet.resolve(reference)
        if service.fleet.knows(name):
            return name
    entry, _ = await service.registrations.register(wanted, None, [], who)
    return entry.name


def _live(service: RouterService) -> list[Any]:
    interval = service.settings.heartbeat_interval
    return [node for node in service.registry.all() if node.status(interval) != "offline"]


async def _active_tasks(service: RouterService, name: str) -> list[dict[str, Any]]:
    return [task for task in await service.tasks.list()
            if task["model"] == name and task["state"] in ACTIVE]  # fmt: skip


async def _progress(service: RouterService, name: str) -> AsyncGenerator[bytes, None]:
    """Ollama's pull stream for the tasks that bring ``name`` into the fleet; a failure
    ends it with an error line, as Ollama's does."""
    yield _line({"status": "pulling manifest"})
    try:
        held = any(name in node.load.models_on_disk or name in node.load.models_loaded
                   for node in _live(service))  # fmt: skip
        if not held:
            async for line in _fetched(service, name):
                yield line
        yield _line({"status": "writing manifest"})
        yield _line({"status": "success"})
    except LlmlbError as exc:
        yield _line({"error": exc.message})
    except Exception as exc:  # (the database, say): the stream still ends with a reason
        log.warning("pulling %s failed: %s: %s", name, type(exc).__name__, exc)
        yield _line({"error": f"the pull failed: {type(exc).__name__}"})


async def _fetched(service: RouterService, name: str) -> AsyncGenerator[bytes, None]:
    """Into the router's store, then onto a node; transfers under way are followed."""
    entry = service.models.entry(name)
    digest = f"sha256:{entry.sha256}" if entry.sha256 else _digest(name)
    active = await _active_tasks(service, name)
    router_pulls = [t for t in active if t["kind"] == "router_pull"]
    node_pulls = [t for t in active if t["kind"] == "node_pull"]
    if not node_pulls:  # (a node's pull comes through the router's store anyway)
        task = router_pulls[0] if router_pulls else await service.tasks.create(
            "router_pull", name, None)  # fmt: skip
        status = f"pulling {digest.removeprefix('sha256:')[:12]}"
        async for done, total in _followed(service, task["id"]):
            yield _progress_line(status, digest, done, total)
        yield _line({"status": "verifying sha256 digest"})
        try:
            node_pulls = (await service.distributor.distribute(name, "auto", None, 1)).tasks
        except Unavailable as exc:
            yield _line({"status": f"{exc.message}: a node fetches it when it is asked for"})
    for task in node_pulls:
        node = service.registry.get(task["node_id"]).name
        async for done, total in _followed(service, task["id"]):
            yield _progress_line(f"pulling to node {node}", _digest(f"{digest}@{node}"),
                                 done, total)  # fmt: skip


def _progress_line(status: str, digest: str, done: int, total: int) -> bytes:
    line = {"status": status, "digest": digest, "total": total}
    return _line({**line, "completed": done} if done else line)  # (Ollama's omits a 0)


async def _followed(service: RouterService, task_id: str) -> AsyncGenerator[tuple[int, int], None]:
    """(bytes done, bytes in all) of a task as it runs, each change once and the last
    always; raises the task's error if it fails, or if it stalls (its row unchanged for
    ``STALLED_SECONDS``)."""
    seen: tuple[int, int] | None = None
    last_update, changed_at = None, time.monotonic()
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
        if task["updated_at"] != last_update:
            last_update, changed_at = task["updated_at"], time.monotonic()
        elif time.monotonic() - changed_at > STALLED_SECONDS:
            raise Unavailable(f"the transfer stalled (task {task_id} in /api/tasks)")
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
    if await _active_tasks(service, name):
        raise Conflict(f"model '{wanted[:200]}' is being pulled: wait for it (/api/tasks), "
                       "then delete it")  # fmt: skip
    live = {node.id for node in _live(service)}
    left: list[str] = []
    for node in holders:
        if node.id not in live:  # off its list now; its file goes when it is asked again
            await service.registry.assign(node.id, remove=[name])
            continue
        try:
            await service.distributor.remove_from_node(node.id, name)
        except LlmlbError as exc:  # (serving it right now, unreachable): the others go on
            left.append(exc.message)
    await asyncio.to_thread(service.models.store.remove, name)
    if registered:
        await service.registrations.remove(name)
    if left:
        raise Conflict(f"model '{wanted[:200]}' is off the fleet's lists, but: "
                       + "; ".join(left))  # fmt: skip
    return Response(status_code=200)
