"""The fleet simulation (bench/fleet_sim.py) drives the real balancer: every request is
answered once, and keeping conversations at home is what makes their turns fast there."""

from __future__ import annotations

import statistics

from bench.fleet_sim import SGLANG, simulate, workload


def test_every_request_is_answered_once_on_a_simulated_fleet() -> None:
    conversations = workload("growing", 9, 3)
    for side in ("round_robin", SGLANG):
        firsts, wall, served = simulate(side, 4, conversations, 4)
        assert len(firsts) == sum(served.values()) == 27
        assert wall > 0 and min(firsts) > 0


def test_prefix_affinity_beats_round_robin_where_conversations_grow() -> None:
    conversations = workload("growing", 17, 4)
    by_strategy = {s: statistics.fmean(simulate(s, 4, conversations, 4)[0])
                   for s in ("round_robin", "prefix_affinity", SGLANG)}  # fmt: skip
    assert by_strategy["prefix_affinity"] < 0.7 * by_strategy["round_robin"]
    # SGLang's policy keeps a conversation where its tree matches most of it, too.
    assert by_strategy[SGLANG] < 0.7 * by_strategy["round_robin"]
