"""Which catalog models a node should hold: the auto-distribution policy (pure functions).

``none``
    nothing is assigned.
``recommended``
    the model of the node's tier (``Catalog.tiers``, or the ``model_tiers`` setting): the
    largest tier whose ``min_gpu_memory_bytes`` the node's free GPU memory reaches and whose
    model fits it; the smallest tier for a node below every other (a CPU node, where those
    are allowed). Plus the ``recommended_models`` setting's models that fit.
``all-that-fit``
    every catalog model that fits the node, smallest first.

A model fits when the memory it needs at the node's context size (``models.memory``) is at
most the node's GPU memory (all devices together; a CPU node's RAM where CPU nodes are
allowed). The answer is what the node should hold, whether it holds it yet or not.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

from llmlb.common.settings import AutoDistribute
from llmlb.models.catalog import CatalogEntry, Tier
from llmlb.models.memory import DEFAULT_PLAN_CTX


def tier_for(
    tiers: Sequence[Tier], entries: Mapping[str, CatalogEntry], gpu_memory: int,
    ctx_size: int = DEFAULT_PLAN_CTX,
) -> Tier | None:  # fmt: skip
    """The tier a node with ``gpu_memory`` bytes free belongs to (``tiers``: largest first)."""
    for tier in tiers:
        entry = entries.get(tier.model)
        if entry is None or gpu_memory < tier.min_gpu_memory_bytes:
            continue
        if tier.min_gpu_memory_bytes == 0 or entry.memory_needed(ctx_size) <= gpu_memory:
            return tier
    return None


def assign_models(
    entries: Iterable[CatalogEntry],
    node_memory: int,
    policy: AutoDistribute,
    recommended: Iterable[str] = (),
    *,
    tiers: Sequence[Tier] = (),
    gpu_memory: int = 0,
    ctx_size: int = DEFAULT_PLAN_CTX,
) -> list[str]:
    if policy == "none":
        return []
    by_name = {entry.name: entry for entry in entries}
    tier = None if policy == "all-that-fit" else tier_for(tiers, by_name, gpu_memory, ctx_size)
    tier_model = tier.model if tier else None  # its tier already says that it fits
    wanted = set(by_name) if policy == "all-that-fit" else set(recommended) | {tier_model}
    chosen = [
        entry for entry in by_name.values()
        if entry.name in wanted
        and (entry.name == tier_model or entry.memory_needed(ctx_size) <= node_memory)
    ]  # fmt: skip
    chosen.sort(key=lambda e: (e.size_bytes or 0, e.name))
    return [entry.name for entry in chosen]


def pick_auto_targets(free_memory: dict[str, int], needed: int, count: int = 1) -> list[str]:
    """``target: auto``: the nodes with the most free GPU memory that fit the model."""
    fitting = [(free, node_id) for node_id, free in free_memory.items() if free >= needed]
    fitting.sort(reverse=True)
    return [node_id for _, node_id in fitting[:count]]
