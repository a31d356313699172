"""Faults of the network between a router and its nodes, each on a host of its own: a node
partitioned under load, then healed (what was lost, how long the router took to judge it
gone, how long until it served again), and a node behind a slow or lossy link (figures in
docs/reliability.md)."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from tests.faultproxy import FaultProxy
from tests.netlab import Lab
from tests.network.fleet import Fleet
from tests.support import wait_until

PARTITION_SECONDS = 30.0
BAD_LINK_SECONDS = 20.0
NODE_PORT = 32769  # (a fresh host's ports are all free: the proxy must know it beforehand)


def test_a_node_cut_off_for_30_s_under_load_fails_over_and_comes_back(
    lab: Lab, model_home: Path, tmp_path: Path
) -> None:
    fleet = Fleet(lab, tmp_path, model_home, "--heartbeat-interval", "1",
                  "--request-timeout", "60")  # fmt: skip
    cut_off = fleet.add_node("node-a")
    fleet.add_node("node-b")
    for name in ("node-a", "node-b"):
        fleet.wait_status(name, "ready")
    load = fleet.load(workers=2)
    try:
        wait_until(lambda: load.served_by("node-a") > 0 and load.served_by("node-b") > 0, 60)
        cut = time.monotonic()
        lab.cut(cut_off)
        judged = fleet.wait_status("node-a", "offline", timeout=PARTITION_SECONDS)
        time.sleep(max(0.0, cut + PARTITION_SECONDS - time.monotonic()))
        lab.mend(cut_off)
        healed = time.monotonic()
        back = fleet.wait_status("node-a", "ready", timeout=60)
        wait_until(lambda: load.served_by("node-a", after=back) > 0, 60)
    finally:
        outcomes = load.stop()
    lost = [o for o in outcomes if o.status != 200]
    in_partition = [o for o in outcomes if cut <= o.started < healed]
    misrouted = [o for o in in_partition if o.node == "node-a" and o.started > judged]
    slowest = max(o.ended - o.started for o in outcomes)
    print(f"\n{len(outcomes)} requests, {len(in_partition)} during the partition, lost "
          f"{len(lost)}; judged gone {judged - cut:.1f} s after the cut, back "
          f"{back - healed:.1f} s after the heal; slowest answer {slowest:.1f} s")  # fmt: skip
    assert not lost, lost
    assert not misrouted, misrouted
    assert judged - cut < 10 and back - healed < 15
    # A request in flight to it at the cut went to the other node once it was judged gone,
    # rather than wait out the partition (before: 30 s, the whole partition).
    assert slowest < judged - cut + 10


@pytest.mark.parametrize(
    ("fault", "setting"), [("latency", 0.2), ("loss", 0.05)], ids=["200ms-latency", "5pct-loss"]
)
def test_a_node_on_a_bad_link_serves_less_and_nothing_hangs(
    lab: Lab, model_home: Path, tmp_path: Path, fault: str, setting: float
) -> None:
    """node-a's traffic passes a proxy on the runner (its advertised address) that adds the
    fault; node-b's link is clean. Three clients keep both nodes' single slots busy."""
    fleet = Fleet(lab, tmp_path, model_home, "--heartbeat-interval", "1",
                  "--request-timeout", "30")  # fmt: skip
    slow_host_address = lab.address(len(lab.hosts) + 2)  # (the next host's, made below)
    proxy = FaultProxy(lab.runner_address, (slow_host_address, NODE_PORT))
    try:
        fleet.add_node("node-a", "--advertise-url", proxy.url, port=NODE_PORT)
        fleet.add_node("node-b")
        for name in ("node-a", "node-b"):
            fleet.wait_status(name, "ready")
        setattr(proxy, fault, setting)
        load = fleet.load(workers=3)
        try:
            time.sleep(BAD_LINK_SECONDS)
        finally:
            outcomes = load.stop()
    finally:
        proxy.close()
    slow, healthy = load.served_by("node-a"), load.served_by("node-b")
    lost = [o for o in outcomes if o.status != 200]
    slowest = max(o.ended - o.started for o in outcomes)
    print(f"\n{fault} {setting}: {len(outcomes)} requests, node-a (bad link) served {slow}, "
          f"node-b {healthy}, lost {len(lost)}, slowest {slowest:.1f} s")  # fmt: skip
    assert not lost, lost
    assert slowest < 30  # nothing waits out the request timeout
    assert slow > 0  # the bad link still serves
    if fault == "latency":  # (5 % loss costs a request ~30 ms on average: too little to tell)
        assert slow < healthy
