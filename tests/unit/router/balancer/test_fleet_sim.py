"""The fleet simulation (bench/fleet_sim.py) drives the real balancer: every request is
answered once, keeping conversations at home is what makes their turns fast there, and the
bound it reports is one no strategy beats."""

from __future__ import annotations

import statistics

from bench.fleet_sim import SGLANG, STRATEGIES, bound_rps, simulate, workload


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


def test_the_bound_is_what_one_request_alone_reaches_and_no_strategy_beats_it() -> None:
    alone = workload("growing", 1, 1)
    firsts, wall, _ = simulate("load", 1, alone, 1)
    assert abs(bound_rps(alone, 1) - 1 / wall) < 1e-9 * bound_rps(alone, 1)
    for kind in ("shared", "growing", "agents"):
        conversations = workload(kind, 9, 4)
        bound = bound_rps(conversations, 2)
        for side in (*STRATEGIES, SGLANG):
            firsts, wall, _ = simulate(side, 2, conversations, 2)
            assert len(firsts) / wall <= bound, (kind, side)
