"""The engine pool: which models are loaded, loading on demand, and LRU eviction.

A model loads on its first request; concurrent first requests share one load. Loading another
model evicts least-recently-used idle engines until the new one fits the memory budget. An
engine with requests in flight or queued is never evicted: a request that needs its memory
waits until it is idle (bounded by ``wait_seconds``).

The budget is per device: one figure per GPU (a CPU node's one figure for its RAM). Where a
model goes is ``models.placement``'s rule (one GPU, the roomiest; else split by layer), the
same the router plans with; eviction frees memory until the rule finds room, and each engine
counts against the devices it was placed on.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable, Hashable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Generic, Protocol, TypeVar

from llmlb.common.errors import Conflict, InsufficientMemory
from llmlb.models.placement import Placement, place

log = logging.getLogger(__name__)


class Spec(Protocol):
    @property
    def key(self) -> Hashable: ...

    @property
    def memory_bytes(self) -> int: ...


class Closeable(Protocol):
    def close(self) -> None: ...


S = TypeVar("S", bound=Spec)
E = TypeVar("E", bound=Closeable)


@dataclass
class Resident:
    """What the eviction policy knows of a loaded engine."""

    key: Hashable
    memory_bytes: int
    in_use: int
    last_used: float
    usage: tuple[int, ...] = ()  # bytes on each device; () for (memory_bytes,) on one


def usage_of(placement: Placement, needed: int, devices: int, layers: int = 0) -> tuple[int, ...]:
    """Bytes on each of ``devices`` for a model of ``needed`` bytes placed so (a partial
    offload: the share of its ``layers`` on the GPUs)."""
    if placement.how == "partial" and placement.gpu_layers is not None and layers:
        needed = needed * placement.gpu_layers // layers
    usage = [0] * devices
    for gpu, share in zip(placement.gpus, placement.shares, strict=True):
        usage[gpu] = int(needed * share)
    if placement.gpus:  # rounding: the main device takes what the shares left over
        usage[placement.gpus[0]] += needed - sum(usage)
    return tuple(usage)


def plan_load(
    residents: list[Resident], held: Sequence[int], incoming: int, budgets: Sequence[int],
    split: bool = True, layers: int = 0,
) -> tuple[list[Hashable], Placement] | None:  # fmt: skip
    """Keys to evict, least recently used first, and where ``incoming`` bytes then go.

    ``held``: memory per device of loads in progress and engines still closing. Returns no
    keys when it fits already, and None when it cannot fit even after evicting every idle
    engine (the caller waits). ``layers`` (a partial offload allowed): a model that fits the
    budgets nowhere, whole, gets as many layers on the GPUs as every idle engine's memory
    makes room for.
    """
    free = [budget - hold for budget, hold in zip(budgets, held, strict=True)]
    for resident in residents:
        for device, size in enumerate(resident.usage or (resident.memory_bytes,)):
            free[device] -= size
    placement = place(incoming, free, split=split)
    if placement.fits:
        return [], placement
    victims: list[Hashable] = []
    for resident in sorted(residents, key=lambda r: r.last_used):
        if resident.in_use:
            continue
        victims.append(resident.key)
        for device, size in enumerate(resident.usage or (resident.memory_bytes,)):
            free[device] += size
        placement = place(incoming, free, split=split)
        if placement.fits:
            return victims, placement
    if layers and not place(incoming, list(budgets), split=split).fits:
        partly = place(incoming, [max(f, 0) for f in free], split=split, partial=True,
                       layers=layers)  # fmt: skip
        if partly.how == "partial":
            return victims, partly
    return None


def choose_evictions(
    residents: list[Resident], reserved: int, incoming: int, budget: int
) -> list[Hashable] | None:
    """``plan_load`` on one device: the keys to evict so that ``incoming`` bytes fit."""
    plan = plan_load(residents, [reserved], incoming, [budget])
    return None if plan is None else plan[0]


@dataclass
class _Entry(Generic[S, E]):
    spec: S
    engine: E
    memory_bytes: int
    usage: tuple[int, ...]  # bytes on each device
    in_use: int = 0
    last_used: float = 0.0


class EnginePool(Generic[S, E]):
    def __init__(
        self,
        budget_bytes: int | Sequence[int],
        load: Callable[[S], E],
        *,
        wait_seconds: float = 120.0,
        on_change: Callable[[str, Hashable], None] | None = None,
        split: bool = True,
        partial: bool = False,
        placed: Callable[[S, Placement], S] = lambda spec, placement: spec,
    ) -> None:
        """``budget_bytes``: per device (one figure: one device). ``placed``: the spec as it
        loads on the devices chosen (the engine's GPU options)."""
        self.budgets = [budget_bytes] if isinstance(budget_bytes, int) else list(budget_bytes)
        self.budget_bytes = sum(self.budgets)
        self._split = split
        self._partial = partial  # a model too large for the GPUs: partly on the CPU
        self._placed = placed
        self._load = load
        self._wait_seconds = wait_seconds
        self._on_change = on_change or (lambda event, key: None)
        self._loaded: dict[Hashable, _Entry[S, E]] = {}
        self._loading: dict[Hashable, asyncio.Task[None]] = {}
        self._claims: dict[Hashable, int] = {}  # requests waiting on each load
        self._reserved = [0] * len(self.budgets)  # memory of loads in progress
        # Memory of evicted engines still being freed: it counts until close() returns, or a
        # load could start while the victim is still resident (an out-of-memory on a GPU).
        self._releasing = [0] * len(self.budgets)
        self._cond = asyncio.Condition()
        self.load_seconds: dict[Hashable, float] = {}  # how long each key's last load took

    @property
    def used_bytes(self) -> int:
        held = sum(self._reserved) + sum(self._releasing)
        return held + sum(e.memory_bytes for e in self._loaded.values())

    def _layers(self, spec: S) -> int:
        """The spec's layer count where a partial offload is allowed (and known), else 0."""
        layers = getattr(spec, "layers", 0) if self._partial else 0
        return layers if isinstance(layers, int) else 0

    def _hold(self, counter: list[int], usage: tuple[int, ...], sign: int) -> None:
        for device, size in enumerate(usage):
            counter[device] += sign * size

    def loading(self) -> list[Hashable]:
        """The keys of the engines being loaded right now."""
        return list(self._loading)

    def loaded(self) -> dict[Hashable, E]:
        return {key: entry.engine for key, entry in self._loaded.items()}

    @asynccontextmanager
    async def lease(self, spec: S) -> AsyncIterator[E]:
        """The engine for ``spec``, loaded if needed, protected from eviction while held."""
        entry = await self._acquire(spec)
        try:
            yield entry.engine
        finally:
            async with self._cond:
                entry.in_use -= 1
                entry.last_used = time.monotonic()
                self._cond.notify_all()

    async def _acquire(self, spec: S) -> _Entry[S, E]:
        layers = self._layers(spec)
        alone = place(spec.memory_bytes, self.budgets, split=self._split, partial=bool(layers),
                      layers=layers)  # fmt: skip
        if alone.how == "none":
            budget = (f"{self.budget_bytes} bytes" if len(self.budgets) == 1 else
                      " + ".join(str(b) for b in self.budgets) + " bytes on its GPUs")  # fmt: skip
            raise InsufficientMemory(
                f"model {spec.key!r} needs {spec.memory_bytes} bytes but the node's memory "
                f"budget is {budget}" + (f" ({alone.reason})" if len(self.budgets) > 1 else "")
            )
        deadline = time.monotonic() + self._wait_seconds
        async with self._cond:
            while True:
                entry = self._loaded.get(spec.key)
                if entry is not None:
                    entry.in_use += 1
                    entry.last_used = time.monotonic()
                    return entry
                pending = self._loading.get(spec.key)
                if pending is not None:
                    claimed = await self._await_load(spec.key, pending)
                    if claimed is not None:
                        return claimed
                    continue
                held = [r + f for r, f in zip(self._reserved, self._releasing, strict=True)]
                plan = plan_load(
                    [Resident(k, e.memory_bytes, e.in_use, e.last_used, e.usage)
                     for k, e in self._loaded.items()],
                    held, spec.memory_bytes, self.budgets, self._split, layers,
                )  # fmt: skip
                if plan is None:
                    await self._wait(deadline, spec)
                    continue
                victims, placement = plan
                usage = usage_of(placement, spec.memory_bytes, len(self.budgets), layers)
                evicted = [self._loaded.pop(key) for key in victims]
                for entry in evicted:
                    self._hold(self._releasing, entry.usage, +1)
                self._hold(self._reserved, usage, +1)
                # A task of its own: a request that gives up while the model loads must not
                # abandon a half-made engine (its memory would never be counted or freed).
                placed = self._placed(spec, placement)
                load = asyncio.create_task(self._load_with(placed, usage, evicted, victims))
                load.add_done_callback(_retrieve)
                self._loading[spec.key] = load

    async def _await_load(self, key: Hashable, load: asyncio.Task[None]) -> _Entry[S, E] | None:
        """Wait (lock released) for a load, holding a claim on its engine: the engine is
        born with one use per claim, so no other load can evict it before its requests run.
        The entry, or None when the load failed (its error is raised) or is gone."""
        self._claims[key] = self._claims.get(key, 0) + 1
        self._cond.release()
        try:
            await asyncio.shield(load)
        except BaseException:
            await self._cond.acquire()
            self._drop_claim(key, load)
            raise
        await self._cond.acquire()
        entry = self._loaded.get(key)
        if entry is None:  # cannot happen while claimed, but never hand out nothing
            return None
        entry.last_used = time.monotonic()
        return entry

    def _drop_claim(self, key: Hashable, load: asyncio.Task[None]) -> None:
        """A waiter gave up (cancelled, or the load failed): undo its claim."""
        entry = self._loaded.get(key)
        if load.done() and not load.cancelled() and load.exception() is None and entry:
            entry.in_use -= 1  # the claim became a use when the engine was born
            self._cond.notify_all()
        elif self._claims.get(key):
            self._claims[key] -= 1

    async def _wait(self, deadline: float, spec: S) -> None:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise InsufficientMemory(
                f"model {spec.key!r} cannot be loaded: the models holding the memory budget "
                f"stayed busy for {self._wait_seconds:.0f} s",
                headers={"Retry-After": "5"},
            )
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(remaining):
                await self._cond.wait()

    async def _load_with(
        self, spec: S, usage: tuple[int, ...], evicted: list[_Entry[S, E]], keys: list[Hashable]
    ) -> None:
        try:
            for key, victim in zip(keys, evicted, strict=True):
                log.info("evicting model %s to make room for %s", key, spec.key)
                try:
                    await self._free(victim)
                except Exception:  # its memory is accounted for; the load may still fit
                    log.exception("closing model %s failed", key)
                self._on_change("evicted", key)
            log.info("loading model %s (%d bytes)", spec.key, spec.memory_bytes)
            started = time.monotonic()
            engine = await asyncio.to_thread(self._load, spec)
        except BaseException:
            async with self._cond:
                self._hold(self._reserved, usage, -1)
                self._loading.pop(spec.key, None)
                self._claims.pop(spec.key, None)  # every waiter sees the error instead
                self._cond.notify_all()
            raise
        self.load_seconds[spec.key] = seconds = time.monotonic() - started
        log.info("loaded model %s in %.1f s", spec.key, seconds)
        self._on_change("loaded", spec.key)
        async with self._cond:
            claims = self._claims.pop(spec.key, 0)
            entry = _Entry(
                spec, engine, spec.memory_bytes, usage, in_use=claims, last_used=time.monotonic()
            )
            self._hold(self._reserved, usage, -1)
            self._loaded[spec.key] = entry
            self._loading.pop(spec.key, None)
            self._cond.notify_all()

    async def unload(self, match: Callable[[S], bool]) -> None:
        """Free the engines whose spec matches; Conflict (409) if one is in use."""
        async with self._cond:
            keys = [key for key, entry in self._loaded.items() if match(entry.spec)]
            busy = [key for key in keys if self._loaded[key].in_use]
            if busy:
                raise Conflict(f"model {busy[0]!r} is serving requests; try again when idle")
            entries = [self._loaded.pop(key) for key in keys]
            for entry in entries:
                self._hold(self._releasing, entry.usage, +1)
        for entry in entries:
            await self._free(entry)
            self._on_change("evicted", entry.spec.key)

    async def _free(self, entry: _Entry[S, E]) -> None:
        """Close an engine already out of ``_loaded``; its memory counts until it is closed."""
        try:
            await asyncio.to_thread(entry.engine.close)
        finally:
            async with self._cond:
                self._hold(self._releasing, entry.usage, -1)
                self._cond.notify_all()

    async def close(self) -> None:
        """Free every engine (shutdown), those still loading included."""
        for load in list(self._loading.values()):
            with contextlib.suppress(BaseException):
                await load
        async with self._cond:
            entries = list(self._loaded.items())
            self._loaded.clear()
        for key, entry in entries:
            await asyncio.to_thread(entry.engine.close)
            log.info("unloaded model %s", key)


def _retrieve(task: asyncio.Task[None]) -> None:
    """Load errors reach the requests waiting for the load; nobody else needs them."""
    if not task.cancelled():
        task.exception()
