"""A node as the router knows it (router.fleet.node_record): the GPU figures it plans with."""

from __future__ import annotations

from llmlb.common.wire import Device, NodeLoad
from llmlb.router.distribution.distributor import node_memory
from llmlb.router.fleet.node_record import FIRST_BYTE_CEILING, FIRST_BYTE_HALF_LIFE, NodeRecord

GiB = 1 << 30


def record(devices: list[Device], load: NodeLoad) -> NodeRecord:
    return NodeRecord(id="n", name="n", base_url="http://n:1", version="", devices=devices,
                      approved=True, draining=False, registered_at=0.0, last_seen=0.0,
                      load=load)  # fmt: skip


def gpu(total: int, free: int) -> Device:
    return Device(kind="cuda", name="GPU", memory_total=total * GiB, memory_free=free * GiB)


def test_the_router_plans_with_each_heartbeats_free_memory_not_the_registrations() -> None:
    node = record([gpu(24, 23), gpu(12, 11)], NodeLoad(gpu_free=[4 * GiB, 11 * GiB]))
    assert [d.memory_free for d in node.current_devices()] == [4 * GiB, 11 * GiB]
    assert node_memory(node, free=True) == 15 * GiB  # a model loaded since registration
    assert node.to_dict(10.0)["devices"][0]["memory_free"] == 4 * GiB  # what people see too


def test_figures_that_do_not_match_the_gpus_are_not_used() -> None:
    registered = [gpu(24, 23), gpu(12, 11)]
    for load in (NodeLoad(), NodeLoad(gpu_free=[1 * GiB])):  # none, or one for two GPUs
        assert record(registered, load).current_devices() == registered
    capped = record([gpu(24, 23)], NodeLoad(gpu_free=[99 * GiB]))
    assert capped.current_devices()[0].memory_free == 24 * GiB  # never more than it has


def test_a_slow_answer_fades_until_the_node_is_measured_again() -> None:
    """One slow answer (a cold prompt on a busy machine) must not rank a node second for
    good: with other nodes free it gets no traffic to correct the figure. The figure halves
    every FIRST_BYTE_HALF_LIFE seconds without a new answer; a new answer is weighed at once."""
    node = record([], NodeLoad())
    node.answered_after(1.0, now=100.0)
    assert node.first_byte_now(100.0) == 1.0
    assert node.first_byte_now(100.0 + FIRST_BYTE_HALF_LIFE) == 0.5
    assert node.first_byte_now(100.0 + 4 * FIRST_BYTE_HALF_LIFE) < 0.1  # ranked as quick
    # Answers in a row are averaged ...
    node.answered_after(0.5, now=100.0)
    assert node.first_byte_now(100.0) == 0.5 + 0.8 * (1.0 - 0.5)
    # ... but a node tried again once its slow figure has faded is judged by its new answer,
    # not put back to second by what was forgotten (the figure was 0.9 before, and the quick
    # answer, averaged with it whole, would have left 0.76).
    later = 100.0 + 4 * FIRST_BYTE_HALF_LIFE
    node.answered_after(0.2, now=later)
    assert node.first_byte_now(later) < 0.25


def test_an_answer_slower_than_the_ranking_weighs_counts_as_its_ceiling() -> None:
    """A first answer of 30 s (a cold node) costs the node no more in the ranking than one
    of FIRST_BYTE_CEILING, so it fades as fast: a node free again is tried within a half-life
    or so, not after minutes."""
    node = record([], NodeLoad())
    node.answered_after(30.0, now=0.0)
    assert node.first_byte_now(0.0) == FIRST_BYTE_CEILING
    assert node.first_byte_now(2 * FIRST_BYTE_HALF_LIFE) < 0.3
