"""One node as a router knows it: what it reported, what the router wants on it, and
whether it may serve now.

Liveness is judged on the router's monotonic clock (``heard_at``): by heartbeats, or by the
node's database row changing (another router heard it). Wall-clock times are only shown and
stored, so a stepped clock, or routers whose clocks differ, take no node offline.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from llmlb.common.wire import Device, NodeLoad
from llmlb.router.balancer.ranking import FIRST_BYTE_FLOOR_SECONDS, SLOW_FIRST_BYTE_SECONDS

MISSED_HEARTBEATS_OFFLINE = 3
NODE_KIND = "node"  # a node that registers itself; any other kind is an endpoint's
FIRST_BYTE_HALF_LIFE = 5.0  # seconds: how fast an unrefreshed measure of a slow answer fades
# Where a slow answer's cost in the ranking stops growing (router.balancer.ranking's score).
FIRST_BYTE_CEILING = FIRST_BYTE_FLOOR_SECONDS + SLOW_FIRST_BYTE_SECONDS


@dataclass
class EndpointConfig:
    """What the operator said of an endpoint (``common.wire.EndpointSpec``, less its key and
    address): kept in the node row's ``endpoint`` column."""

    models: list[str] = field(default_factory=list)  # its own ids to serve; [] for all
    max_concurrency: int = 16
    static: bool = False  # from a settings file: its entry there is the truth
    # The router whose settings file added it (router_id): only that one removes it when
    # its file no longer names it (routers on one database may have different files).
    owner: str | None = field(default=None, compare=False)

    def to_dict(self) -> dict[str, Any]:
        return {"models": self.models, "max_concurrency": self.max_concurrency,
                "static": self.static, "owner": self.owner}  # fmt: skip

    @classmethod
    def of(cls, value: Any) -> EndpointConfig:
        value = value if isinstance(value, dict) else {}
        return cls(list(value.get("models") or ()), int(value.get("max_concurrency") or 16),
                   bool(value.get("static")), value.get("owner"))  # fmt: skip


@dataclass
class NodeRecord:
    id: str
    name: str
    base_url: str
    version: str
    devices: list[Device]
    approved: bool
    draining: bool
    registered_at: float
    last_seen: float  # wall clock (shown to people, shared through the database)
    load: NodeLoad
    label: str | None = None  # the operator's name for the node (its own name stays)
    tags: list[str] = field(default_factory=list)
    # What the router wants on the node (registration's policy, the operator's distributions);
    # sent in every registration and heartbeat answer.
    assigned: list[str] = field(default_factory=list)
    assigned_version: int = 0  # the database's count of changes to ``assigned``
    active: int = 0  # the router's own requests in flight to this node
    unreachable: bool = field(default=False)
    # The node's own key (memory only): the router presents it when it calls the node.
    # None until the node registers or heartbeats to this router process.
    token: str | None = field(default=None, repr=False)
    live: bool = field(default=False)
    # Attempts waiting for this node's first byte -> when they were sent (router.proxy.failover),
    # and whether the node stopped getting them while it still heartbeats (see Registry.heartbeat).
    sending: dict[object, float] = field(default_factory=dict, repr=False)
    stalled: bool = field(default=False)
    kind: str = NODE_KIND
    endpoint: EndpointConfig | None = None  # an endpoint's settings; None for a node
    # An endpoint's own ids of the models it serves, by the names the fleet knows them by
    # (``Qwen/Qwen2.5-0.5B-Instruct`` is ``Qwen2.5-0.5B-Instruct``): from its last listing.
    upstream: dict[str, str] = field(default_factory=dict, repr=False)
    # When this router last had word of the node (a heartbeat, or its database row's
    # last_seen changing), on this process's monotonic clock: liveness is judged by this,
    # so a wall clock stepped by hours, or another router's clock that differs from this
    # one's, neither takes a node offline nor keeps a dead one online.
    heard_at: float = field(default=float("-inf"))
    # When the node last spoke to this router itself (a heartbeat or a registration), on the
    # same clock. A node that did, and now is heard of only through the database (another
    # router hears it), may be cut off from this router alone: fleet.health probes it.
    spoke_at: float = field(default=float("-inf"))
    # How long this router recently waited for the node's answers to begin (an average over
    # the last few, seconds; 0 until the first): the network and the node's queue as the
    # balancer sees them (router.balancer.ranking's score).
    first_byte_seconds: float = 0.0
    first_byte_at: float = 0.0  # (monotonic) when it was last measured

    @property
    def is_endpoint(self) -> bool:
        """A server the router polls (router.fleet.endpoints), not a node that reports."""
        return self.kind != NODE_KIND

    @property
    def echoes_ids(self) -> bool:
        """Whether its answers echo the router's request and exchange ids (router.proxy.
        nodelink): llmlb's own nodes do, other servers do not."""
        return self.kind in (NODE_KIND, "llmlb")

    def heard(self, ago: float = 0.0) -> None:
        self.heard_at = time.monotonic() - max(ago, 0.0)

    def answered_after(self, seconds: float, now: float | None = None) -> None:
        """An answer of the node's began ``seconds`` after its request was sent.

        An average over the last few answers, where the earlier figure counts for less the
        older it is, as ``first_byte_now`` forgets it: a node tried again after a slow answer
        is judged by the new one (were the old figure kept whole, one quick answer would put
        back most of the slow one, and the node would be second again). A figure past
        ``FIRST_BYTE_CEILING`` costs no more in the ranking, and would only take longer to
        fade, so it counts as that."""
        now = time.monotonic() if now is None else now
        seconds = min(seconds, FIRST_BYTE_CEILING)
        kept = 0.0
        if self.first_byte_seconds:  # (0: none yet)
            kept = 0.8 * 0.5 ** ((now - self.first_byte_at) / FIRST_BYTE_HALF_LIFE)
        self.first_byte_seconds = seconds + kept * (self.first_byte_seconds - seconds)
        self.first_byte_at = now

    def first_byte_now(self, now: float) -> float:
        """``first_byte_seconds`` as the balancer weighs it now: halved for every
        ``FIRST_BYTE_HALF_LIFE`` seconds without a new answer. A node ranked second for one
        slow answer (a cold prompt, a busy moment) gets no traffic to measure it again while
        others are free; forgetting lets it be tried again, and a link that is really slow is
        measured again (one request) and goes back to second."""
        age = now - self.first_byte_at
        return float(self.first_byte_seconds * 0.5 ** (age / FIRST_BYTE_HALF_LIFE))

    def spoke(self) -> None:
        """The node spoke to this router itself (it is heard, too)."""
        self.heard()
        self.spoke_at = self.heard_at

    def heard_only_through_others(self, interval: float) -> bool:
        """It spoke to this router before, but not for MISSED_HEARTBEATS_OFFLINE heartbeats,
        while other routers still hear it."""
        now = time.monotonic()
        limit = MISSED_HEARTBEATS_OFFLINE * interval
        return self.spoke_at > float("-inf") and now - self.spoke_at > limit >= now - self.heard_at

    @property
    def first_seen_now(self) -> bool:
        """Whether this registration was the node's first (not a return after a restart)."""
        return self.registered_at == self.last_seen

    def current_devices(self) -> list[Device]:
        """The devices with the free memory of the last heartbeat (the registration's figures
        where the node sent none): what placement and the dashboard go by."""
        fresh = self.load.gpu_free
        gpus = [d for d in self.devices if d.is_gpu]
        if not fresh or len(fresh) != len(gpus):
            return self.devices
        free = iter(fresh)
        return [
            d.model_copy(update={"memory_free": min(next(free), d.memory_total)}) if d.is_gpu else d
            for d in self.devices
        ]

    def auth_headers(self) -> dict[str, str]:
        return {"authorization": f"Bearer {self.token}"} if self.token else {}

    def silent_for(self, now: float | None = None) -> float:
        """Seconds since this router last had word of the node (monotonic)."""
        return (time.monotonic() if now is None else now) - self.heard_at

    def status(self, interval: float, now: float | None = None) -> str:
        """``now`` is a ``time.monotonic()`` reading (taken here when not given)."""
        if not self.approved:
            return "pending"
        stale = self.silent_for(now) > MISSED_HEARTBEATS_OFFLINE * interval
        # After a router restart a node counts once it has spoken to this process again.
        if stale or self.unreachable or not self.live:
            return "offline"
        if self.draining or self.load.state == "draining":
            return "draining"
        return self.load.state

    def to_dict(
        self, interval: float, now: float | None = None, in_flight: int | None = None
    ) -> dict[str, Any]:
        return {
            "id": self.id,
            "name": self.name,
            "kind": self.kind,
            "base_url": self.base_url,
            "version": self.version,
            "status": self.status(interval, now),
            "label": self.label,
            "tags": self.tags,
            "approved": self.approved,
            "draining": self.draining,
            "devices": [d.model_dump() for d in self.current_devices()],
            "registered_at": self.registered_at,
            "last_seen": self.last_seen,
            # What the node said in its last heartbeat (active_requests, queued_requests,
            # slots, ...) and, beside it, what this router has in flight to it right now.
            **self.load.model_dump(),
            "assigned_models": self.assigned,
            # (``in_flight``: with workers, every worker's: registry.in_flight)
            "router_in_flight": self.active if in_flight is None else in_flight,
            **({"endpoint": self.endpoint.to_dict(), "has_key": self.token is not None}
               if self.endpoint is not None else {}),
        }  # fmt: skip


def record_of(row: Any) -> NodeRecord:
    """A node's database row as a record (live fields at their defaults; an endpoint with
    the key the router presents to it)."""
    kind = getattr(row, "kind", None) or NODE_KIND
    endpoint = EndpointConfig.of(row.endpoint) if kind != NODE_KIND else None
    return NodeRecord(
        id=row.id,
        name=row.name,
        base_url=row.base_url,
        version=row.version,
        devices=[Device.model_validate(d) for d in row.devices],
        approved=row.approved,
        draining=row.draining,
        registered_at=row.registered_at,
        last_seen=row.last_seen,
        load=NodeLoad.model_validate(row.load),
        label=row.label,
        tags=list(row.tags or ()),
        assigned=list(row.assigned or ()),
        assigned_version=row.assigned_version,
        token=row.secret if endpoint is not None else None,
        kind=kind,
        endpoint=endpoint,
    )
