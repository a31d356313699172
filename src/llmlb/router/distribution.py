"""Which catalog models a node should hold: the auto-distribution policy (a pure function).

``none``
    nothing is assigned.
``recommended``
    the settings' ``recommended_models`` that fit the node.
``all-that-fit``
    every catalog model that fits the node, smallest first.

A model fits when the memory it needs (``required_memory_bytes``, else 1.2 x its file) is at
most the node's GPU memory (all devices together; a CPU node's RAM where CPU nodes are
allowed). Models already on the node are not assigned again.
"""

from __future__ import annotations

from collections.abc import Iterable

from llmlb.common.settings import AutoDistribute
from llmlb.models.catalog import CatalogEntry


def assign_models(
    entries: Iterable[CatalogEntry],
    node_memory: int,
    on_disk: Iterable[str],
    policy: AutoDistribute,
    recommended: Iterable[str] = (),
) -> list[str]:
    if policy == "none":
        return []
    held = set(on_disk)
    wanted = set(recommended)
    chosen = [
        entry for entry in entries
        if entry.name not in held
        and entry.memory_needed() <= node_memory
        and (policy == "all-that-fit" or entry.name in wanted)
    ]  # fmt: skip
    chosen.sort(key=lambda e: (e.size_bytes or 0, e.name))
    return [entry.name for entry in chosen]


def pick_auto_targets(free_memory: dict[str, int], needed: int, count: int = 1) -> list[str]:
    """``target: auto``: the nodes with the most free GPU memory that fit the model."""
    fitting = [(free, node_id) for node_id, free in free_memory.items() if free >= needed]
    fitting.sort(reverse=True)
    return [node_id for _, node_id in fitting[:count]]
