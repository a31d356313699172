"""The router's core, built from settings: state, registry, keys, history, proxy.

No web framework here: ``router.app`` parses HTTP and calls these methods.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
from collections.abc import AsyncGenerator
from pathlib import Path
from typing import Any

import aiohttp
from sqlalchemy.ext.asyncio import AsyncEngine

from llmlb import __version__
from llmlb.common.errors import BadRequest, LlmlbError
from llmlb.common.files import write_private
from llmlb.common.settings import RouterSettings
from llmlb.common.wire import NodeLoad, RegisterRequest, RegisterResponse, parse_object
from llmlb.models.catalog import Catalog
from llmlb.router.auth import Authenticator
from llmlb.router.balancer import prefix_key_of
from llmlb.router.db import open_database, ping
from llmlb.router.distributor import Distributor
from llmlb.router.history import History, RequestRecord
from llmlb.router.keys import KeyStore
from llmlb.router.metrics import RouterMetrics
from llmlb.router.models import RouterModels
from llmlb.router.proxy import Answer, Capacity, Proxy, Routed, usage_of
from llmlb.router.registry import Registry
from llmlb.router.tasks import EventBus, TaskManager

log = logging.getLogger(__name__)

NODE_TOKEN_FILE = "node_token"
_BODY_LOG_LIMIT = 64 * 1024
# The usage object of a stream is in its last event; this much of the tail always holds it.
_USAGE_TAIL = 4096
# Requests for models nobody knows count under this one label (clients choose model names).
UNKNOWN_MODEL_LABEL = "unknown"
# The history column's width: longer names are refused before they reach a node or a row.
MAX_MODEL_NAME = 200


class RouterService:
    def __init__(self, settings: RouterSettings, engine: AsyncEngine) -> None:
        self.settings = settings
        self.engine = engine
        self.catalog = Catalog.load(settings.home)  # first: a broken catalog stops the start
        self.keys = KeyStore(engine)
        self.auth = Authenticator(
            self.keys, admin_password=settings.admin_password, no_auth=settings.no_auth
        )
        capacity = Capacity()
        self.registry = Registry(
            engine,
            on_change=capacity.changed,
            heartbeat_interval=settings.heartbeat_interval,
            allow_cpu_nodes=settings.allow_cpu_nodes,
            require_approval=settings.require_node_approval,
            node_max_concurrency=settings.node_max_concurrency,
        )
        self.history = History(engine, settings.history_days)
        self.metrics = RouterMetrics(self.registry.all, settings.heartbeat_interval)
        # aiohttp for the hot path: at 64 concurrent streams it relays about twice what
        # httpx's pool does on this machine (bench/router_overhead.py).
        self.session = aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(
                total=None, connect=settings.connect_timeout, sock_read=settings.request_timeout
            ),
            connector=aiohttp.TCPConnector(limit=4096, keepalive_timeout=30),
            auto_decompress=False,
        )
        self.models = RouterModels(settings.home, self.catalog, self.session)
        self.proxy = Proxy(
            self.registry, settings, self.session, self.metrics, capacity,
            lambda m: m in self.catalog,
        )  # fmt: skip
        self.events = EventBus()
        self.metrics.event_streams.set_function(lambda: self.events.subscribers)
        self.tasks = TaskManager(
            engine, self.registry, self.models, self.session, self.events,
            max_concurrent=settings.max_concurrent_downloads,
        )  # fmt: skip
        self.distributor = Distributor(
            settings, self.registry, self.models, self.tasks, self.session
        )
        self.node_token_path: Path = settings.home / NODE_TOKEN_FILE
        self._sync_task: asyncio.Task[None] | None = None

    @classmethod
    async def open(cls, settings: RouterSettings) -> RouterService:
        engine = await open_database(settings.db_url)
        return cls(settings, engine)

    async def start(self) -> None:
        await self.registry.load()
        await self.ensure_node_token()
        self.history.start()
        self._sync_task = asyncio.create_task(self._sync_loop())
        await self.tasks.resume()

    async def close(self) -> None:
        if self._sync_task is not None:
            self._sync_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sync_task
        await self.tasks.close()
        await self.models.downloads.close()
        await self.history.stop()
        await self.session.close()
        await self.engine.dispose()

    async def _sync_loop(self) -> None:
        """Pick up operator changes made by the CLI or by other routers on the same database."""
        while True:
            await asyncio.sleep(2.0)
            try:
                await self.registry.load()
                await self.registry.purge_offline(self.settings.offline_node_expiry)
            except Exception:
                log.exception("reading the node table failed")

    async def ensure_node_token(self) -> None:
        """On first start, create a ``node`` key and keep its secret in the home folder."""
        path = self.node_token_path
        if path.exists() and await self.keys.verify(path.read_text().strip()) is not None:
            return
        _, secret = await self.keys.create("default node token", ["node"])
        write_private(path, secret + "\n")
        log.info("created a node token (scope 'node'); it is stored in %s", path)

    async def ready(self) -> bool:
        return await ping(self.engine)

    # -- nodes -----------------------------------------------------------------------------

    async def register_node(self, request: RegisterRequest, token: str | None) -> RegisterResponse:
        node = await self.registry.register(request, token)
        assigned = await self.distributor.assign_on_registration(node)
        return RegisterResponse(
            node_id=node.id,
            heartbeat_interval=self.settings.heartbeat_interval,
            status=node.status(time.time(), self.settings.heartbeat_interval),
            assigned_models=assigned,
        )

    async def heartbeat(self, node_id: str, load: NodeLoad, token: str | None) -> dict[str, Any]:
        node = await self.registry.heartbeat(node_id, load, token)
        return {"status": node.status(time.time(), self.settings.heartbeat_interval)}

    def nodes(self) -> list[dict[str, Any]]:
        now = time.time()
        return [n.to_dict(now, self.settings.heartbeat_interval) for n in self.registry.all()]

    def node(self, node_id: str) -> dict[str, Any]:
        return self.registry.get(node_id).to_dict(time.time(), self.settings.heartbeat_interval)

    def model_list(self) -> list[dict[str, Any]]:
        """What the fleet can serve: models on nodes, and catalog models (fetched on demand)."""
        loaded: dict[str, list[str]] = {}
        for node in self.registry.all():
            for model in node.load.models_loaded:
                loaded.setdefault(model, []).append(node.id)
        held = self.registry.fleet_models()
        return [
            {
                "id": model,
                "object": "model",
                "created": 0,
                "owned_by": "llmlb",
                "nodes": sorted(held.get(model, [])),
                "loaded_on": sorted(loaded.get(model, [])),
                "in_catalog": model in self.catalog,
            }
            for model in sorted(set(held) | set(self.catalog.names()))
        ]

    # -- client requests -------------------------------------------------------------------

    def route(self, endpoint: str, path: str, raw: bytes) -> Routed:
        body = parse_object(raw)
        model = body.get("model")
        if not isinstance(model, str) or not model:
            raise BadRequest("'model' is required and must be a non-empty string", param="model")
        if len(model) > MAX_MODEL_NAME:
            raise BadRequest(f"'model' is longer than {MAX_MODEL_NAME} characters", param="model")
        stream = body.get("stream", False)
        if not isinstance(stream, bool):
            raise BadRequest("'stream' must be a boolean", param="stream")
        prefix = prefix_key_of(model, body) if self.settings.balancer == "prefix_affinity" else None
        return Routed(endpoint, path, model, stream, raw, prefix)

    async def forward(
        self, routed: Routed, headers: dict[str, str], key_id: str | None, request_id: str
    ) -> Answer:
        """The node's answer, recorded in history and metrics once it is complete."""
        started = time.monotonic()
        try:
            answer = await self.proxy.forward(routed, headers)
        except LlmlbError as exc:
            self._record(routed, request_id, key_id, started, None, exc.status, error=exc.message)
            raise
        if answer.chunks is None:
            self._record(routed, request_id, key_id, started, answer, answer.status)
            return answer
        chunks = self._recorded_stream(routed, answer, answer.chunks, request_id, key_id, started)
        return dataclasses.replace(answer, chunks=chunks)

    async def _recorded_stream(
        self,
        routed: Routed,
        answer: Answer,
        chunks: AsyncGenerator[bytes, None],
        request_id: str,
        key_id: str | None,
        started: float,
    ) -> AsyncGenerator[bytes, None]:
        """Relays the stream; when it ends (or the client leaves) closes the node's side at
        once and records what was seen, usage included."""
        kept: list[bytes] = []
        size = 0
        tail = b""
        pieces = 0  # generated pieces seen: the token count when the stream ends early
        status = 200
        try:
            async with contextlib.aclosing(chunks) as relay:
                async for chunk in relay:
                    tail = (tail + chunk)[-_USAGE_TAIL:]
                    pieces += chunk.count(b'"content":"') + chunk.count(b'"text":"')
                    if self.settings.log_bodies and size < _BODY_LOG_LIMIT:
                        kept.append(chunk)
                        size += len(chunk)
                    yield chunk
        except BaseException:
            status = 499  # the client went away
            raise
        finally:
            # llama.cpp sends one piece per token; the usage event, when the stream got that
            # far, has the exact counts.
            usage = {"completion_tokens": pieces, **usage_of(tail)}
            seen = dataclasses.replace(answer, body=b"".join(kept), usage=usage)
            self._record(routed, request_id, key_id, started, seen, status)

    def _model_label(self, model: str) -> str:
        """A metric label: a model the fleet or the catalog knows, or one fixed label."""
        if model in self.catalog or model in self.registry.fleet_models():
            return model
        return UNKNOWN_MODEL_LABEL

    def _record(
        self,
        routed: Routed,
        request_id: str,
        key_id: str | None,
        started: float,
        answer: Answer | None,
        status: int,
        error: str | None = None,
    ) -> None:
        latency = time.monotonic() - started
        label = self._model_label(routed.model)
        self.metrics.requests.labels(routed.endpoint, label, str(status)).inc()
        self.metrics.latency.labels(routed.endpoint).observe(latency)
        usage = answer.usage if answer else {}
        if usage:
            self.metrics.tokens.labels(label, "in").inc(usage.get("prompt_tokens", 0))
            self.metrics.tokens.labels(label, "out").inc(usage.get("completion_tokens", 0))
        ttft = None
        if answer is not None and answer.first_byte_at is not None:
            ttft = (answer.first_byte_at - started) * 1000
            self.metrics.ttft.labels(routed.endpoint).observe(ttft / 1000)
        if error is not None or status >= 400:
            self.metrics.errors.labels(str(status)).inc()
        log_bodies = self.settings.log_bodies
        self.history.add(
            RequestRecord(
                ts=time.time(),
                request_id=request_id,
                key_id=key_id,
                endpoint=routed.endpoint,
                model=routed.model[:MAX_MODEL_NAME],
                node_id=answer.node.id if answer else None,
                status=status,
                latency_ms=round(latency * 1000, 2),
                ttft_ms=round(ttft, 2) if ttft is not None else None,
                tokens_in=usage.get("prompt_tokens"),
                tokens_out=usage.get("completion_tokens"),
                attempts=answer.attempts if answer else 1,
                error=error,
                request_body=routed.body[:_BODY_LOG_LIMIT].decode(errors="replace")
                if log_bodies
                else None,
                response_body=answer.body[:_BODY_LOG_LIMIT].decode(errors="replace")
                if log_bodies and answer
                else None,
            )
        )

    def version(self) -> str:
        return __version__
