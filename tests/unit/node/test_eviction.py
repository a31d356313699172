"""The eviction policy: least recently used idle engines go first; busy ones never."""

from llmlb.node.pool import Resident, choose_evictions


def resident(key: str, memory: int, in_use: int = 0, last_used: float = 0.0) -> Resident:
    return Resident(key, memory, in_use, last_used)


def test_nothing_is_evicted_when_the_model_fits() -> None:
    assert choose_evictions([resident("a", 40)], 0, 50, 100) == []


def test_least_recently_used_idle_engine_goes_first() -> None:
    residents = [resident("new", 40, last_used=2), resident("old", 40, last_used=1)]
    assert choose_evictions(residents, 0, 50, 100) == ["old"]


def test_as_many_as_needed_are_evicted_in_lru_order() -> None:
    residents = [resident("a", 30, last_used=3), resident("b", 30, last_used=1),
                 resident("c", 30, last_used=2)]  # fmt: skip
    assert choose_evictions(residents, 0, 70, 100) == ["b", "c"]


def test_busy_engines_are_never_evicted() -> None:
    residents = [resident("busy", 60, in_use=1, last_used=0), resident("idle", 30, last_used=5)]
    assert choose_evictions(residents, 0, 40, 100) == ["idle"]


def test_no_plan_when_only_busy_engines_hold_the_memory() -> None:
    assert choose_evictions([resident("busy", 80, in_use=2)], 0, 40, 100) is None


def test_loads_in_progress_count_as_used() -> None:
    assert choose_evictions([], 70, 40, 100) is None
