"""Whether a node that heartbeats really serves: black holes and probes.

- A node whose heartbeats arrive but which holds none of the requests this router sent it
  two heartbeats or more ago lost them on the way (a network that drops traffic without
  closing connections). It is *stalled*: no traffic until a probe gets through, and the
  exchanges still waiting on it are called off (the router's node client raises them as
  ``NodeStalled``) to be tried on another node; none of them had a byte yet.
- A node that refused a connection, or stalled, is probed (``GET /health`` on a new
  connection) every second, not only at its next heartbeat: a restart or a blip costs it a
  second of traffic.
- A node that heartbeated to this router and stopped, while other routers still hear it
  (its database row keeps changing), may be cut off from this router alone: it is probed
  too, and one that does not answer gets no traffic from here (rather than a client's
  request finding out with a connect timeout) until it speaks or answers again.
"""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING

from llmlb.common.wire import NodeLoad
from llmlb.router.fleet.control import NodeControl
from llmlb.router.fleet.endpoints import listing_path
from llmlb.router.fleet.node_record import NodeRecord

if TYPE_CHECKING:  # (the registry asks this module whether a node is a black hole)
    from llmlb.router.fleet.registry import Registry

PROBE_INTERVAL = 1.0  # seconds between probes of a node that refused a connection


def black_holed(node: NodeRecord, load: NodeLoad, heartbeat_interval: float) -> bool:
    """Whether the node, by its own report, holds none of the requests this router sent it
    two heartbeats or more ago."""
    if not node.sending or load.requests_in_flight is None:  # nothing sent, or a node too
        return False  # old to say
    holds = load.requests_in_flight + load.active_requests + load.queued_requests
    oldest = min(node.sending.values())
    return holds == 0 and time.monotonic() - oldest > 2 * heartbeat_interval


class Prober:
    """Probes the nodes that get no traffic for want of an answer (unreachable, stalled)."""

    def __init__(self, registry: Registry, control: NodeControl) -> None:
        self._registry = registry
        self._control = control
        self._last_round_end = time.monotonic()

    async def probe_all(self) -> None:
        # The supervisor sleeps PROBE_INTERVAL between rounds: a round that starts much later
        # means this router was stalled itself (a starved machine), and the nodes'
        # heartbeats may be waiting unread, so silence proves nothing this round.
        on_time = time.monotonic() - self._last_round_end < 2 * PROBE_INTERVAL
        try:
            if on_time:
                self._registry.call_off_silent()  # (those it takes off traffic: probed now)
                await self._check_heard_only_through_others()
            await self._probe_unreachable()
        finally:
            self._last_round_end = time.monotonic()

    async def _probe_unreachable(self) -> None:
        for node in [n for n in self._registry.all() if n.unreachable]:
            # (An endpoint need not have /health: its model list says that it serves.)
            path = listing_path(node.kind) if node.is_endpoint else "/health"
            if await self._control.probe(node, path):
                self._registry.mark_reachable(node.id)

    async def _check_heard_only_through_others(self) -> None:
        interval = self._registry.heartbeat_interval
        suspects = [n for n in self._registry.all()
                    if not n.is_endpoint and not n.unreachable
                    and n.heard_only_through_others(interval)]  # fmt: skip
        answers = await asyncio.gather(*(self._control.probe(n) for n in suspects))
        for node, answered in zip(suspects, answers, strict=True):
            if not answered:
                self._registry.mark_unreachable(node.id)
