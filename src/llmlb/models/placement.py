"""Where a model goes on a machine's GPUs: one rule for the node that loads it and the router
that plans for it, so that what the router assigns is what the node can load.

- On **one** GPU when one has room: the one with the most free memory, so that several models
  spread over several GPUs instead of piling on the first.
- **Split** by layer over several GPUs when it fits only together (and splitting is allowed):
  the fewest GPUs with the most free memory, each given layers in proportion to its free
  memory (llama.cpp's ``tensor_split``). Splitting costs each token a hop between GPUs, so it
  is the fallback, never the first choice.
- **Partial** offload when it fits nowhere and the operator allows it: as many layers as the
  GPUs' free memory holds (in proportion to the model's size), the rest on the CPU.
- Otherwise **none**, with the figures that say why.

Pure: the GPUs are their free bytes, in the node's device order.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

GiB = 1 << 30
How = Literal["one", "split", "partial", "none"]
# Apple silicon's GPU shares the machine's memory with everything else on it. Metal lets a
# process keep about three quarters of it resident (``recommendedMaxWorkingSetSize``, which
# llama.cpp's Metal backend also goes by); past that the system pages and the machine stalls.
UNIFIED_MEMORY_SHARE = 0.75


def usable_memory(kind: str, size: int) -> int:
    """What models may take of a device of ``size`` bytes (``kind``: cuda, rocm, metal)."""
    return int(size * UNIFIED_MEMORY_SHARE) if kind == "metal" else size


@dataclass(frozen=True)
class Placement:
    how: How
    gpus: tuple[int, ...] = ()  # indices into the free list; the first is the main GPU
    shares: tuple[float, ...] = ()  # each GPU's share of the layers (split), summing to 1
    gpu_layers: int | None = None  # partial: layers on the GPUs (None: all of them)
    reason: str = ""

    @property
    def fits(self) -> bool:
        """Whether the whole model is on GPUs."""
        return self.how in ("one", "split")


def _gib(size: int) -> str:
    return f"{size / GiB:.1f} GiB"


def place(
    needed: int, free: Sequence[int], *, split: bool = True, partial: bool = False,
    layers: int = 0,
) -> Placement:  # fmt: skip
    """Where a model that needs ``needed`` bytes goes on GPUs with ``free`` bytes each
    (``layers``: the model's layer count, for a partial offload)."""
    by_room = sorted(range(len(free)), key=lambda i: (-free[i], i))
    if by_room and free[by_room[0]] >= needed:
        return Placement("one", (by_room[0],), (1.0,))
    if split and len(free) > 1:
        chosen: list[int] = []
        for index in by_room:
            chosen.append(index)
            room = sum(free[i] for i in chosen)
            if room >= needed:
                return Placement("split", tuple(chosen), tuple(free[i] / room for i in chosen))
    total = sum(free)
    if partial and layers > 0 and total > 0:
        on_gpus = min(layers - 1, layers * total // max(needed, 1))
        if on_gpus > 0:
            use = tuple(i for i in by_room if free[i] > 0)
            room = sum(free[i] for i in use)
            shares = tuple(free[i] / room for i in use)
            return Placement("partial", use, shares, gpu_layers=on_gpus)
    each = ", ".join(_gib(f) for f in free) or "none"
    together = f" ({_gib(total)} together" + ("" if split else ", and splitting is off") + ")"
    return Placement(
        "none",
        reason=f"needs {_gib(needed)}; the GPUs have {each} free"
        + (together if len(free) > 1 else ""),
    )
