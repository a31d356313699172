"""The auto-distribution policy and the choice of targets for ``auto``."""

from llmlb.models.catalog import CatalogEntry, Tier
from llmlb.router.distribution.policy import assign_models, pick_auto_targets


def entry(name: str, size: int, memory: int | None = None) -> CatalogEntry:
    return CatalogEntry.model_validate(
        {
            "name": name,
            "origin": {"url": "https://x/y"},
            "size_bytes": size,
            "required_memory_bytes": memory,
        }
    )


CATALOG = [entry("big", 8000), entry("small", 100), entry("mid", 1000, memory=3000)]
TIERS = [Tier(min_gpu_memory_bytes=5000, model="mid"), Tier(min_gpu_memory_bytes=0, model="small")]


def test_none_assigns_nothing() -> None:
    assert assign_models(CATALOG, 10**9, "none", ["small"], tiers=TIERS) == []


def test_recommended_is_the_tier_of_the_nodes_gpu_memory_and_the_extras_that_fit() -> None:
    assert assign_models(CATALOG, 6000, "recommended", tiers=TIERS, gpu_memory=6000) == ["mid"]
    assert assign_models(CATALOG, 4000, "recommended", tiers=TIERS, gpu_memory=4000) == ["small"]
    # A CPU node (no GPU memory) gets the smallest tier; extras only where they fit.
    assert assign_models(CATALOG, 5000, "recommended", ["big", "mid"], tiers=TIERS) == [
        "small", "mid"
    ]  # fmt: skip


def test_all_that_fit_smallest_first_by_memory_needed() -> None:
    # "mid" needs 3000 (its own figure), "big" 1.2 x 8000 = 9600.
    assert assign_models(CATALOG, 3000, "all-that-fit") == ["small", "mid"]
    assert assign_models(CATALOG, 10_000, "all-that-fit") == ["small", "mid", "big"]


def test_auto_targets_most_free_memory_that_fits() -> None:
    free = {"a": 1000, "b": 5000, "c": 3000}
    assert pick_auto_targets(free, 2000) == ["b"]
    assert pick_auto_targets(free, 2000, count=2) == ["b", "c"]
    assert pick_auto_targets(free, 9000) == []


GiB = 1 << 30
TWELVE_SIX = entry("twelve-six", int(12.6 * GiB), memory=int(12.6 * GiB))


def test_a_model_fits_a_node_by_its_gpus_not_their_sum() -> None:
    two_8 = [8 * GiB, 8 * GiB]
    assert assign_models([TWELVE_SIX], two_8, "all-that-fit", split=True) == ["twelve-six"]
    assert assign_models([TWELVE_SIX], two_8, "all-that-fit", split=False) == []
    assert assign_models([TWELVE_SIX], [24 * GiB], "all-that-fit", split=False) == ["twelve-six"]


def test_auto_picks_a_node_whose_gpus_hold_the_model() -> None:
    free = {"two-8": [8 * GiB, 8 * GiB], "one-16": [16 * GiB], "one-12": [12 * GiB]}
    assert pick_auto_targets(free, int(12.6 * GiB), count=3, split=False) == ["one-16"]
    # Split allowed: still a node that holds it on one GPU first (no hop between GPUs).
    assert pick_auto_targets(free, int(12.6 * GiB), count=3) == ["one-16", "two-8"]
