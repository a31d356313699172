"""The router's parts, built from settings, started and stopped.

Each concern has one owner (fleet, proxy, forwarder, keys, history, tasks, distributor, ...);
the web layer (``router.api``) talks to those owners directly. This class only builds them,
starts and stops them, and lists the periodic jobs the supervisor runs (``jobs``). No web
framework here.
"""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING

import aiohttp
from sqlalchemy.ext.asyncio import AsyncEngine

from llmlb.common.serving import client_tls
from llmlb.common.settings import RouterSettings
from llmlb.models.catalog import Catalog, tiers_from_setting
from llmlb.models.hub import Hub
from llmlb.router.access import (
    Accounts,
    Allowances,
    Authenticator,
    KeyLimiter,
    KeyStore,
    LimitSharing,
    Provisioning,
)
from llmlb.router.cloud import Clouds, Gateway
from llmlb.router.distribution import (
    Distributor,
    Registrations,
    RouterModels,
    TaskManager,
    router_id,
)
from llmlb.router.fleet import (
    PROBE_INTERVAL,
    Endpoints,
    Fleet,
    NodeControl,
    NodeRecord,
    Prober,
    Registry,
)
from llmlb.router.proxy import Capacity, Forwarder, NodeLinks, Proxy
from llmlb.router.proxy.images import ImageFetcher, PublicResolver
from llmlb.router.storage import RevisionListener, open_database, ping
from llmlb.router.supervisor import Job, Supervisor
from llmlb.router.telemetry import (
    PUBLISH_SECONDS,
    SAMPLE_SECONDS,
    AuditTrail,
    EventBus,
    History,
    Overview,
    RequestRecord,
    RouterMetrics,
)
from llmlb.router.workers import Board, WorkerPlace

if TYPE_CHECKING:
    from llmlb.router.access.sso import SingleSignOn

FLEET_SYNC_SECONDS = 2.0
AUDIT_PRUNE_SECONDS = 3600.0


class RouterService:
    def __init__(
        self, settings: RouterSettings, engine: AsyncEngine, worker: WorkerPlace | None = None
    ) -> None:
        self.settings = settings
        self.engine = engine
        # One of several worker processes (``--workers``): what they have in flight is
        # shared on the board, and its tasks are its own (a worker restarted in its place
        # takes them up again).
        self.worker = worker
        self.board = Board(worker) if worker is not None else None
        identity = router_id(settings.home)
        task_owner = identity if worker is None else worker.owner(identity)
        self.started = False  # start() finished: /startup
        # First: a broken catalog stops the start.
        self.catalog = Catalog.load(settings.home, tiers=tiers_from_setting(settings.model_tiers))
        self.keys = KeyStore(engine)
        self.revision_listener = RevisionListener(engine, lambda topic: self.keys.changed())
        self.accounts = Accounts(engine, settings.session_hours)
        self.auth = Authenticator(
            self.keys, self.accounts,
            admin_password=settings.admin_password, no_auth=settings.no_auth,
        )  # fmt: skip
        self.provisioning = Provisioning(settings, self.keys, self.accounts)
        # Single sign-on's libraries load only where it is set up.
        self.sso: SingleSignOn | None = None
        if settings.oidc:
            from llmlb.router.access import sso

            self.sso = sso.SingleSignOn(settings.oidc)
        capacity = Capacity()
        self.registry = Registry(
            engine,
            on_change=capacity.changed,
            heartbeat_interval=settings.heartbeat_interval,
            allow_cpu_nodes=settings.allow_cpu_nodes,
            require_approval=settings.require_node_approval,
            node_max_concurrency=settings.node_max_concurrency,
            on_stall=self._call_off,
            board=self.board,
        )
        self.limiter = KeyLimiter()
        self.limiter.board = self.board
        siblings = WorkerPlace.siblings(identity) if worker is not None else ""
        self.limit_sharing = LimitSharing(engine, self.limiter, siblings)
        # Every request's record passes here: its tokens count against its key's allowance.
        self.history = History(engine, settings.history_days, on_record=self._charge)
        self.audit = AuditTrail(engine, settings.history_days)
        self.metrics = RouterMetrics(self.registry.all, settings.heartbeat_interval,
                                     settings.queue_size, settings.tls_cert,
                                     self.registry.in_flight)  # fmt: skip
        # Requests to nodes go over the router's own HTTP/1.1 pool (proxy.nodelink); aiohttp
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
        self.prober = Prober(self.registry, self.control)
        self.models = RouterModels(settings.home, self.catalog, self.session)
        self.registrations = Registrations(engine, self.catalog, Hub(self.session))
        self.proxy = Proxy(
            self.registry, settings, self.node_links, self.metrics, capacity,
            lambda m: m in self.catalog, self.board,
        )  # fmt: skip
        self.events = EventBus()
        self.metrics.own.event_streams = lambda: self.events.subscribers
        self.tasks = TaskManager(
            engine, self.registry, self.models, self.control, self.events,
            max_concurrent=settings.max_concurrent_downloads,
            owner=task_owner, lease_seconds=settings.task_lease_seconds,
        )  # fmt: skip
        self.distributor = Distributor(
            settings, self.registry, self.models, self.tasks, self.control
        )
        self.endpoints = Endpoints(self.registry, self.control, identity)
        self.fleet = Fleet(settings, self.registry, self.distributor, self.catalog, self.endpoints)
        # And so do models in a role's limits that are no model's names.
        self.allowances = Allowances(
            {"admin": settings.admin_limits, "viewer": settings.viewer_limits}, self.fleet.resolve
        )
        # Cloud providers get a session of their own: they compress, and their pool must not
        # crowd the nodes'.
        self.cloud_session = aiohttp.ClientSession(timeout=timeout)
        self.clouds = Clouds(settings, self.cloud_session)
        # Images by URL, fetched for nodes (router.proxy.images): public addresses only,
        # checked again as each connection is made, unless the operator allows others.
        resolver = None if settings.image_fetch_private else PublicResolver()
        self.image_session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(resolver=resolver, limit=64)
        )
        self.forwarder = Forwarder(
            settings, self.proxy, self.history, self.metrics,
            lambda model: self.fleet.knows(model) or self.clouds.knows(model),
            self.fleet.resolve, self.fleet.capabilities,
            ImageFetcher(self.image_session, settings.max_image_bytes,
                         settings.image_fetch_private),
        )  # fmt: skip
        self.gateway = Gateway(settings, self.forwarder, self.clouds)
        self.overview = Overview(
            self.registry, self.history, self.events, settings.heartbeat_interval,
            lambda: self.proxy.waiting, self.clouds.configured, self.fleet.nodes,
        )  # fmt: skip
        self.supervisor = Supervisor(self.jobs())

    def jobs(self) -> list[Job]:
        """Everything the router does on its own, every so often."""
        settings = self.settings
        return [
            Job("reading the node table", FLEET_SYNC_SECONDS, self.fleet.sync, "fleet"),
            # Models another router (or the CLI through one) registered from the hub.
            Job("reading the registered models", FLEET_SYNC_SECONDS, self.registrations.sync,
                "distribution"),
            # A node that refused a connection is probed every second, not only at its next
            # heartbeat: a restart or a blip costs it a second of traffic.
            Job("probing unreachable nodes", PROBE_INTERVAL, self.prober.probe_all, "fleet"),
            # Endpoints do not heartbeat: the router asks them, as often as nodes report.
            Job("polling endpoints", settings.heartbeat_interval, self.endpoints.poll_all,
                "fleet"),
            Job("sampling node trends", SAMPLE_SECONDS, self.overview.sample, "telemetry",
                at_start=True),
            Job("computing the overview", PUBLISH_SECONDS, self.overview.publish, "telemetry",
                at_start=True),
            Job("renewing task leases", self.tasks.lease_seconds / 3, self.tasks.resume,
                "distribution"),
            # The database away: the counts go with the next round.
            Job("sharing per-key usage", settings.limit_share_seconds, self.limit_sharing.share,
                "access"),
            # Keys made or revoked by other routers and the CLI: at once where PostgreSQL
            # announces them, and every key_sync_seconds in any case (the database away: the
            # keys read last stay in force).
            Job("reading the keys", settings.key_sync_seconds, self._sync_keys, "access",
                at_start=True),
            Job("pruning the audit trail", AUDIT_PRUNE_SECONDS, self.audit.prune, "telemetry",
                at_start=True),
        ]  # fmt: skip

    async def _sync_keys(self) -> None:
        await self.revision_listener.ensure()
        await self.keys.sync(wait=True)

    def _call_off(self, node: NodeRecord) -> None:
        """The exchanges waiting for a stalled or silent node's answer fail, to go to other
        nodes."""
        self.node_links.call_off(node.base_url, f"node {node.name} is not answering")

    def _charge(self, record: RequestRecord) -> None:
        used = (record.tokens_in or 0) + (record.tokens_out or 0)
        self.limiter.charge(record.key_id, used, record.request_id)

    @classmethod
    async def open(
        cls, settings: RouterSettings, worker: WorkerPlace | None = None
    ) -> RouterService:
        engine = await open_database(settings.db_url, settings.database_wait_seconds)
        return cls(settings, engine, worker)

    async def start(self) -> None:
        await self.registrations.sync()  # (the catalog is whole before anything reads it)
        await self.registry.load()
        await self.endpoints.apply_settings(self.settings.endpoints)
        await self.provisioning.ensure_node_token()
        await self.provisioning.ensure_first_admin()
        self.history.start()
        self.supervisor.start()
        await self.tasks.resume()
        self.started = True

    async def close(self) -> None:
        await self.supervisor.stop()
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
        await self.image_session.close()
        if self.sso is not None:
            await self.sso.close()
        await self.engine.dispose()
        if self.board is not None:
            self.board.close()

    async def ready(self) -> bool:
        return await ping(self.engine)
