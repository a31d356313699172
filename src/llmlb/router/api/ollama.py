"""Ollama's API on the router: every Ollama client (the ``ollama`` libraries, LangChain's
``ChatOllama``, Open WebUI, editor plugins) becomes a client of the whole fleet.

``/api/chat``, ``/api/generate``, ``/api/embed`` and ``/api/embeddings`` are served by
``api.client.ClientRoutes`` beside the OpenAI endpoints (same keys, limits, departure
watch, history and metrics), translated by ``llmlb.translate.dialects.ollama``. The listing
routes (``/api/version``, ``/api/tags``, ``/api/show``, ``/api/ps``, ``GET /``) are here.
Errors are Ollama's ``{"error": "..."}`` with the status of the router's error.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import PlainTextResponse, RedirectResponse, Response

from llmlb import __version__
from llmlb.common.asgi import StreamRelay, read_json
from llmlb.common.errors import BadRequest, LlmlbError, ModelNotFound
from llmlb.common.wire import parse_object
from llmlb.models.catalog import QUANT_IN_NAME, CatalogEntry
from llmlb.router.api.common import authorize, service_of
from llmlb.router.api.translated import in_terms_of, reply_headers
from llmlb.router.cloud import Caller, Gateway
from llmlb.translate.dialects import ollama

NDJSON = "application/x-ndjson"
# Ollama's routes: a client's (scope api), not the operator's, though under /api/.
CLIENT_PATHS = frozenset({"/api/chat", "/api/generate", "/api/embed", "/api/embeddings",
                          "/api/version", "/api/tags", "/api/show", "/api/ps"})  # fmt: skip
# The operator's, in Ollama's shape (router.api.ollama_store; scope admin).
OPERATOR_PATHS = frozenset({"/api/pull", "/api/delete"})
# The Ollama version clients are told: the API this router speaks (clients gate features
# on it, e.g. structured outputs from 0.5).
OLLAMA_VERSION = "0.12.6"
ROOT_TEXT = "Ollama is running"
_CAPABILITY_NAMES = {"chat": "completion", "completion": "completion", "embedding": "embedding",
                     "vision": "vision", "tools": "tools", "reasoning": "thinking"}  # fmt: skip


def error(exc: LlmlbError) -> Response:
    """Ollama's error shape (its clients read ``error``)."""
    return Response(orjson.dumps({"error": exc.message}), exc.status, headers=exc.headers,
                    media_type="application/json")  # fmt: skip


def _json(data: dict[str, Any], headers: dict[str, str] | None = None) -> Response:
    return Response(orjson.dumps(data), 200, headers=headers, media_type="application/json")


async def serve_chat(gateway: Gateway, raw: bytes, caller: Caller) -> Response | StreamRelay:
    return await _generate(gateway, raw, caller, generate=False)


async def serve_generate(gateway: Gateway, raw: bytes, caller: Caller) -> Response | StreamRelay:
    return await _generate(gateway, raw, caller, generate=True)


async def _generate(gateway: Gateway, raw: bytes, caller: Caller,
                    generate: bool) -> Response | StreamRelay:  # fmt: skip
    body = parse_object(raw)
    if generate and ollama.just_loads(body):
        return _json(ollama.loaded(body))
    request, ignored = (ollama.generate_request if generate else ollama.chat_request)(body)
    context = ollama.num_ctx(body)
    clock = ollama.Clock()
    try:
        if generate and ollama.is_raw(body):
            reply = await gateway.completion("ollama_raw", request, caller)
        else:
            endpoint = "ollama_generate" if generate else "ollama_chat"
            reply = await gateway.chat(endpoint, request, caller)
    except LlmlbError as exc:
        raise in_terms_of(exc, ollama.CHAT_FIELDS) from None
    headers = reply_headers(reply.target, reply.attempts, [*ignored, *reply.ignored])
    if context is not None and reply.context:  # the context it ran with (ollama.num_ctx)
        headers["x-llmlb-context-length"] = str(reply.context)
    if reply.chunks is not None:
        lines = ollama.stream(reply.chunks, body, generate, clock)
        return StreamRelay(lines, 200, NDJSON, {**headers, "cache-control": "no-cache",
                                                "x-accel-buffering": "no"})  # fmt: skip
    assert reply.whole is not None
    render = ollama.generate_answer if generate else ollama.chat_answer
    return _json(render(reply.whole, body, clock), headers)


async def serve_embed(gateway: Gateway, raw: bytes, caller: Caller) -> Response | StreamRelay:
    return await _embed(gateway, raw, caller, legacy=False)


async def serve_embeddings(gateway: Gateway, raw: bytes,
                           caller: Caller) -> Response | StreamRelay:  # fmt: skip
    return await _embed(gateway, raw, caller, legacy=True)


async def _embed(gateway: Gateway, raw: bytes, caller: Caller, legacy: bool) -> Response:
    body = parse_object(raw)
    clock = ollama.Clock()
    request = ollama.embed_request(body, legacy)
    target, attempts, answer = await gateway.embeddings("ollama_embed", request, caller)
    return _json(ollama.embed_answer(answer, body, legacy, clock),
                 reply_headers(target, attempts, []))  # fmt: skip


# -- the listing routes -------------------------------------------------------------------

Handler = Callable[[Request], Awaitable[Response]]


def ollama_errors(handler: Handler) -> Handler:
    """A handler whose errors (its credentials' included) are in Ollama's shape."""

    async def wrapped(request: Request) -> Response:
        try:
            return await handler(request)
        except LlmlbError as exc:
            return error(exc)

    return wrapped


async def root(request: Request) -> Response:
    """``GET /``: Ollama's clients probe it; a browser goes on to the dashboard."""
    if "text/html" in request.headers.get("accept", ""):
        return RedirectResponse("/dashboard", status_code=307)
    return PlainTextResponse(ROOT_TEXT)


async def version(request: Request) -> Response:
    await authorize(request, "api")
    return _json({"version": OLLAMA_VERSION, "llmlb": __version__})


def _details(entry: CatalogEntry | None, name: str) -> dict[str, Any]:
    tags = entry.tags if entry else []
    family = next((t for t in tags if t not in ("hub",)), "") if tags else ""
    file = entry.origin.hub.file if entry and entry.origin.hub else name
    quant = QUANT_IN_NAME.findall(file.rsplit("/", 1)[-1]) or QUANT_IN_NAME.findall(name)
    return {"parent_model": "", "format": "gguf", "family": family,
            "families": [family] if family else None, "parameter_size": "",
            "quantization_level": quant[-1].upper() if quant else ""}  # fmt: skip


def _tag(name: str) -> str:
    return name if ":" in name else f"{name}:latest"


def _row(request: Request, name: str) -> dict[str, Any]:
    catalog = service_of(request).catalog
    entry = catalog.get(name)
    return {"name": _tag(name), "model": _tag(name), "modified_at": ollama.created_at(),
            "size": (entry.size_bytes if entry else None) or 0,
            "digest": (entry.sha256 if entry else None) or "",
            "details": _details(entry, name)}  # fmt: skip


async def tags(request: Request) -> Response:
    """The fleet's and the catalog's models, as Ollama lists what it has."""
    await authorize(request, "api")
    rows = service_of(request).fleet.model_list()
    return _json({"models": [_row(request, row["id"]) for row in rows]})


async def show(request: Request) -> Response:
    await authorize(request, "api")
    service = service_of(request)
    body = await read_json(request, service.settings.max_admin_body_bytes)
    wanted = body.get("model") or body.get("name")
    if not isinstance(wanted, str) or not wanted:
        raise BadRequest("'model' is required", param="model")
    name = service.fleet.resolve(wanted)
    if not service.fleet.knows(name):
        raise ModelNotFound(f"model '{wanted[:200]}' not found", param="model")
    entry = service.catalog.get(name)
    capabilities = service.fleet.capabilities(name) or frozenset({"chat"})
    info: dict[str, Any] = {}
    if entry is not None:
        arch = next((t for t in entry.tags if t != "hub"), "")
        info = {"general.architecture": arch, "general.basename": name}
        if entry.context_length:
            info[f"{arch or 'model'}.context_length"] = entry.context_length
    return _json({
        "modelfile": f"FROM {name}\n", "parameters": "",
        "template": (entry.chat_template if entry else None) or "",
        "details": _details(entry, name), "model_info": info,
        "capabilities": sorted({_CAPABILITY_NAMES[c] for c in capabilities
                                if c in _CAPABILITY_NAMES}),
        "modified_at": ollama.created_at(),
    })  # fmt: skip


async def ps(request: Request) -> Response:
    """What is loaded where: a model once per node that has it loaded."""
    await authorize(request, "api")
    service = service_of(request)
    rows = []
    for node in service.registry.all():
        for name in node.load.models_loaded:
            row = _row(request, name)
            rows.append({**row, "expires_at": "0001-01-01T00:00:00Z", "size_vram": 0,
                         "context_length": node.load.ctx_size, "node": node.name})  # fmt: skip
    return _json({"models": rows})
