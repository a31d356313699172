"""The node registry: who is in the fleet, what each node holds, and whether it may serve.

The hot copy lives in memory (the balancer reads it on every request); every change is
written through to the database, and operator flags (approved, draining, removed) are read
back from it periodically, so the management CLI and other routers sharing the database are
seen within a few seconds.
"""

from __future__ import annotations

import logging
import random
import time
import uuid
from collections.abc import Callable, Iterable

from sqlalchemy import bindparam, delete, insert, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine

from llmlb.common.credentials import same_secret
from llmlb.common.errors import NotFound, PermissionDenied
from llmlb.common.wire import NodeLoad, RegisterRequest
from llmlb.router.balancer.ranking import NodeSnapshot
from llmlb.router.fleet.node_record import MISSED_HEARTBEATS_OFFLINE, NodeRecord, record_of
from llmlb.router.storage.db import GroupCommit, nodes

log = logging.getLogger(__name__)

STALLED = "node stalled"  # the cancel message of attempts on a black-holed node

# What the periodic sync reads of every node (not the JSON columns: see Registry.load).
_LIGHT_COLUMNS = (
    nodes.c.id, nodes.c.approved, nodes.c.draining, nodes.c.last_seen, nodes.c.assigned_version,
)  # fmt: skip


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
    ) -> None:
        # Called whenever capacity may have appeared (a node registered, heartbeated, was
        # approved or undrained): queued requests look again.
        self._on_change = on_change
        # Heartbeats older than this process are not proof that a node is there now.
        self._started_at = time.time() if started_at is None else started_at
        self._engine = engine
        self.heartbeat_interval = heartbeat_interval
        self._allow_cpu = allow_cpu_nodes
        self._require_approval = require_approval
        self._max_concurrency = node_max_concurrency
        self._nodes: dict[str, NodeRecord] = {}
        self._addresses: dict[tuple[str, str], str] = {}  # (name, base_url) -> node id
        self._writes = GroupCommit(engine)
        # Cached views, rebuilt on demand: each node's snapshot (dropped when that node
        # changes), and model -> holders (dropped when some node's set of models changes).
        self._snapshots: dict[str, NodeSnapshot] = {}
        self._fleet_models: dict[str, list[str]] | None = None
        self._unwritten: set[str] = set()  # nodes whose last heartbeat is not in the database

    async def load(self) -> None:
        """Fill the memory copy from the database (start, and the periodic sync)."""
        await self.write_heartbeats()  # first, so the rows are at least as new as memory
        # A node that registers while the SELECT runs is not in its rows: only records that
        # were here before it started can have been removed by someone else.
        known_before = set(self._nodes)
        async with self._engine.connect() as connection:
            # The light columns of every row; the JSON ones (devices, load) only for rows that
            # are new here or carry a heartbeat newer than memory's (written by another
            # router). With one router that is none: a sync of 1,000 nodes decodes no JSON.
            rows = list(await connection.execute(select(*_LIGHT_COLUMNS)))
            unwritten = self._unwritten  # heartbeats since the write above: newer than rows
            fresh = [
                row.id for row in rows
                if row.id not in self._nodes
                or (row.last_seen != self._nodes[row.id].last_seen and row.id not in unwritten)
                or row.assigned_version != self._nodes[row.id].assigned_version
            ]  # fmt: skip
            full = {}
            for start in range(0, len(fresh), 500):  # bounded IN lists
                chunk = fresh[start : start + 500]
                query = select(nodes).where(nodes.c.id.in_(chunk))
                full.update({row.id: row for row in await connection.execute(query)})
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
                current.live = row.last_seen >= self._started_at
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
        stale = [(n, n.last_seen) for n in self._nodes.values() if n.silent_for(now) > max_age]
        if not stale:
            return []
        removed = []
        async with self._engine.begin() as connection:
            for node, last_seen in stale:
                # Only a row nobody wrote since: another router may have heard the node.
                result = await connection.execute(
                    delete(nodes).where(nodes.c.id == node.id, nodes.c.last_seen == last_seen)
                )
                if result.rowcount and node.last_seen == last_seen:  # no heartbeat meanwhile
                    removed.append(node)
        for node in removed:
            self._drop(node.id)
            log.info("forgot node %s: offline since %s", node.name, time.ctime(node.last_seen))
        self.changed()
        return [node.name for node in removed]

    def _add(self, record: NodeRecord) -> NodeRecord:
        self._nodes[record.id] = record
        self._addresses[(record.name, record.base_url)] = record.id
        return record

    def _drop(self, node_id: str) -> None:
        record = self._nodes.pop(node_id, None)
        if record is not None:
            self._addresses.pop((record.name, record.base_url), None)

    def get(self, node_id: str) -> NodeRecord:
        node = self._nodes.get(node_id)
        if node is None:
            raise NotFound(f"no node with id {node_id!r}", code="node_not_found")
        return node

    def all(self) -> list[NodeRecord]:
        return sorted(self._nodes.values(), key=lambda n: (n.name, n.id))

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
        if existing is not None and not stale:  # a node gone for a while may come back rekeyed
            self._check_credential(existing, token)
        values = {
            "version": request.version,
            "devices": [d.model_dump() for d in request.devices],
            "last_seen": now,
            "load": request.load.model_dump(),
        }
        # A burst of registrations (a fleet starting, a router restarting) shares transactions.
        if existing is not None:
            node_id = existing.id
            await self._writes.execute(update(nodes).where(nodes.c.id == node_id), values)
        else:
            node_id = str(uuid.uuid4())
            try:
                await self._writes.execute(insert(nodes), {
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
            existing.heard()
            log.info("node %s (%s) re-registered as %s", request.name, request.base_url, node_id)
            self.changed(existing)
            return existing
        record = NodeRecord(
            node_id, request.name, request.base_url, request.version, request.devices,
            approved=not self._require_approval, draining=False, registered_at=now,
            last_seen=now, load=request.load, token=token, live=True,
        )  # fmt: skip
        record.heard()
        self._add(record)
        log.info("node %s (%s) registered as %s", request.name, request.base_url, node_id)
        self.changed(record)
        return record

    async def assign(
        self, node_id: str, add: Iterable[str] = (), remove: Iterable[str] = ()
    ) -> None:
        """Change what the router wants on a node, from the list in the database (another
        router may have changed it since this one read it), in one transaction that locks
        the row where the database can."""
        node = self.get(node_id)
        dropped = set(remove)
        async with self._engine.begin() as connection:
            query = select(nodes.c.assigned, nodes.c.assigned_version).where(nodes.c.id == node_id)
            if connection.dialect.name == "postgresql":
                query = query.with_for_update()
            row = (await connection.execute(query)).first()
            stored = list(row.assigned or ()) if row is not None else list(node.assigned)
            wanted = [m for m in stored if m not in dropped]
            wanted += [m for m in add if m not in wanted]
            if wanted != stored:
                await connection.execute(
                    update(nodes).where(nodes.c.id == node_id)
                    .values(assigned=wanted, assigned_version=nodes.c.assigned_version + 1)
                )  # fmt: skip
        node.assigned = wanted
        if row is not None:
            node.assigned_version = row.assigned_version + (wanted != stored)

    async def _adopt(self, name: str, base_url: str) -> NodeRecord | None:
        """The node's row written by another router, taken into memory; None if none."""
        async with self._engine.connect() as connection:
            query = select(nodes).where(nodes.c.name == name, nodes.c.base_url == base_url)
            rows = list(await connection.execute(query))
        if not rows:
            return None
        return self._nodes.get(rows[0].id) or self._add(record_of(rows[0]))

    async def heartbeat(self, node_id: str, load: NodeLoad, token: str | None = None) -> NodeRecord:
        node = self.get(node_id)
        self._check_credential(node, token)
        now = time.time()
        self._unwritten.add(node_id)  # written with the others by write_heartbeats()
        if node.unreachable and not node.stalled:
            log.info("node %s is reachable again", node.name)
        same_models = (
            load.models_loaded == node.load.models_loaded
            and load.models_on_disk == node.load.models_on_disk
        )
        if node.sending and self._black_holed(node, load):
            self._stall(node)
        node.last_seen, node.load = now, load
        node.unreachable = node.stalled  # only a probe that gets through clears a stall
        node.token, node.live = token, True
        node.heard()
        self.changed(node, models=not same_models)
        return node

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
        ]
        statement = (
            update(nodes)
            .where(nodes.c.id == bindparam("node"))
            .values(last_seen=bindparam("seen"), load=bindparam("report"))
        )
        async with self._engine.begin() as connection:
            await connection.execute(statement, rows)

    @staticmethod
    def _check_credential(node: NodeRecord, token: str | None) -> None:
        """A node id speaks only with the credential it registered with (once this router
        process has seen one: after a restart the first heartbeat binds it again)."""
        if node.token is None:
            return
        if token is None or not same_secret(token, node.token):
            raise PermissionDenied(
                f"node {node.name} ({node.id}) is bound to the credential it registered with",
                code="node_credential_mismatch",
            )

    async def set_flags(self, node_id: str, **flags: bool) -> NodeRecord:
        node = self.get(node_id)
        async with self._engine.begin() as connection:
            await connection.execute(update(nodes).where(nodes.c.id == node_id).values(**flags))
        for name, value in flags.items():
            setattr(node, name, value)
        self.changed(node, models=False)
        return node

    async def set_label(self, node_id: str, label: str | None, tags: list[str]) -> NodeRecord:
        """The operator's name and tags for a node (not what routing reads)."""
        node = self.get(node_id)
        async with self._engine.begin() as connection:
            await connection.execute(
                update(nodes).where(nodes.c.id == node_id).values(label=label, tags=tags)
            )
        node.label, node.tags = label, tags
        return node

    async def remove(self, node_id: str) -> None:
        self.get(node_id)
        async with self._engine.begin() as connection:
            await connection.execute(delete(nodes).where(nodes.c.id == node_id))
        self._drop(node_id)  # a sync may have dropped it meanwhile
        self.changed()

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

    def _black_holed(self, node: NodeRecord, load: NodeLoad) -> bool:
        """Whether the node, by its own report, holds none of the requests this router sent
        it two heartbeats or more ago: they are lost on the way (a network that drops
        traffic without closing connections), while its heartbeats still arrive."""
        if load.requests_in_flight is None:  # a node too old to say
            return False
        holds = load.requests_in_flight + load.active_requests + load.queued_requests
        oldest = min(node.sending.values())
        return holds == 0 and time.monotonic() - oldest > 2 * self.heartbeat_interval

    def _stall(self, node: NodeRecord) -> None:
        """No traffic to the node until a probe gets through; the attempts waiting on it are
        called off, to be tried on another node (none of them had a byte yet)."""
        if not node.stalled:
            log.warning(
                "node %s heartbeats but has not received the %d requests sent to it; no "
                "traffic until it answers a probe", node.name, len(node.sending),
            )  # fmt: skip
        node.stalled = node.unreachable = True
        for attempt in list(node.sending):
            node.called_off.add(attempt)
            attempt.cancel(STALLED)
        self.changed(node, models=False)

    def changed(self, node: NodeRecord | None = None, *, models: bool = True) -> None:
        """Something a request reads changed (of one node, or of any when ``node`` is None;
        ``models``: a set of models changed): drop the cached views and wake the queue.

        Only what changed is dropped: with a thousand nodes heartbeating, rebuilding every
        snapshot on every heartbeat cost more than the requests themselves.
        """
        if node is None:
            self._snapshots.clear()
        else:
            self._snapshots.pop(node.id, None)
        if models:
            self._fleet_models = None
        self._on_change()

    def snapshots(self) -> list[NodeSnapshot]:
        """What the balancer needs of every node."""
        return self._fresh(list(self._nodes))

    def candidates(
        self, model: str, sample: int = 0, include: list[str] | None = None
    ) -> list[NodeSnapshot]:
        """Snapshots of the nodes that hold ``model``; with ``sample``, at most that many of
        them chosen at random (a large fleet ranks a sample, not every node) plus those in
        ``include`` that hold it."""
        ids = self.fleet_models().get(model, [])
        if sample and len(ids) > sample:
            chosen = random.sample(ids, sample)
            if include:
                holders = set(ids)
                chosen += [i for i in include if i in holders and i not in chosen]
            ids = chosen
        return self._fresh(ids)

    def _fresh(self, ids: list[str]) -> list[NodeSnapshot]:
        """The nodes' cached snapshots with the router's in-flight counts and their
        statuses (which age without any event) filled in now. Use them at once: the next
        call refreshes the same objects."""
        now = time.monotonic()
        out = []
        for node_id in ids:
            node = self._nodes.get(node_id)
            if node is None:
                continue
            snapshot = self._snapshots.get(node_id)
            if snapshot is None:
                snapshot = self._snapshots[node_id] = self._snapshot(node)
            snapshot.active = node.active
            snapshot.serving = node.status(self.heartbeat_interval, now) == "ready"
            out.append(snapshot)
        return out

    def _snapshot(self, node: NodeRecord) -> NodeSnapshot:
        load = node.load
        slots = max(load.slots_total, load.slots_per_model, 1)
        return NodeSnapshot(
            id=node.id,
            name=node.name,
            models_loaded=frozenset(load.models_loaded),
            models_on_disk=frozenset(load.models_on_disk),
            active=node.active,
            queued=load.queued_requests,
            slots=slots,
            limit=self._max_concurrency or slots * 2,
            tokens_per_second=load.tokens_per_second,
            gpu_use=load.gpu_percent / 100.0,
            load_seconds=load.load_seconds,
            request_seconds=load.request_seconds,
        )

    def fleet_models(self) -> dict[str, list[str]]:
        """Every model any node holds -> the ids of the nodes that hold it (cached until the
        next change: requests ask on every call)."""
        if self._fleet_models is None:
            held: dict[str, list[str]] = {}
            for node in self._nodes.values():
                for model in {*node.load.models_loaded, *node.load.models_on_disk}:
                    held.setdefault(model, []).append(node.id)
            self._fleet_models = held
        return self._fleet_models
