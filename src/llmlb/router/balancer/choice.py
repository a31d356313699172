"""The choice of a node for one request: which nodes to rank, and the ranking's first.

Where more than ``SAMPLE`` nodes hold the model, the best of ``SAMPLE`` of them chosen at
random (the "power of d choices": close to the best of all, at a cost that does not grow
with the fleet), plus the node the request's prefix points to; all of them only when none of
those can serve. Nodes without the model come last, and only for a model the catalog can
fetch. Pure: the fleet is read through ``FleetView``, and nothing here does I/O.
"""

from __future__ import annotations

import random
from collections.abc import Iterable
from typing import Protocol

from llmlb.common.settings import BalancerStrategy
from llmlb.router.balancer.prefixes import PrefixIndex
from llmlb.router.balancer.ranking import NodeSnapshot, rank

SAMPLE = 16  # nodes ranked per request where more hold the model


class FleetView(Protocol):
    """What the choice reads of the fleet (``router.fleet.Registry`` provides it)."""

    def holders(self, model: str) -> list[str]:
        """The ids of the nodes that hold ``model``."""
        ...

    def snapshots(self, ids: Iterable[str] | None = None) -> list[NodeSnapshot]:
        """Those nodes' snapshots, as of now (every node's when ``ids`` is None)."""
        ...


class Chooser:
    """Chooses for one router: keeps the rotation (round robin) and the prefix index."""

    def __init__(self, fleet: FleetView, strategy: BalancerStrategy) -> None:
        self._fleet = fleet
        self._strategy = strategy
        self._rotation = 0
        self.prefixes = PrefixIndex()

    def choose(
        self, model: str, prefix: tuple[int, ...], tried: frozenset[str], fetchable: bool
    ) -> str | None:
        """The id of the best node that can take the request now; None when every one that
        could is busy (or none could)."""
        self._rotation += 1
        affinity = self.prefixes.match(prefix) if prefix else {}
        hot = self.prefixes.hot(prefix, max(affinity.values(), default=0))
        holders = self._fleet.holders(model)
        passes = [SAMPLE, 0] if len(holders) > SAMPLE else [0]
        ranked: list[NodeSnapshot] = []
        for sample in passes:
            candidates = self._fleet.snapshots(_sampled(holders, sample, affinity))
            if ranked := self._rank(candidates, model, prefix, tried, affinity, hot, False):
                break
        if not ranked and fetchable:
            ranked = self._rank(self._fleet.snapshots(), model, prefix, tried, affinity, hot,
                                True)  # fmt: skip
        if not ranked:
            return None
        if prefix:
            self.prefixes.add(prefix, ranked[0].id)
        return ranked[0].id

    def _rank(
        self, snapshots: list[NodeSnapshot], model: str, prefix: tuple[int, ...],
        tried: frozenset[str], affinity: dict[str, int], hot: bool, fetchable: bool,
    ) -> list[NodeSnapshot]:  # fmt: skip
        return rank(
            snapshots, model, self._strategy, rotation=self._rotation, affinity=affinity, hot=hot,
            cached=self.prefixes.blocks_of if prefix else None, exclude=tried,
            fetchable=fetchable,
        )  # fmt: skip


def _sampled(holders: list[str], sample: int, include: Iterable[str]) -> list[str]:
    """``holders``; with ``sample``, at most that many of them chosen at random, plus those
    of ``include`` that hold the model."""
    if not sample or len(holders) <= sample:
        return holders
    chosen = random.sample(holders, sample)
    held = set(holders)
    chosen += [i for i in include if i in held and i not in chosen]
    return chosen
