"""Every balancing strategy, as a pure function of node snapshots."""

from __future__ import annotations

from collections import Counter

from llmlb.router.balancer import NodeSnapshot, prefix_key_of, rank, score

M = "m"


def node(
    node_id: str, *, loaded: bool = True, on_disk: bool = True, active: int = 0, queued: int = 0,
    slots: int = 4, limit: int = 8, tps: float = 0.0, gpu: float = 0.0, serving: bool = True,
) -> NodeSnapshot:  # fmt: skip
    return NodeSnapshot(
        id=node_id, name=node_id, url=f"http://{node_id}",
        models_loaded=frozenset({M} if loaded else set()),
        models_on_disk=frozenset({M} if on_disk else set()),
        active=active, queued=queued, slots=slots, limit=limit, tokens_per_second=tps,
        gpu_use=gpu, serving=serving,
    )  # fmt: skip


def ids(nodes: list[NodeSnapshot]) -> list[str]:
    return [n.id for n in nodes]


def test_only_serving_nodes_that_hold_the_model_and_have_room() -> None:
    nodes = [
        node("offline", serving=False),
        node("other-model", loaded=False, on_disk=False),
        node("full", active=8),
        node("ok"),
    ]
    assert ids(rank(nodes, M)) == ["ok"]
    assert rank(nodes, "unknown") == []


def test_load_prefers_loaded_over_on_disk_then_lowest_score() -> None:
    nodes = [
        node("disk-idle", loaded=False),
        node("loaded-busy", active=3),
        node("loaded-idle", active=1),
    ]
    assert ids(rank(nodes, M)) == ["loaded-idle", "loaded-busy", "disk-idle"]


def test_score_formula() -> None:
    assert score(node("a", active=2, queued=2, slots=4)) == 1.0
    assert score(node("b", gpu=1.0)) == 0.25
    assert score(node("c", tps=200)) == -0.05  # bonus capped at 100 tok/s
    assert score(node("d", queued=1, slots=4)) < score(node("e", queued=2, slots=4))


def test_failover_excludes_nodes_already_tried() -> None:
    nodes = [node("a"), node("b")]
    assert ids(rank(nodes, M, exclude=frozenset({"a"}))) == ["b"]
    assert rank(nodes, M, exclude=frozenset({"a", "b"})) == []


def test_least_busy_counts_requests_not_utilisation() -> None:
    nodes = [node("big", slots=16, active=3), node("small", slots=2, active=1)]
    assert ids(rank(nodes, M, "least_busy")) == ["small", "big"]
    assert ids(rank(nodes, M, "load")) == ["big", "small"]


def test_round_robin_rotates_over_eligible_nodes() -> None:
    nodes = [node("a"), node("b"), node("c", serving=False), node("d", loaded=False)]
    firsts = [rank(nodes, M, "round_robin", rotation=i)[0].id for i in range(6)]
    assert Counter(firsts) == {"a": 2, "b": 2, "d": 2}


def test_prefix_affinity_is_sticky_and_spills_when_busy() -> None:
    nodes = [node("a"), node("b"), node("c")]
    homes = {rank(nodes, M, "prefix_affinity", prefix_key=f"conv-{i}")[0].id for i in range(30)}
    assert homes == {"a", "b", "c"}  # different conversations spread out
    key = "same system prompt"
    home = rank(nodes, M, "prefix_affinity", prefix_key=key)[0].id
    assert all(rank(nodes, M, "prefix_affinity", prefix_key=key)[0].id == home for _ in range(5))
    busy = [node(n.id, active=4) if n.id == home else n for n in nodes]
    spilled = rank(busy, M, "prefix_affinity", prefix_key=key)
    assert spilled[0].id != home
    assert spilled[-1].id == home


def test_prefix_key_covers_system_prompt_and_first_turn() -> None:
    first_turn = {
        "messages": [{"role": "system", "content": "S"}, {"role": "user", "content": "Q1"}]
    }
    later_turn = {"messages": [*first_turn["messages"], {"role": "assistant", "content": "A1"},
                               {"role": "user", "content": "Q2"}]}  # fmt: skip
    assert prefix_key_of(M, first_turn) == prefix_key_of(M, later_turn)
    assert prefix_key_of(M, {"prompt": "abc"}) != prefix_key_of("other", {"prompt": "abc"})
    assert prefix_key_of(M, {}) is None
