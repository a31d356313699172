"""The engine pool with stand-in engines: one load per model, waits for busy memory."""

import asyncio
import threading
from dataclasses import dataclass

import pytest

from llmlb.common.errors import Conflict, InsufficientMemory, ModelLoadFailed
from llmlb.node.pool import EnginePool


@dataclass(frozen=True)
class FakeSpec:
    key: str
    memory_bytes: int
    layers: int = 0


class FakeEngine:
    def __init__(self, spec: FakeSpec) -> None:
        self.spec = spec
        self.closed = False

    def close(self) -> None:
        self.closed = True


class Loader:
    def __init__(self, fail: set[str] | None = None) -> None:
        self.loads: list[str] = []
        self.fail = fail or set()
        self._lock = threading.Lock()

    def __call__(self, spec: FakeSpec) -> FakeEngine:
        with self._lock:
            self.loads.append(spec.key)
        threading.Event().wait(0.05)  # loading takes a while
        if spec.key in self.fail:
            raise ModelLoadFailed(f"cannot load {spec.key}")
        return FakeEngine(spec)


async def test_concurrent_first_requests_load_the_model_once() -> None:
    loader = Loader()
    pool: EnginePool[FakeSpec, FakeEngine] = EnginePool(100, loader)
    spec = FakeSpec("a", 40)

    async def use() -> FakeEngine:
        async with pool.lease(spec) as engine:
            return engine

    engines = await asyncio.gather(*(use() for _ in range(5)))
    assert loader.loads == ["a"]
    assert len({id(e) for e in engines}) == 1


async def test_a_second_model_evicts_the_first_only_when_idle() -> None:
    loader = Loader()
    pool: EnginePool[FakeSpec, FakeEngine] = EnginePool(100, loader, wait_seconds=5)
    first, second = FakeSpec("a", 60), FakeSpec("b", 60)
    release = asyncio.Event()
    order: list[str] = []

    async def hold_first() -> None:
        async with pool.lease(first) as engine:
            order.append("a-start")
            await release.wait()
            assert not engine.closed
            order.append("a-end")

    holder = asyncio.create_task(hold_first())
    await asyncio.sleep(0.1)

    async def use_second() -> None:
        async with pool.lease(second):
            order.append("b")

    waiter = asyncio.create_task(use_second())
    await asyncio.sleep(0.2)
    assert "b" not in order  # still waiting: "a" is busy
    release.set()
    await asyncio.gather(holder, waiter)
    assert order == ["a-start", "a-end", "b"]
    assert set(pool.loaded()) == {"b"}


async def test_waiting_for_busy_memory_is_bounded() -> None:
    pool: EnginePool[FakeSpec, FakeEngine] = EnginePool(100, Loader(), wait_seconds=0.2)
    async with pool.lease(FakeSpec("a", 80)):
        with pytest.raises(InsufficientMemory, match="stayed busy"):
            async with pool.lease(FakeSpec("b", 80)):
                pass


async def test_a_model_larger_than_the_budget_is_refused_at_once() -> None:
    pool: EnginePool[FakeSpec, FakeEngine] = EnginePool(100, Loader())
    with pytest.raises(InsufficientMemory, match="budget is 100 bytes"):
        async with pool.lease(FakeSpec("huge", 101)):
            pass


async def test_a_failed_load_frees_its_reservation_and_reports_to_every_waiter() -> None:
    loader = Loader(fail={"broken"})
    pool: EnginePool[FakeSpec, FakeEngine] = EnginePool(100, loader)

    async def use() -> None:
        async with pool.lease(FakeSpec("broken", 90)):
            pass

    results = await asyncio.gather(use(), use(), return_exceptions=True)
    assert all(isinstance(r, ModelLoadFailed) for r in results)
    assert pool.used_bytes == 0
    async with pool.lease(FakeSpec("ok", 90)) as engine:
        assert engine.spec.key == "ok"


async def test_unloading_a_busy_model_is_a_conflict() -> None:
    pool: EnginePool[FakeSpec, FakeEngine] = EnginePool(100, Loader())
    spec = FakeSpec("a", 10)
    async with pool.lease(spec) as engine:
        with pytest.raises(Conflict, match="serving requests"):
            await pool.unload(lambda s: s.key == "a")
    await pool.unload(lambda s: s.key == "a")
    assert engine.closed
    assert pool.loaded() == {}


async def test_an_evicted_engine_counts_until_its_memory_is_freed() -> None:
    """Review finding: a third load must not start while an evicted engine is still resident."""
    release = threading.Event()
    closing = asyncio.Event()
    loop = asyncio.get_running_loop()
    closed: list[str] = []
    loaded_while_resident: list[str] = []

    class SlowToFree(FakeEngine):
        def close(self) -> None:
            loop.call_soon_threadsafe(closing.set)
            release.wait(10)  # a GPU engine takes a while to free its memory
            closed.append(self.spec.key)

    def load(spec: FakeSpec) -> FakeEngine:
        if "a" not in closed and spec.key != "a" and spec.key != "b":
            loaded_while_resident.append(spec.key)
        return SlowToFree(spec)

    pool: EnginePool[FakeSpec, FakeEngine] = EnginePool(100, load, wait_seconds=5)
    async with pool.lease(FakeSpec("a", 60)):
        pass

    async def use(spec: FakeSpec) -> None:
        async with pool.lease(spec):
            pass

    b = asyncio.create_task(use(FakeSpec("b", 60)))  # evicts a; a's close blocks
    await asyncio.wait_for(closing.wait(), 10)
    assert pool.used_bytes == 120  # b reserved + a still being freed
    c = asyncio.create_task(use(FakeSpec("c", 30)))
    await asyncio.sleep(0.2)
    assert not c.done()  # waits: 60 (b) + 60 (a, still resident) + 30 > 100
    release.set()
    await asyncio.wait_for(asyncio.gather(b, c), 10)
    assert loaded_while_resident == []
    assert pool.used_bytes <= 100


async def test_a_request_that_gives_up_during_the_load_leaves_the_engine_counted() -> None:
    loader = Loader()
    pool: EnginePool[FakeSpec, FakeEngine] = EnginePool(100, loader)
    spec = FakeSpec("a", 40)

    async def use() -> None:
        async with pool.lease(spec):
            pass

    impatient = asyncio.create_task(use())
    while not loader.loads:  # noqa: ASYNC110 (the fake loader runs in a thread, no event)
        await asyncio.sleep(0.005)
    impatient.cancel()
    with pytest.raises(asyncio.CancelledError):
        await impatient
    await use()  # the load finished on its own; the next request finds the engine
    assert loader.loads == ["a"]
    assert pool.used_bytes == 40
    await pool.close()


async def test_a_fresh_engine_is_not_evicted_before_its_requests_run() -> None:
    """Review finding: with room for one model, two models requested together must not
    evict each other's freshly loaded engine forever."""
    loader = Loader()
    pool: EnginePool[FakeSpec, FakeEngine] = EnginePool(100, loader, wait_seconds=10)

    async def use(spec: FakeSpec) -> str:
        async with pool.lease(spec) as engine:
            await asyncio.sleep(0.01)
            return engine.spec.key

    first, second = FakeSpec("a", 60), FakeSpec("b", 60)
    served = await asyncio.wait_for(
        asyncio.gather(use(first), use(second), use(first), use(second)), 20
    )
    assert sorted(served) == ["a", "a", "b", "b"]
    assert len(loader.loads) <= 3  # at most one reload, not a thrash
    await pool.close()


async def test_on_several_gpus_models_spread_then_split_then_evict_by_gpu() -> None:
    from llmlb.models.placement import Placement

    placed: dict[str, Placement] = {}

    def remember(spec: FakeSpec, placement: Placement) -> FakeSpec:
        placed[spec.key] = placement
        return spec

    loader = Loader()
    pool: EnginePool[FakeSpec, FakeEngine] = EnginePool(
        [100, 100], loader, wait_seconds=5, placed=remember
    )
    for key in ("a", "b"):  # one on each GPU, not both on the first
        async with pool.lease(FakeSpec(key, 60)):
            pass
    assert (placed["a"].gpus, placed["b"].gpus) == ((0,), (1,))
    # 120 fits no single GPU and only together once the older model is gone: it is evicted,
    # and the new one split over both, the roomier GPU the main one.
    async with pool.lease(FakeSpec("c", 120)) as engine:
        assert not engine.closed
    assert (placed["c"].how, placed["c"].gpus) == ("split", (0, 1))
    assert set(pool.loaded()) == {"b", "c"} and pool.used_bytes == 180


async def test_without_splitting_a_model_larger_than_any_gpu_is_refused_with_the_figures() -> None:
    pool: EnginePool[FakeSpec, FakeEngine] = EnginePool([100, 100], Loader(), split=False)
    with pytest.raises(InsufficientMemory, match=r"100 \+ 100 bytes on its GPUs"):
        async with pool.lease(FakeSpec("big", 150)):
            pass


async def test_a_model_too_large_for_the_gpus_is_partly_offloaded_when_the_operator_allows() -> (
    None
):
    from llmlb.models.placement import Placement

    placed: dict[str, Placement] = {}

    def remember(spec: FakeSpec, placement: Placement) -> FakeSpec:
        placed[spec.key] = placement
        return spec

    pool: EnginePool[FakeSpec, FakeEngine] = EnginePool(
        [100], Loader(), partial=True, placed=remember
    )
    async with pool.lease(FakeSpec("small", 60)):
        pass
    async with pool.lease(FakeSpec("big", 150, layers=30)):
        pass  # the idle small model made room: 20 of 30 layers fill the GPU's 100
    assert (placed["big"].how, placed["big"].gpu_layers) == ("partial", 20)
    assert set(pool.loaded()) == {"big"} and pool.used_bytes == 150
    refusing: EnginePool[FakeSpec, FakeEngine] = EnginePool([100], Loader())
    with pytest.raises(InsufficientMemory, match="needs 150 bytes"):
        async with refusing.lease(FakeSpec("big", 150, layers=30)):
            pass
