"""Where a model goes on a machine's GPUs (models.placement), as a table over the machines
operators run: one 24 GiB GPU, two 8 GiB, four 80 GiB, and 24 + 12 GiB mixed."""

from __future__ import annotations

import pytest

from llmlb.models.placement import GiB, place

ONE_24 = [24 * GiB]
TWO_8 = [8 * GiB, 8 * GiB]
FOUR_80 = [80 * GiB] * 4
MIXED = [12 * GiB, 24 * GiB]  # the larger one second: order is the node's, not by size


@pytest.mark.parametrize(
    ("case", "free", "needed", "split", "how", "gpus"),
    [
        ("fits the one GPU", ONE_24, 10 * GiB, True, "one", (0,)),
        ("too big for the one GPU", ONE_24, 30 * GiB, True, "none", ()),
        ("fits one of two", TWO_8, 6 * GiB, True, "one", (0,)),
        ("12.6 GiB fits two 8 GiB GPUs only split", TWO_8, int(12.6 * GiB), True, "split", (0, 1)),
        ("... and not at all without splitting", TWO_8, int(12.6 * GiB), False, "none", ()),
        ("fits a single 80 GiB GPU", FOUR_80, 70 * GiB, True, "one", (0,)),
        ("200 GiB over three of four", FOUR_80, 200 * GiB, True, "split", (0, 1, 2)),
        ("400 GiB fits nowhere", FOUR_80, 400 * GiB, True, "none", ()),
        ("mixed: the roomier GPU first", MIXED, 10 * GiB, True, "one", (1,)),
        ("mixed: split, the roomier GPU the main one", MIXED, 30 * GiB, True, "split", (1, 0)),
    ],
)
def test_where_a_model_goes(
    case: str, free: list[int], needed: int, split: bool, how: str, gpus: tuple[int, ...]
) -> None:
    placement = place(needed, free, split=split)
    assert (placement.how, placement.gpus) == (how, gpus), case
    if placement.how == "split":
        assert sum(placement.shares) == pytest.approx(1.0)
        assert sum(free[i] for i in placement.gpus) >= needed


def test_models_spread_over_gpus_as_they_fill() -> None:
    free = [24 * GiB, 24 * GiB]
    homes = []
    for _ in range(4):
        placement = place(10 * GiB, free)
        (gpu,) = placement.gpus
        free[gpu] -= 10 * GiB
        homes.append(gpu)
    assert homes == [0, 1, 0, 1]


def test_split_shares_follow_free_memory() -> None:
    placement = place(30 * GiB, [12 * GiB, 24 * GiB])
    assert placement.shares == pytest.approx((24 / 36, 12 / 36))


def test_a_partial_offload_only_when_asked_and_with_the_figures_otherwise() -> None:
    refused = place(40 * GiB, [8 * GiB, 8 * GiB])
    assert refused.how == "none"
    assert (
        refused.reason == "needs 40.0 GiB; the GPUs have 8.0 GiB, 8.0 GiB free (16.0 GiB together)"
    )
    partial = place(40 * GiB, [8 * GiB, 8 * GiB], partial=True, layers=80)
    assert (partial.how, partial.gpu_layers, partial.fits) == ("partial", 32, False)
    assert place(40 * GiB, [], partial=True, layers=80).how == "none"  # no GPU: nothing to offload
