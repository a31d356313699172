"""A node as the router knows it (router.fleet.node_record): the GPU figures it plans with."""

from __future__ import annotations

from llmlb.common.wire import Device, NodeLoad
from llmlb.router.distribution.distributor import node_memory
from llmlb.router.fleet.node_record import FIRST_BYTE_HALF_LIFE, NodeRecord

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
    node.answered_after(1.5)
    measured = node.first_byte_at
    assert node.first_byte_now(measured) == 1.5
    assert node.first_byte_now(measured + FIRST_BYTE_HALF_LIFE) == 0.75
    assert node.first_byte_now(measured + 4 * FIRST_BYTE_HALF_LIFE) < 0.1  # ranked as quick
    node.answered_after(0.2)
    assert node.first_byte_now(node.first_byte_at) == 1.5 + 0.2 * (0.2 - 1.5)
