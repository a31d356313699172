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

A model fits when the memory it needs at the node's context size (``models.memory``) fits
the node's GPUs by the node's own rule (``models.placement``): on one GPU, or split over
several where the ``gpu_split`` setting allows it, never on a sum of GPUs that cannot hold
it together; a CPU node's RAM where CPU nodes are allowed. The answer is what the node should
hold, whether it holds it yet or not.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

from llmlb.common.settings import AutoDistribute
from llmlb.models.catalog import CatalogEntry, Tier
from llmlb.models.memory import DEFAULT_PLAN_CTX
from llmlb.models.placement import place


def fits(needed: int, memory: Sequence[int], split: bool = True) -> bool:
    """Whether a model needing ``needed`` bytes fits devices with ``memory`` bytes each."""
    return place(needed, memory, split=split).fits


def tier_for(
    tiers: Sequence[Tier], entries: Mapping[str, CatalogEntry], gpu_memory: int | Sequence[int],
    ctx_size: int = DEFAULT_PLAN_CTX, split: bool = True,
) -> Tier | None:  # fmt: skip
    """The tier a node with ``gpu_memory`` bytes free (each GPU's, or all together) belongs
    to (``tiers``: largest first)."""
    each = [gpu_memory] if isinstance(gpu_memory, int) else list(gpu_memory)
    for tier in tiers:
        entry = entries.get(tier.model)
        if entry is None or sum(each) < tier.min_gpu_memory_bytes:
            continue
        if tier.min_gpu_memory_bytes == 0 or fits(entry.memory_needed(ctx_size), each, split):
            return tier
    return None


def assign_models(
    entries: Iterable[CatalogEntry],
    node_memory: int | Sequence[int],
    policy: AutoDistribute,
    recommended: Iterable[str] = (),
    *,
    tiers: Sequence[Tier] = (),
    gpu_memory: int | Sequence[int] = 0,
    ctx_size: int = DEFAULT_PLAN_CTX,
    split: bool = True,
) -> list[str]:
    """``node_memory``, ``gpu_memory``: the node's memory and free GPU memory, per GPU (or one
    figure for all)."""
    if policy == "none":
        return []
    each = [node_memory] if isinstance(node_memory, int) else list(node_memory)
    by_name = {entry.name: entry for entry in entries}
    tier = (
        None if policy == "all-that-fit" else tier_for(tiers, by_name, gpu_memory, ctx_size, split)
    )
    tier_model = tier.model if tier else None  # its tier already says that it fits
    wanted = set(by_name) if policy == "all-that-fit" else set(recommended) | {tier_model}
    chosen = [
        entry for entry in by_name.values()
        if entry.name in wanted
        and (entry.name == tier_model or fits(entry.memory_needed(ctx_size), each, split))
    ]  # fmt: skip
    chosen.sort(key=lambda e: (e.size_bytes or 0, e.name))
    return [entry.name for entry in chosen]


def pick_auto_targets(
    free_memory: Mapping[str, int | Sequence[int]], needed: int, count: int = 1, split: bool = True
) -> list[str]:
    """``target: auto``: the nodes that fit the model, those that hold it on one GPU first,
    then the most free GPU memory (``free_memory``: each node's free bytes, per GPU or all
    together)."""
    fitting = []
    for node_id, free in free_memory.items():
        each = [free] if isinstance(free, int) else list(free)
        placement = place(needed, each, split=split)
        if placement.fits:
            fitting.append((placement.how == "one", sum(each), node_id))
    fitting.sort(reverse=True)
    return [node_id for _, _, node_id in fitting[:count]]
