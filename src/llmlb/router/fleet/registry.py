"""The node registry: who is in the fleet, what each node holds, and whether it may serve.

The hot copy lives in memory (the balancer reads it on every request, through
``fleet.snapshots``); every change is written through to the node table (``fleet.table``),
and operator flags (approved, draining, removed) are read back from it periodically, so the
management CLI and other routers sharing the database are seen within a few seconds. Whether
a node that heartbeats really serves is ``fleet.health``'s to say. With worker processes
(``router.workers``) it tells the others, on their board, when a node speaks or joins, and
reads the table at once when another worker heard one join (``caught_up``).

Longer than most modules on purpose: it is the one writer of the in-memory index (nodes,
endpoints, their addresses and the endpoints' model names), and every change to it is here,
beside the write-through that must happen with it; split, the index and its invariants would
be kept in two places.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Callable, Iterable

from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine

from llmlb.common.credentials import same_secret
from llmlb.common.errors import Conflict, NotFound, PermissionDenied
from llmlb.common.wire import NodeLoad, RegisterRequest
from llmlb.router.balancer.ranking import NodeSnapshot
from llmlb.router.fleet.health import black_holed
from llmlb.router.fleet.node_record import (
    MISSED_HEARTBEATS_OFFLINE,
    EndpointConfig,
    NodeRecord,
    record_of,
)
from llmlb.router.fleet.snapshots import Snapshots, heard_by_a_worker
from llmlb.router.fleet.table import NodeTable
from llmlb.router.workers.board import Board

log = logging.getLogger(__name__)


class Registry:
    def __init__(
        self,
        engine: AsyncEngine,
        *,
        heartbeat_interval: float,
        allow_cpu_nodes: bool,
        require_approval: bool,
        node_max_concurrency: int | None,
        started_at: float | None = None,
        on_change: Callable[[], None] = lambda: None,
        on_stall: Callable[[NodeRecord], None] = lambda node: None,
        board: Board | None = None,
    ) -> None:
        # Called whenever capacity may have appeared (a node registered, heartbeated, was
        # approved or undrained): queued requests look again.
        self._on_change = on_change
        # Called when a node stalls: its waiting exchanges are to be called off.
        self._on_stall = on_stall
        # Heartbeats older than this process are not proof that a node is there now.
        self._started_at = time.time() if started_at is None else started_at
        self._table = NodeTable(engine)
        self.heartbeat_interval = heartbeat_interval
        self._allow_cpu = allow_cpu_nodes
        self._require_approval = require_approval
        self._nodes: dict[str, NodeRecord] = {}
        self._addresses: dict[tuple[str, str], str] = {}  # (name, base_url) -> node id
        # With worker processes (router.workers): what the others have in flight, and hear.
        self.board = board
        self._views = Snapshots(self._nodes, heartbeat_interval, node_max_concurrency, board)
        self._unwritten: set[str] = set()  # nodes whose last heartbeat is not in the database
        self._loading = asyncio.Lock()
        self._fleet_read = 0  # (with workers) the board's fleet revision as last read
        # Endpoints' own model ids -> the fleet's names for them (router.fleet.endpoints).
        self._upstream_names: dict[str, str] = {}

    # -- the index -------------------------------------------------------------------------

    def get(self, node_id: str) -> NodeRecord:
        node = self._nodes.get(node_id)
        if node is None:
            raise NotFound(f"no node with id {node_id!r}", code="node_not_found")
        return node

    def all(self) -> list[NodeRecord]:
        if self.board is not None:
            for node in self._nodes.values():
                heard_by_a_worker(node, self.board)
        return sorted(self._nodes.values(), key=lambda n: (n.name, n.id))

    def in_flight(self, node: NodeRecord) -> int:
        """The router's requests in flight to the node: this process's, and with workers
        (router.workers) the others' too."""
        return node.active + (self.board.elsewhere(node.id) if self.board is not None else 0)

    def _told(self, node: NodeRecord, fleet_changed: bool) -> None:
        """With workers: the others learn at once that the node spoke (and, when it joined or
        changed what it serves, that the node table is worth reading)."""
        if self.board is not None:
            self.board.hear(node.id, node.heard_at)
            if fleet_changed:
                self.board.fleet_changed()

    def _add(self, record: NodeRecord) -> NodeRecord:
        self._nodes[record.id] = record
        self._addresses[(record.name, record.base_url)] = record.id
        return record

    def _drop(self, node_id: str) -> None:
        record = self._nodes.pop(node_id, None)
        if record is not None:
            self._addresses.pop((record.name, record.base_url), None)
            if record.upstream:
                self._index_upstream_names()

    def _index_upstream_names(self) -> None:
        self._upstream_names = {
            own: name for n in self._nodes.values() for name, own in n.upstream.items()
            if own != name
        }  # fmt: skip

    # -- what the balancer reads (balancer.choice.FleetView) --------------------------------

    def fleet_models(self) -> dict[str, list[str]]:
        """Every model any node holds -> the ids of the nodes that hold it (cached until the
        next change: requests ask on every call)."""
        return self._views.holders()

    def holders(self, model: str) -> list[str]:
        return self._views.holders().get(model, [])

    def snapshots(self, ids: Iterable[str] | None = None) -> list[NodeSnapshot]:
        """What the balancer needs of those nodes (every one's for None), as of now."""
        return self._views.of(list(self._nodes) if ids is None else ids)

    def changed(self, node: NodeRecord | None = None, *, models: bool = True) -> None:
        """Something a request reads changed (of one node, or of any when ``node`` is None;
        ``models``: a set of models changed): drop the cached views and wake the queue."""
        self._views.changed(node.id if node is not None else None, models)
        self._on_change()

    # -- nodes joining and reporting -------------------------------------------------------

    async def register(self, request: RegisterRequest, token: str | None = None) -> NodeRecord:
        has_gpu = any(d.kind != "cpu" for d in request.devices)
        if not has_gpu and not self._allow_cpu:
            raise PermissionDenied(
                f"node {request.name!r} has no GPU; start the router with --allow-cpu-nodes "
                "to accept CPU-only nodes",
                code="cpu_node_refused",
            )
        now = time.time()
        known = self._addresses.get((request.name, request.base_url))
        existing = self._nodes.get(known) if known is not None else None
        # A node new to this router may be in the table already (another router on the same
        # database registered it): the INSERT below then fails on the unique address, and the
        # row is adopted. Not a SELECT first: a fleet registering at once pays no extra reads.
        stale = existing is not None and (
            existing.silent_for() > MISSED_HEARTBEATS_OFFLINE * self.heartbeat_interval
        )
        if existing is not None and existing.is_endpoint:
            raise _endpoint_conflict(existing)
        if existing is not None and not stale:  # a node gone for a while may come back rekeyed
            _check_credential(existing, token)
        values = {
            "version": request.version,
            "devices": [d.model_dump() for d in request.devices],
            "last_seen": now,
            "load": request.load.model_dump(),
        }
        if existing is not None:
            node_id = existing.id
            await self._table.registered_again(node_id, values)
        else:
            node_id = str(uuid.uuid4())
            try:
                await self._table.add({
                    "id": node_id, "name": request.name, "base_url": request.base_url,
                    "approved": not self._require_approval, "draining": False,
                    "registered_at": now, **values,
                })  # fmt: skip
            except IntegrityError:
                # Another router registered it a moment ago (name and URL are unique).
                existing = await self._adopt(request.name, request.base_url)
                if existing is None:
                    raise
                return await self.register(request, token)
        if existing is not None:
            existing.version, existing.devices = request.version, request.devices
            existing.last_seen, existing.load = now, request.load
            existing.unreachable = existing.stalled  # a stall ends with a probe, not a word
            existing.token, existing.live = token, True
            existing.spoke()
            self._told(existing, fleet_changed=True)
            log.info("node %s (%s) re-registered as %s", request.name, request.base_url, node_id)
            self.changed(existing)
            return existing
        record = NodeRecord(
            node_id, request.name, request.base_url, request.version, request.devices,
            approved=not self._require_approval, draining=False, registered_at=now,
            last_seen=now, load=request.load, token=token, live=True,
        )  # fmt: skip
        record.spoke()
        self._add(record)
        self._told(record, fleet_changed=True)
        log.info("node %s (%s) registered as %s", request.name, request.base_url, node_id)
        self.changed(record)
        return record

    async def _adopt(self, name: str, base_url: str) -> NodeRecord | None:
        """The node's row written by another router, taken into memory; None if none."""
        row = await self._table.at_address(name, base_url)
        if row is None:
            return None
        return self._nodes.get(row.id) or self._add(record_of(row))

    async def heartbeat(self, node_id: str, load: NodeLoad, token: str | None = None) -> NodeRecord:
        node = self.get(node_id)
        if node.is_endpoint:
            raise _endpoint_conflict(node)
        _check_credential(node, token)
        now = time.time()
        self._unwritten.add(node_id)  # written with the others by write_heartbeats()
        if node.unreachable and not node.stalled:
            log.info("node %s is reachable again", node.name)
        same_models = (
            load.models_loaded == node.load.models_loaded
            and load.models_on_disk == node.load.models_on_disk
        )
        same_state = load.state == node.load.state
        if black_holed(node, load, self.heartbeat_interval):
            self._stall(node)
        node.last_seen, node.load = now, load
        node.unreachable = node.stalled  # only a probe that gets through clears a stall
        node.token, node.live = token, True
        node.spoke()
        self._told(node, fleet_changed=not (same_models and same_state))
        self.changed(node, models=not same_models)
        return node

    # -- endpoints (router.fleet.endpoints polls them) --------------------------------------

    async def add_endpoint(
        self, name: str, base_url: str, kind: str, key: str | None, config: EndpointConfig
    ) -> NodeRecord:
        """A new endpoint (Conflict when a node or endpoint has that name and address); it
        serves once its first poll has listed its models."""
        if (name, base_url) in self._addresses:
            raise Conflict(f"{name} ({base_url}) is in the fleet already", code="node_exists")
        now = time.time()
        record = NodeRecord(
            str(uuid.uuid4()), name, base_url, "", [], approved=True, draining=False,
            registered_at=now, last_seen=now, load=NodeLoad(state="initializing"),
            token=key, kind=kind, endpoint=config,
        )  # fmt: skip
        try:
            await self._table.add({
                "id": record.id, "name": name, "base_url": base_url, "version": "",
                "devices": [], "approved": True, "draining": False, "registered_at": now,
                "last_seen": now, "load": record.load.model_dump(), "kind": kind,
                "endpoint": config.to_dict(), "secret": key,
            })  # fmt: skip
        except IntegrityError:
            raise Conflict(f"{name} ({base_url}) is in the fleet already",
                           code="node_exists") from None  # fmt: skip
        self._add(record)
        log.info("endpoint %s (%s, %s) added as %s", name, kind, base_url, record.id)
        self.changed(record)
        return record

    async def update_endpoint(
        self, node: NodeRecord, kind: str, key: str | None, config: EndpointConfig
    ) -> None:
        """New settings for an endpoint (the settings file changed); other routers take them
        at their next sync."""
        await self._table.set(node.id, kind=kind, secret=key, endpoint=config.to_dict(),
                              assigned_version=node.assigned_version + 1)  # fmt: skip
        node.kind, node.token, node.endpoint = kind, key, config
        node.assigned_version += 1
        self.changed(node)

    def endpoint_polled(self, node_id: str, load: NodeLoad, upstream: dict[str, str]) -> None:
        """An endpoint answered its poll: what it serves and its load, as a heartbeat would
        say. Written to the database with the heartbeats (for the CLI and the dashboard)."""
        node = self._nodes.get(node_id)
        if node is None:
            return
        same_models = load.models_loaded == node.load.models_loaded
        if node.unreachable:
            log.info("endpoint %s answers again", node.name)
        renamed = upstream != node.upstream
        node.last_seen, node.load, node.upstream = time.time(), load, upstream
        node.unreachable = node.stalled = False
        node.live = True
        node.heard()
        self._unwritten.add(node_id)
        if renamed:
            self._index_upstream_names()
        self.changed(node, models=not same_models)

    def endpoint_model(self, upstream: str) -> str | None:
        """The fleet's name for a model an endpoint calls ``upstream``; None if none does."""
        return self._upstream_names.get(upstream)

    async def write_heartbeats(self) -> None:
        """Write the heartbeats received since the last call, in one statement.

        A heartbeat changes memory at once; the database, which other routers and the
        management CLI read, follows within the sync interval. One UPDATE per heartbeat cost
        more than the rest of handling it, and a thousand nodes send a hundred a second.
        """
        if not self._unwritten:
            return
        ids, self._unwritten = self._unwritten, set()
        rows = [
            {"node": node.id, "seen": node.last_seen, "report": node.load.model_dump()}
            for node in (self._nodes.get(i) for i in ids)
            if node is not None
        ]  # fmt: skip
        if rows:  # (none when every one was removed meanwhile: no statement at all)
            await self._table.heartbeats(rows)

    # -- the table, read back --------------------------------------------------------------

    async def load(self) -> None:
        """Fill the memory copy from the database (start, and the periodic sync; with
        workers, ``caught_up`` too: one read at a time)."""
        async with self._loading:
            if self.board is not None:
                self._fleet_read = self.board.fleet_revision()  # (what this read includes)
            await self._load()

    async def caught_up(self) -> bool:
        """With workers: whether another worker heard a node join or change what it serves
        since this one last read the node table, which it has read now. (The periodic read
        is seconds away: meanwhile a model a new node brings would be a 404 here, and the
        node itself unknown to the admin API.)"""
        if self.board is None or self.board.fleet_revision() == self._fleet_read:
            return False
        await self.load()
        return True

    async def _load(self) -> None:
        await self.write_heartbeats()  # first, so the rows are at least as new as memory
        # A node that registers while the SELECT runs is not in its rows: only records that
        # were here before it started can have been removed by someone else.
        known_before = set(self._nodes)
        unwritten = self._unwritten  # heartbeats from now on: newer than the rows read
        rows, full = await self._table.read(unwritten, self._nodes.get)
        seen = set()
        changed = False
        for row in rows:
            seen.add(row.id)
            current = self._nodes.get(row.id)
            if current is None:
                if row.id not in full:
                    continue  # removed between the two reads
                current = self._add(record_of(full[row.id]))
                # First sight (this router's start, or another router's new node): the
                # wall clock's word is all there is, read once. Later only a change of the
                # row counts.
                # (An endpoint serves once this router's own poll has reached it.)
                # (The CLI reading the table, started_at 0, shows the last poll's word.)
                polled_here = current.is_endpoint and self._started_at > 0
                current.live = row.last_seen >= self._started_at and not polled_here
                current.heard(ago=time.time() - row.last_seen)
                changed = True
                continue
            # Keep live fields; take operator flags and newer heartbeats.
            if (current.approved, current.draining) != (row.approved, row.draining):
                current.approved, current.draining = row.approved, row.draining
                changed = True
            if row.id in full and row.assigned_version != current.assigned_version:
                current.assigned = list(full[row.id].assigned or ())  # changed by another router
                current.assigned_version = row.assigned_version
                if current.is_endpoint:  # its settings may have changed too
                    renewed = record_of(full[row.id])
                    current.kind, current.endpoint = renewed.kind, renewed.endpoint
                    current.token = renewed.token
                    changed = True
            if current.is_endpoint:
                continue  # polled by this router: another one's word of it is not needed
            if row.id in full and row.last_seen != current.last_seen and row.id not in unwritten:
                # Another router heard the node since (this one writes its own heartbeats
                # before reading): word of it, whatever that router's clock says.
                current.last_seen = row.last_seen
                current.load = NodeLoad.model_validate(full[row.id].load)
                current.live = True
                current.heard()
                changed = True
        for node_id in known_before - seen:
            self._drop(node_id)
            changed = True
        if changed:
            self.changed()

    async def purge_offline(self, max_age: float) -> list[str]:
        """Forget nodes this router has not heard of for ``max_age`` seconds (on its
        monotonic clock); the names of those removed."""
        now = time.monotonic()
        stale = {
            n.id: (n, n.last_seen)
            for n in self._nodes.values()
            if n.silent_for(now) > max_age and not n.is_endpoint
        }  # (the operator's)
        if not stale:
            return []
        deleted = await self._table.delete_unchanged((i, seen) for i, (_, seen) in stale.items())
        removed = [stale[i][0] for i in deleted if stale[i][0].last_seen == stale[i][1]]
        for node in removed:  # (a heartbeat meanwhile keeps it)
            self._drop(node.id)
            log.info("forgot node %s: offline since %s", node.name, time.ctime(node.last_seen))
        self.changed()
        return [node.name for node in removed]

    # -- the operator's and the distributor's changes --------------------------------------

    async def assign(
        self, node_id: str, add: Iterable[str] = (), remove: Iterable[str] = ()
    ) -> None:
        """Change what the router wants on a node, from the list in the database (another
        router may have changed it since this one read it)."""
        node = self.get(node_id)
        wanted, version = await self._table.assign(node_id, node.assigned, add, remove)
        node.assigned = wanted
        if version is not None:
            node.assigned_version = version

    async def set_flags(self, node_id: str, **flags: bool) -> NodeRecord:
        node = self.get(node_id)
        await self._table.set(node_id, **flags)
        for name, value in flags.items():
            setattr(node, name, value)
        self.changed(node, models=False)
        return node

    async def set_label(self, node_id: str, label: str | None, tags: list[str]) -> NodeRecord:
        """The operator's name and tags for a node (not what routing reads)."""
        node = self.get(node_id)
        await self._table.set(node_id, label=label, tags=tags)
        node.label, node.tags = label, tags
        return node

    async def remove(self, node_id: str) -> None:
        self.get(node_id)
        await self._table.delete(node_id)
        self._drop(node_id)  # a sync may have dropped it meanwhile
        self.changed()

    # -- reachability ----------------------------------------------------------------------

    def mark_unreachable(self, node_id: str) -> None:
        """A fresh connection to the node failed: no traffic until a probe or a heartbeat
        gets through."""
        node = self._nodes.get(node_id)
        if node is not None and not node.unreachable:
            log.warning("node %s is unreachable; no traffic until it answers again", node.name)
            node.unreachable = True

    def mark_reachable(self, node_id: str) -> None:
        node = self._nodes.get(node_id)
        if node is not None and node.unreachable:
            log.info("node %s answers again", node.name)
            node.unreachable = node.stalled = False
            self.changed(node, models=False)

    def call_off_silent(self) -> list[NodeRecord]:
        """Nodes silent for MISSED_HEARTBEATS_OFFLINE heartbeats with exchanges still waiting
        for their answer: cut off by the network or dead, where no connection error ever
        comes (a partition drops packets; it resets nothing). They get no traffic until a
        heartbeat or a probe gets through, and their waiting exchanges are called off to be
        tried on another node, rather than wait out the request timeout.

        Only while another node still speaks to this router: when every node falls silent at
        once, the likelier cause is this side (a starved machine, its own network), and with
        no node to retry on, calling the exchanges off would only fail them. (A silent node
        with nothing waiting needs nothing: it counts as offline already.)"""
        limit = MISSED_HEARTBEATS_OFFLINE * self.heartbeat_interval
        now = time.monotonic()
        nodes = [n for n in self._nodes.values() if not n.is_endpoint]
        silent = [n for n in nodes if not n.unreachable and n.sending and n.silent_for(now) > limit]
        speaking = [n for n in nodes if now - n.spoke_at <= limit and n not in silent]
        if not speaking:
            return []
        for node in silent:
            log.warning(
                "node %s has been silent for %.1f s with %d requests waiting on it; they go to "
                "other nodes, and it gets none until it is heard again",
                node.name, node.silent_for(now), len(node.sending),
            )  # fmt: skip
            node.unreachable = True
            self._on_stall(node)
            self.changed(node, models=False)
        return silent

    def _stall(self, node: NodeRecord) -> None:
        """No traffic to the node until a probe gets through (fleet.health); its exchanges
        waiting for an answer are called off, to be tried on another node."""
        if not node.stalled:
            log.warning(
                "node %s heartbeats but has not received the %d requests sent to it; no "
                "traffic until it answers a probe", node.name, len(node.sending),
            )  # fmt: skip
        node.stalled = node.unreachable = True
        self._on_stall(node)
        self.changed(node, models=False)


def _endpoint_conflict(node: NodeRecord) -> Conflict:
    return Conflict(
        f"{node.name} ({node.base_url}) is an endpoint the router polls; a node cannot "
        "register or heartbeat as it", code="node_is_endpoint",
    )  # fmt: skip


def _check_credential(node: NodeRecord, token: str | None) -> None:
    """A node id speaks only with the credential it registered with (once this router process
    has seen one: after a restart the first heartbeat binds it again)."""
    if node.token is None:
        return
    if token is None or not same_secret(token, node.token):
        raise PermissionDenied(
            f"node {node.name} ({node.id}) is bound to the credential it registered with",
            code="node_credential_mismatch",
        )
