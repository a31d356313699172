"""Every balancing strategy, as a pure function of node snapshots."""

from __future__ import annotations

from collections import Counter

from llmlb.router.balancer.ranking import (
    DEFAULT_LOAD_SECONDS,
    NodeSnapshot,
    expected_start_seconds,
    rank,
    score,
)

M = "m"


def node(
    node_id: str, *, loaded: bool = True, on_disk: bool = True, active: int = 0, queued: int = 0,
    slots: int = 4, limit: int = 8, tps: float = 0.0, gpu: float = 0.0, serving: bool = True,
    load_seconds: float | None = None, request_seconds: float = 0.0,
) -> NodeSnapshot:  # fmt: skip
    return NodeSnapshot(
        id=node_id, name=node_id,
        models_loaded=frozenset({M} if loaded else set()),
        models_on_disk=frozenset({M} if on_disk else set()),
        active=active, queued=queued, slots=slots, limit=limit, tokens_per_second=tps,
        gpu_use=gpu, serving=serving,
        load_seconds={} if load_seconds is None else {M: load_seconds},
        request_seconds=request_seconds,
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


def test_load_prefers_loaded_nodes_while_they_have_a_free_slot() -> None:
    nodes = [
        node("disk-idle", loaded=False),
        node("loaded-busy", active=3),
        node("loaded-idle", active=1),
    ]
    assert ids(rank(nodes, M)) == ["loaded-idle", "loaded-busy", "disk-idle"]


def test_a_single_request_goes_to_the_node_with_the_model_loaded() -> None:
    nodes = [node("disk-idle", loaded=False, load_seconds=0.2), node("loaded-idle")]
    assert ids(rank(nodes, M)) == ["loaded-idle", "disk-idle"]


def test_an_idle_node_with_the_model_on_disk_wins_once_the_loaded_node_is_full() -> None:
    """The review's finding: a busy loaded node must not starve an idle one (4 slots each)."""
    disk = node("disk-idle", loaded=False, load_seconds=30.0)
    for active in range(4):
        assert rank([node("loaded", active=active), disk], M)[0].id == "loaded"
    assert rank([node("loaded", active=4), disk], M)[0].id == "disk-idle"
    assert rank([node("loaded", active=2, queued=2), disk], M)[0].id == "disk-idle"


def test_eight_requests_over_two_nodes_of_four_slots_use_both() -> None:
    """The proxy's loop: pick, count the request in flight, pick again."""
    counts = {"a": 0, "b": 0}
    for _ in range(8):
        nodes = [node("a", active=counts["a"]), node("b", loaded=False, active=counts["b"])]
        counts[rank(nodes, M)[0].id] += 1
    assert counts == {"a": 4, "b": 4}


def test_when_every_node_is_full_waiting_beats_loading_only_while_it_is_shorter() -> None:
    # Three requests queued beyond 4 slots of 2 s each: a slot in about 2 s.
    loaded_full = node("loaded", active=7, request_seconds=2.0)
    # Just full: a slot in about 0.5 s, plus the load.
    quick_load = node("disk", loaded=False, active=4, request_seconds=2.0, load_seconds=0.1)
    slow_load = node("disk", loaded=False, active=4, request_seconds=2.0, load_seconds=20.0)
    assert expected_start_seconds(loaded_full, M) == 2.0
    assert expected_start_seconds(quick_load, M) == 0.6
    assert rank([loaded_full, slow_load], M)[0].id == "loaded"
    assert rank([loaded_full, quick_load], M)[0].id == "disk"


def test_unknown_load_time_uses_the_default() -> None:
    assert expected_start_seconds(node("disk", loaded=False), M) == DEFAULT_LOAD_SECONDS
    assert expected_start_seconds(node("loaded"), M) == 0.0


def test_a_node_that_must_download_the_model_comes_last_even_when_others_are_full() -> None:
    fetching = node("fetch", loaded=False, on_disk=False)
    full = node("full", active=7, request_seconds=60.0)
    assert ids(rank([fetching, full], M, fetchable=True)) == ["full", "fetch"]


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


def test_prefix_affinity_prefers_the_node_with_the_longest_prefix_while_it_has_a_slot() -> None:
    nodes = [node("a"), node("b", active=1), node("c")]
    assert rank(nodes, M, "prefix_affinity", affinity={"b": 30, "c": 2})[0].id == "b"
    # No match: the load order (so new conversations spread by load).
    assert rank(nodes, M, "prefix_affinity", affinity={})[0].id == rank(nodes, M, "load")[0].id
    # A full home whose prompt speed is not known spills to the load order.
    busy = [node("a"), node("b", active=4), node("c")]
    assert rank(busy, M, "prefix_affinity", affinity={"b": 30})[0].id == "a"
    # A home that cannot serve at all is not ranked.
    gone = [node("a"), node("b", serving=False)]
    assert [n.id for n in rank(gone, M, "prefix_affinity", affinity={"b": 30})] == ["a"]


def test_an_endpoint_is_never_chosen_to_fetch_a_catalog_model() -> None:
    endpoint = node("endpoint", loaded=False, on_disk=False)
    endpoint.fetches = False
    fetcher = node("node", loaded=False, on_disk=False, active=3)
    assert ids(rank([endpoint, fetcher], M, fetchable=True)) == ["node"]
    assert rank([endpoint], M, fetchable=True) == []


def slow(snapshot: NodeSnapshot, first_byte: float) -> NodeSnapshot:
    snapshot.first_byte_seconds = first_byte
    return snapshot


def test_of_nodes_equally_free_the_one_slow_to_answer_comes_second() -> None:
    """(The router's own measure of each node's time to first byte: a slow link.)"""
    nodes = [slow(node("a-slow-link", slots=1), 0.6), slow(node("b", slots=1), 0.2)]
    assert ids(rank(nodes, M)) == ["b", "a-slow-link"]
    # The slow one still takes what the other has no slot for, and a busier node is never
    # put ahead of a free one by this, however slow the free one is.
    nodes[1].active = 1
    assert ids(rank(nodes, M)) == ["a-slow-link", "b"]
    busier = [slow(node("x", slots=4, active=1), 0.0), slow(node("y", slots=4), 60.0)]
    assert ids(rank(busier, M)) == ["y", "x"]
    assert score(busier[1]) - score(node("y", slots=4)) <= 0.2
    # More than a faster generation can make up.
    link = [slow(node("fast-gpu", slots=1, tps=500), 0.6), slow(node("slow-gpu", slots=1), 0.15)]
    assert ids(rank(link, M)) == ["slow-gpu", "fast-gpu"]
    # Answers quicker than the floor count alike: equal nodes keep their order.
    quick = [slow(node("p", slots=1), 0.09), slow(node("q", slots=1), 0.0)]
    assert ids(rank(quick, M)) == ["p", "q"]


def test_a_full_home_keeps_a_turn_while_its_wait_is_shorter_than_the_prefill_it_saves() -> None:
    """Home has 30 blocks (about 960 tokens) of the prompt cached; elsewhere a node with a free
    slot has none of it, and would compute them at the home's 500 tokens a second: 1.9 s."""

    def home(request_seconds: float, prompt_speed: float = 500.0) -> NodeSnapshot:
        snapshot = node("home", active=4, request_seconds=request_seconds)  # every slot taken
        snapshot.prompt_tokens_per_second = prompt_speed
        return snapshot

    def first(nodes: list[NodeSnapshot], affinity: dict[str, int]) -> str:
        return rank(nodes, M, "prefix_affinity", affinity=affinity)[0].id

    # Requests of 1 s on 4 slots: a slot frees in about 0.25 s. Worth the wait.
    assert first([node("free"), home(1.0)], {"home": 30}) == "home"
    # Requests of 20 s: about 5 s to wait, more than the prefill it saves.
    assert first([node("free"), home(20.0)], {"home": 30}) == "free"
    # The free node has most of the prompt too: 2 blocks saved (0.13 s) are not worth 0.25 s.
    assert first([node("free"), home(1.0)], {"home": 30, "free": 28}) == "free"
    # Where the home's prompt speed is not known (an older node, an endpoint): it spills.
    assert first([node("free"), home(1.0, prompt_speed=0.0)], {"home": 30}) == "free"
