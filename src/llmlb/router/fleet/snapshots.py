"""The fleet as the balancer reads it on every request: a snapshot of each node, and which
nodes hold each model, both cached until the node (or the set of models) changes.

With a thousand nodes heartbeating, rebuilding every snapshot on every heartbeat cost more
than the requests themselves: only what changed is dropped.
"""

from __future__ import annotations

import time
from collections.abc import Iterable

from llmlb.router.balancer.ranking import NodeSnapshot
from llmlb.router.fleet.node_record import NodeRecord
from llmlb.router.workers.board import Board


class Snapshots:
    def __init__(self, nodes: dict[str, NodeRecord], heartbeat_interval: float,
                 node_max_concurrency: int | None, board: Board | None = None) -> None:  # fmt: skip
        self._nodes = nodes  # the registry's index, read (never written) here
        # With worker processes (router.workers.board): what the others have in flight and
        # heard; None: this process is the whole router.
        self._board = board
        self._heartbeat_interval = heartbeat_interval
        self._max_concurrency = node_max_concurrency
        self._snapshots: dict[str, NodeSnapshot] = {}
        self._holders: dict[str, list[str]] | None = None

    def changed(self, node_id: str | None, models: bool) -> None:
        """Drop what a change made stale: one node's snapshot (every one's for None), and
        the model index when a set of models changed."""
        if node_id is None:
            self._snapshots.clear()
        else:
            self._snapshots.pop(node_id, None)
        if models:
            self._holders = None

    def holders(self) -> dict[str, list[str]]:
        """Every model any node holds -> the ids of the nodes that hold it."""
        if self._holders is None:
            held: dict[str, list[str]] = {}
            for node in self._nodes.values():
                for model in {*node.load.models_loaded, *node.load.models_on_disk}:
                    held.setdefault(model, []).append(node.id)
            self._holders = held
        return self._holders

    def of(self, ids: Iterable[str]) -> list[NodeSnapshot]:
        """The nodes' cached snapshots with the router's in-flight counts (all its workers')
        and their statuses (which age without any event) filled in now. Use them at once:
        the next call refreshes the same objects."""
        now = time.monotonic()
        board = self._board
        out = []
        for node_id in ids:
            node = self._nodes.get(node_id)
            if node is None:
                continue
            snapshot = self._snapshots.get(node_id)
            if snapshot is None:
                snapshot = self._snapshots[node_id] = self._snapshot(node)
            if board is None:
                snapshot.active = node.active
            else:
                snapshot.active = node.active + board.elsewhere(node_id)
                heard_by_a_worker(node, board)
            snapshot.first_byte_seconds = node.first_byte_now(now)
            snapshot.serving = node.status(self._heartbeat_interval, now) == "ready"
            out.append(snapshot)
        return out

    def _snapshot(self, node: NodeRecord) -> NodeSnapshot:
        load = node.load
        slots = max(load.slots_total, load.slots_per_model, 1)
        # An endpoint takes what the operator declared it takes (its slots), no more.
        limit = slots if node.is_endpoint else self._max_concurrency or slots * 2
        return NodeSnapshot(
            id=node.id,
            name=node.name,
            models_loaded=frozenset(load.models_loaded),
            models_on_disk=frozenset(load.models_on_disk),
            active=node.active,
            queued=load.queued_requests,
            slots=slots,
            limit=limit,
            tokens_per_second=load.tokens_per_second,
            gpu_use=load.gpu_percent / 100.0,
            load_seconds=load.load_seconds,
            request_seconds=load.request_seconds,
            prompt_tokens_per_second=load.prompt_tokens_per_second,
            fetches=not node.is_endpoint,
        )


def heard_by_a_worker(node: NodeRecord, board: Board) -> None:
    """Another worker heard the node more recently than this one: so did this router (the
    workers are one router, on one host)."""
    heard = board.heard_at(node.id)
    if heard > node.heard_at:
        node.heard_at = node.spoke_at = heard
