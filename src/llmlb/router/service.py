"""The router's parts, built from settings, and their lifecycle.

Each concern has one owner (registry, fleet, forwarder, keys, history, models, tasks,
distributor, ...); the web layer (``router.api``) talks to those owners directly. This
class builds them, starts and stops them, and runs the periodic sync. No web framework here.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from pathlib import Path
from typing import Any

import aiohttp
from sqlalchemy.ext.asyncio import AsyncEngine

from llmlb.common.errors import LlmlbError
from llmlb.common.files import write_private
from llmlb.common.serving import client_tls
from llmlb.common.settings import RouterSettings
from llmlb.models.catalog import Catalog, tiers_from_setting
from llmlb.router.access.accounts import Accounts
from llmlb.router.access.auth import Authenticator, Principal
from llmlb.router.access.keys import KeyLimits, KeyStore, with_resolved_models
from llmlb.router.access.limits import Allowance, KeyLimiter
from llmlb.router.access.sharing import LimitSharing
from llmlb.router.cloud.clouds import Clouds, prefix_of
from llmlb.router.cloud.gateway import Gateway
from llmlb.router.distribution.distributor import Distributor
from llmlb.router.distribution.model_store import RouterModels
from llmlb.router.distribution.tasks import TaskManager
from llmlb.router.fleet.control import NodeControl
from llmlb.router.fleet.fleet import Fleet
from llmlb.router.fleet.node_record import NodeRecord
from llmlb.router.fleet.registry import Registry
from llmlb.router.proxy.admission import Capacity
from llmlb.router.proxy.failover import Proxy
from llmlb.router.proxy.forwarding import Forwarder
from llmlb.router.proxy.nodelink import NodeLinks
from llmlb.router.storage.db import open_database, ping
from llmlb.router.storage.revisions import RevisionListener
from llmlb.router.telemetry.events import EventBus
from llmlb.router.telemetry.history import History, RequestRecord
from llmlb.router.telemetry.metrics import RouterMetrics
from llmlb.router.telemetry.overview import SAMPLE_SECONDS, NodeTrends, overview

log = logging.getLogger(__name__)

NODE_TOKEN_FILE = "node_token"
OVERVIEW_SECONDS = 5.0  # how often listening pages get the overview and the node table
PROBE_INTERVAL = 1.0  # seconds between probes of a node that refused a connection


class Trouble:
    """A background loop's failures, logged once when they start (with the traceback) and
    once when they end, not on every round: a database away for a minute is two lines."""

    def __init__(self, what: str) -> None:
        self._what = what
        self._since: float | None = None

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 _trace: object) -> bool:  # fmt: skip
        if kind is None:
            if self._since is not None:
                log.info("%s works again after %.0f s", self._what, time.monotonic() - self._since)
                self._since = None
            return False
        if not issubclass(kind, Exception):
            return False  # cancellation goes on
        if self._since is None:
            self._since = time.monotonic()
            log.error("%s failed; retrying quietly until it works", self._what, exc_info=error)
        return True


ROUTER_ID_FILE = "router_id"


def router_id(home: Path) -> str:
    """This router's id, kept in its home: a router restarted there owns its tasks again."""
    path = home / ROUTER_ID_FILE
    try:
        return path.read_text().strip()
    except FileNotFoundError:
        identity = str(uuid.uuid4())
        home.mkdir(parents=True, exist_ok=True)
        path.write_text(identity + "\n")
        return identity


class RouterService:
    def __init__(self, settings: RouterSettings, engine: AsyncEngine) -> None:
        self.settings = settings
        self.engine = engine
        # First: a broken catalog stops the start.
        self.catalog = Catalog.load(settings.home, tiers=tiers_from_setting(settings.model_tiers))
        # And so do models in a role's limits that are no model's names.
        self._role_allowances = {
            role: (with_resolved_models(KeyLimits(**limits.model_dump(exclude={"cloud"})),
                                        self.resolve_model), limits.cloud)
            for role, limits in (("admin", settings.admin_limits),
                                 ("viewer", settings.viewer_limits))
        }  # fmt: skip
        self.keys = KeyStore(engine)
        self.revision_listener = RevisionListener(engine, lambda topic: self.keys.changed())
        self.accounts = Accounts(engine, settings.session_hours)
        self.auth = Authenticator(
            self.keys, self.accounts,
            admin_password=settings.admin_password, no_auth=settings.no_auth,
        )  # fmt: skip
        capacity = Capacity()
        self.registry = Registry(
            engine,
            on_change=capacity.changed,
            heartbeat_interval=settings.heartbeat_interval,
            allow_cpu_nodes=settings.allow_cpu_nodes,
            require_approval=settings.require_node_approval,
            node_max_concurrency=settings.node_max_concurrency,
            on_stall=self._call_off,
        )
        self.limiter = KeyLimiter()
        self.limit_sharing = LimitSharing(engine, self.limiter)
        # Every request's record passes here: its tokens count against its key's allowance.
        self.history = History(engine, settings.history_days, on_record=self._charge)
        self.metrics = RouterMetrics(self.registry.all, settings.heartbeat_interval)
        # Requests to nodes go over the router's own HTTP/1.1 pool (nodelink.py); aiohttp
        # serves the rest: model transfers, probes, the clouds.
        self.node_links = NodeLinks(
            client_tls(settings), settings.connect_timeout, settings.request_timeout
        )
        timeout = aiohttp.ClientTimeout(
            total=None, connect=settings.connect_timeout, sock_read=settings.request_timeout
        )
        self.session = aiohttp.ClientSession(
            timeout=timeout,
            connector=aiohttp.TCPConnector(
                limit=4096, keepalive_timeout=30, ssl=client_tls(settings)
            ),
            auto_decompress=False,
        )
        # One connection per request: the probes of unreachable nodes.
        self.fresh_session = aiohttp.ClientSession(
            timeout=timeout,
            connector=aiohttp.TCPConnector(force_close=True, ssl=client_tls(settings)),
            auto_decompress=False,
        )  # fmt: skip
        self.control = NodeControl(self.session, self.fresh_session)
        self.models = RouterModels(settings.home, self.catalog, self.session)
        self.proxy = Proxy(
            self.registry, settings, self.node_links, self.metrics, capacity,
            lambda m: m in self.catalog,
        )  # fmt: skip
        self.events = EventBus()
        self.trends = NodeTrends()
        self.metrics.event_streams.set_function(lambda: self.events.subscribers)
        self.tasks = TaskManager(
            engine, self.registry, self.models, self.control, self.events,
            max_concurrent=settings.max_concurrent_downloads,
            owner=router_id(settings.home), lease_seconds=settings.task_lease_seconds,
        )  # fmt: skip
        self.distributor = Distributor(
            settings, self.registry, self.models, self.tasks, self.control
        )
        self.fleet = Fleet(settings, self.registry, self.distributor, self.catalog)
        # Cloud providers get a session of their own: they compress, and their pool must not
        # crowd the nodes'.
        self.cloud_session = aiohttp.ClientSession(timeout=timeout)
        self.clouds = Clouds(settings, self.cloud_session)
        self.forwarder = Forwarder(
            settings, self.proxy, self.history, self.metrics,
            lambda model: self.fleet.knows(model) or self.clouds.knows(model),
            self.resolve_model,
        )  # fmt: skip
        self.gateway = Gateway(settings, self.forwarder, self.clouds)
        self.node_token_path: Path = settings.home / NODE_TOKEN_FILE
        self._loops: list[asyncio.Task[None]] = []

    def _call_off(self, node: NodeRecord) -> None:
        """A stalled node's exchanges waiting for an answer fail, to go to other nodes."""
        self.node_links.call_off(node.base_url, f"node {node.name} is not receiving requests")

    def allowance_of(self, principal: Principal) -> Allowance | None:
        """What a caller may ask of the client API: its key's limits, its role's for a
        signed-in user; None for a caller nothing limits."""
        if principal.key is not None:
            return Allowance.of_key(principal.key)
        user = principal.user
        if user is None:
            return None
        limits, cloud = self._role_allowances[user.role]
        return Allowance(user.id, limits, cloud, f"user {user.username!r} (role {user.role})")

    def _charge(self, record: RequestRecord) -> None:
        used = (record.tokens_in or 0) + (record.tokens_out or 0)
        self.limiter.charge(record.key_id, used, record.request_id)

    def resolve_model(self, model: str) -> str:
        """The name the nodes know for a model as a client typed it (``gpt-oss:20b`` ->
        ``gpt-oss-20b``); cloud names (``openai:...``) as they are."""
        return model if prefix_of(model) is not None else self.catalog.resolve(model)

    @classmethod
    async def open(cls, settings: RouterSettings) -> RouterService:
        engine = await open_database(settings.db_url)
        return cls(settings, engine)

    async def start(self) -> None:
        await self.registry.load()
        await self.ensure_node_token()
        await self.ensure_first_admin()
        self.history.start()
        self._loops = [
            asyncio.create_task(self._sync_loop()),
            asyncio.create_task(self._probe_loop()),
            asyncio.create_task(self._watch_loop()),
            asyncio.create_task(self._task_lease_loop()),
            asyncio.create_task(self._limit_share_loop()),
            asyncio.create_task(self._key_sync_loop()),
        ]
        await self.tasks.resume()

    async def close(self) -> None:
        for loop in self._loops:
            loop.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await loop
        await self.tasks.close()
        await self.models.downloads.close()
        await self.history.stop()
        await self.revision_listener.close()
        await self.registry.write_heartbeats()
        with contextlib.suppress(Exception):  # what this router let keys use, for the others
            await self.limit_sharing.share()
        await self.session.close()
        await self.fresh_session.close()
        await self.node_links.close()
        await self.cloud_session.close()
        await self.engine.dispose()

    async def _key_sync_loop(self) -> None:
        """Take in keys made or revoked by other routers and the CLI (only those): at once
        where PostgreSQL announces them, and every ``key_sync_seconds`` in any case."""
        trouble = Trouble("reading the keys")
        while True:
            with trouble:  # the database is away: the keys read last stay in force
                await self.revision_listener.ensure()
                await self.keys.sync(wait=True)
            await asyncio.sleep(self.settings.key_sync_seconds)

    async def _limit_share_loop(self) -> None:
        """Share per-key usage with the other routers on this database."""
        trouble = Trouble("sharing per-key usage")
        while True:
            await asyncio.sleep(self.settings.limit_share_seconds)
            with trouble:  # the database is away: the counts go with the next round
                await self.limit_sharing.share()

    async def _task_lease_loop(self) -> None:
        """Renew the leases of this router's tasks, and take over those of a dead router."""
        trouble = Trouble("renewing task leases")
        while True:
            await asyncio.sleep(self.tasks.lease_seconds / 3)
            with trouble:  # the database is away: the next round tries again
                await self.tasks.resume()

    async def _probe_loop(self) -> None:
        """A node that refused a connection is tried again every second (GET /health), not
        only at its next heartbeat: a restart or a blip costs it a second of traffic."""
        while True:
            await asyncio.sleep(PROBE_INTERVAL)
            for node in [n for n in self.registry.all() if n.unreachable]:
                if await self.control.probe(node):
                    self.registry.mark_reachable(node.id)

    async def overview(self) -> dict[str, Any]:
        return await overview(
            self.registry, self.history, self.settings.heartbeat_interval, self.proxy.waiting,
            self.clouds.configured(),
        )  # fmt: skip

    async def _watch_loop(self) -> None:
        """Node history every 30 s; while a page listens, the overview every 5 s on the
        event bus (pages never poll faster)."""
        sampled = 0.0
        trouble = Trouble("computing the overview")
        while True:
            now = time.monotonic()
            if now - sampled >= SAMPLE_SECONDS:
                self.trends.sample(self.registry.all())
                sampled = now
            if self.events.subscribers:
                with trouble:
                    self.events.publish({"type": "overview", **await self.overview()})
                    self.events.publish({"type": "nodes", "data": self.fleet.nodes()})
            await asyncio.sleep(OVERVIEW_SECONDS)

    async def _sync_loop(self) -> None:
        """Pick up operator changes made by the CLI or by other routers on the same database."""
        trouble = Trouble("reading the node table")
        while True:
            await asyncio.sleep(2.0)
            with trouble:
                await self.registry.load()
                await self.registry.purge_offline(self.settings.offline_node_expiry)

    async def ensure_node_token(self) -> None:
        """On first start, create a ``node`` key and keep its secret in the home folder."""
        path = self.node_token_path
        if path.exists() and await self.keys.verify(path.read_text().strip()) is not None:
            return
        _, secret = await self.keys.create("default node token", ["node"])
        write_private(path, secret + "\n")
        log.info("created a node token (scope 'node'); it is stored in %s", path)

    async def ensure_first_admin(self) -> None:
        """On first start with ``LLMLB_ADMIN_PASSWORD`` set, the user ``admin`` with it."""
        password = self.settings.admin_password
        if password is None or await self.accounts.count() > 0:
            return
        try:
            await self.accounts.create("admin", password, "admin")
        except LlmlbError as exc:
            log.warning("no first admin account created from the admin password: %s", exc.message)
            return
        log.info("created the first dashboard account, 'admin', with the admin password")

    async def ready(self) -> bool:
        return await ping(self.engine)

    # -- nodes -----------------------------------------------------------------------------

    # -- client requests -------------------------------------------------------------------
