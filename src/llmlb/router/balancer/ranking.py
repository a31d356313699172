"""Choosing nodes for a request: a pure function of node snapshots.

``rank`` returns every node that can serve the model, best first; the proxy tries them in
that order (failover never repeats a node). Eligible: ready, approved, not draining, not
offline, holding the model (loaded or on disk), below its concurrency limit.

A model in the catalog that no eligible node holds may go to any eligible node, which
fetches it first (always the last resort: a download takes minutes).

Strategies:

``load`` (default)
    The node where the request is expected to start soonest. Sort key, in order:

    1. needs a download (last resort);
    2. no free slot (a node with a free slot starts the request now);
    3. expected seconds until the request starts: the model's load time when it is only on
       disk (the node reports how long its loads took), plus, when every slot is taken, the
       wait for one: ``(overflow + 1) / slots * request_seconds``;
    4. ``score``: utilisation plus GPU use, minus a small bonus for fast nodes, plus a
       small cost for a node slow to answer as this router sees it (``first_byte_seconds``:
       its recent time to an answer's first byte, the network and the node's queue
       included), so that of nodes equally free the one behind a slow link comes second,
       and still takes what the others have no slot for.

    So a node with the model loaded wins while it has a free slot; once its slots run out an
    idle node with the model on disk takes the next request, and among nodes that are all
    full, waiting wins over loading only while the expected wait is shorter than the load.
    ``active`` counts the router's own requests in flight to the node (fresher than the
    heartbeat), ``queued`` comes from the heartbeat.
``least_busy``
    Fewest requests in flight + queued, then the ``load`` order.
``round_robin``
    Rotates over the eligible nodes (model state ignored) with a counter the caller keeps.
``prefix_affinity``
    The node that has seen the longest leading part of the request's prompt (``affinity``,
    from ``router.balancer.prefixes``), while it has a free slot, so llama.cpp reuses its cache of
    that prefix; and when its slots are all taken, still that node while the expected wait
    for one (``expected_start_seconds``) is shorter than computing, elsewhere, the part of the
    prompt it has and the best node with a free slot lacks (at the prompt speed the node
    reports): a conversation's next turn waits a moment at home rather than start its whole
    history again on another node (bench/fleet_sim.py: at 16 nodes its mean time to first
    token fell from 0.49 to 0.39 s). Unless that prefix is ``hot`` (its match ends in a
    prefix many requests have shared: a system prompt that new conversations keep arriving
    behind): then, of the nodes with a free slot, the one caching the least takes it and
    computes the prefix once, so a popular prompt does not pile every conversation (and the
    load of all their later turns) onto the first node that saw it. Otherwise, and for a
    prompt no node has seen, the ``load`` order, where among nodes that would start it as soon
    the one with the fewest prompts cached (``cached``) comes first: new conversations spread
    even when the fleet is idle, and a busy home not worth the wait spills instead of
    queueing.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from llmlb.common.settings import BalancerStrategy
from llmlb.router.balancer.prefixes import BLOCK_TOKENS

# Used until a node has reported a figure of its own.
DEFAULT_LOAD_SECONDS = 5.0
DEFAULT_REQUEST_SECONDS = 5.0


@dataclass(slots=True)
class NodeSnapshot:
    """What the balancer knows of a node. The registry keeps one per node and refreshes
    ``active`` and ``serving`` in place before each ranking (copying it per request cost
    more than the ranking)."""

    id: str
    name: str
    models_loaded: frozenset[str]
    models_on_disk: frozenset[str]
    active: int
    queued: int
    slots: int
    limit: int
    tokens_per_second: float = 0.0
    gpu_use: float = 0.0
    serving: bool = True  # ready, approved, not draining, not offline, reachable
    load_seconds: Mapping[str, float] = field(default_factory=dict)  # the node's last loads
    request_seconds: float = 0.0  # the node's recent mean request duration; 0: unknown
    fetches: bool = True  # fetches a catalog model it lacks (an endpoint never does)
    first_byte_seconds: float = 0.0  # as this router measures it, recently; 0: unknown
    prompt_tokens_per_second: float = 0.0  # the node's recent prefill speed; 0: unknown

    def has(self, model: str) -> bool:
        return model in self.models_loaded or model in self.models_on_disk

    def can_serve(self, model: str, fetchable: bool) -> bool:
        """Holds the model, or may fetch it (``fetchable``: the catalog lists it)."""
        return (
            model in self.models_loaded
            or model in self.models_on_disk
            or (fetchable and self.fetches)
        )

    @property
    def saturated(self) -> bool:
        return self.active >= self.limit

    @property
    def free_slots(self) -> int:
        return self.slots - self.active - self.queued


# A node this many seconds slow to answer has the whole (small) cost in ``score``; below
# the floor, answers count as equally quick (so that equal nodes keep a stable order, and one
# not yet measured is not favoured for it).
SLOW_FIRST_BYTE_SECONDS = 1.0
FIRST_BYTE_FLOOR_SECONDS = 0.1


def score(node: NodeSnapshot) -> float:
    utilisation = (node.active + node.queued) / max(node.slots, 1)
    speed_bonus = 0.05 * min(node.tokens_per_second / 100.0, 1.0)
    # At most 0.2: more than the speed bonus can make up (a link that adds a second costs
    # more than a node's faster generation gains), less than a slot of a node of 4.
    slow = max(node.first_byte_seconds - FIRST_BYTE_FLOOR_SECONDS, 0.0)
    slow_cost = 0.2 * min(slow / SLOW_FIRST_BYTE_SECONDS, 1.0)
    return utilisation + 0.25 * node.gpu_use - speed_bonus + slow_cost


def expected_start_seconds(node: NodeSnapshot, model: str) -> float:
    """Seconds until a new request for ``model`` would start generating on ``node``."""
    load = 0.0
    if model not in node.models_loaded:
        load = node.load_seconds.get(model, DEFAULT_LOAD_SECONDS)
    if node.free_slots > 0:
        return load
    overflow = node.active + node.queued - node.slots
    per_request = node.request_seconds or DEFAULT_REQUEST_SECONDS
    return load + (overflow + 1) / max(node.slots, 1) * per_request


def _load_key(node: NodeSnapshot, model: str) -> tuple[bool, bool, float, float, str]:
    return (
        not node.has(model),
        node.free_slots <= 0,
        expected_start_seconds(node, model),
        score(node),
        node.id,
    )


def _load_order(nodes: list[NodeSnapshot], model: str) -> list[NodeSnapshot]:
    return sorted(nodes, key=lambda n: _load_key(n, model))


def _spread_key(
    node: NodeSnapshot, model: str, cached: Mapping[str, int]
) -> tuple[bool, bool, int, float, float, str]:
    """The load order with the blocks a node caches before its expected start: behind a hot
    prefix, conversations go where the fewest are kept, so that their homes (and the load
    they bring for as long as they last) spread over the fleet."""
    needs_fetch, full, start, load, name = _load_key(node, model)
    return needs_fetch, full, cached.get(node.id, 0), start, load, name


def _worth_waiting(
    home: NodeSnapshot, ordered: list[NodeSnapshot], affinity: Mapping[str, int], model: str
) -> bool:
    """Whether a request is sooner done waiting for a slot of ``home`` (all taken) than
    starting at once on the best node with a free slot, which computes the part of the
    prompt that ``home`` has cached and it has not."""
    speed = home.prompt_tokens_per_second
    free = [n for n in ordered if n.free_slots > 0 and n.has(model)]
    if speed <= 0 or not free:  # not measured (spill, as before); no one free: load order
        return False
    elsewhere = max(affinity.get(n.id, 0) for n in free)
    saved = (affinity.get(home.id, 0) - elsewhere) * BLOCK_TOKENS / speed
    return expected_start_seconds(home, model) < saved


def rank(
    nodes: list[NodeSnapshot],
    model: str,
    strategy: BalancerStrategy = "load",
    *,
    rotation: int = 0,
    affinity: Mapping[str, int] | None = None,
    hot: bool = False,
    cached: Mapping[str, int] | None = None,
    exclude: frozenset[str] = frozenset(),
    fetchable: bool = False,
) -> list[NodeSnapshot]:
    """Nodes that can take the request now, best first ([] when none can).

    ``fetchable``: the model is in the catalog, so a node without it may fetch it (last tier).
    """
    eligible = [
        n for n in nodes
        if n.serving and n.can_serve(model, fetchable) and not n.saturated and n.id not in exclude
    ]  # fmt: skip
    if not eligible:
        return []
    ordered = _load_order(eligible, model)
    if strategy == "least_busy":
        return sorted(ordered, key=lambda n: n.active + n.queued)  # stable: load order ties
    if strategy == "round_robin":
        by_id = sorted(eligible, key=lambda n: n.id)
        start = rotation % len(by_id)
        return by_id[start:] + by_id[:start]
    if strategy == "prefix_affinity":
        if affinity and not hot:
            home = max(ordered, key=lambda n: affinity.get(n.id, 0))  # ties: the load order's
            if affinity.get(home.id, 0) and (
                home.free_slots > 0 or _worth_waiting(home, ordered, affinity, model)
            ):
                return [home] + [n for n in ordered if n is not home]
        if hot:  # spread behind a hot prefix: the node caching the least takes it (a copy)
            return sorted(ordered, key=lambda n: _spread_key(n, model, cached or {}))
        if cached:  # among nodes that can start it as soon, the one caching the least
            return sorted(ordered, key=lambda n: (*_load_key(n, model)[:3], cached.get(n.id, 0)))
    return ordered
