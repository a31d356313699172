"""The choice of a node (router.balancer.choice.Chooser) over a fleet of plain values: no
database, no sockets, no registry."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable

from llmlb.router.balancer.choice import SAMPLE, Chooser
from llmlb.router.balancer.prefixes import HOT
from llmlb.router.balancer.ranking import NodeSnapshot


def snapshot(node_id: str, *, holds: bool = True, active: int = 0, limit: int = 8) -> NodeSnapshot:
    models = frozenset({"m"} if holds else set())
    return NodeSnapshot(id=node_id, name=node_id, models_loaded=models, models_on_disk=models,
                        active=active, queued=0, slots=4, limit=limit)  # fmt: skip


class Fleet:
    """A FleetView over a dict, counting the snapshots each choice read."""

    def __init__(self, nodes: list[NodeSnapshot]) -> None:
        self.nodes = {n.id: n for n in nodes}
        self.read: list[int] = []

    def holders(self, model: str) -> list[str]:
        return [n.id for n in self.nodes.values() if n.has(model)]

    def snapshots(self, ids: Iterable[str] | None = None) -> list[NodeSnapshot]:
        chosen = list(self.nodes.values()) if ids is None else [self.nodes[i] for i in ids]
        self.read.append(len(chosen))
        return chosen


def test_a_large_fleet_ranks_a_sample_not_every_node() -> None:
    fleet = Fleet([snapshot(f"n{i}") for i in range(SAMPLE * 10)])
    chooser = Chooser(fleet, "load")
    for _ in range(50):
        chosen = chooser.choose("m", (), frozenset(), fetchable=False)
        assert chosen is not None
        fleet.nodes[chosen].active += 1
    assert max(fleet.read) == SAMPLE  # each choice read a sample, never the whole fleet
    assert max(n.active for n in fleet.nodes.values()) <= 2  # and still spread the load


def test_when_the_sample_is_full_the_whole_fleet_is_looked_at() -> None:
    fleet = Fleet([snapshot(f"n{i}", active=8) for i in range(SAMPLE * 4)])
    fleet.nodes["n7"].active = 0  # one holder with room, probably outside the sample
    assert Chooser(fleet, "load").choose("m", (), frozenset(), fetchable=False) == "n7"


def test_a_node_without_the_model_only_for_a_model_the_catalog_can_fetch() -> None:
    fleet = Fleet([snapshot("holder", active=8), snapshot("empty", holds=False)])
    chooser = Chooser(fleet, "load")
    assert chooser.choose("m", (), frozenset(), fetchable=False) is None  # wait for the holder
    assert chooser.choose("m", (), frozenset(), fetchable=True) == "empty"


def test_a_tried_node_is_not_chosen_again() -> None:
    fleet = Fleet([snapshot("a"), snapshot("b", active=3)])
    chooser = Chooser(fleet, "load")
    assert chooser.choose("m", (), frozenset(), fetchable=False) == "a"
    assert chooser.choose("m", (), frozenset({"a"}), fetchable=False) == "b"
    assert chooser.choose("m", (), frozenset({"a", "b"}), fetchable=False) is None


def test_a_prefix_goes_back_to_the_node_that_has_it_cached() -> None:
    fleet = Fleet([snapshot(f"n{i}") for i in range(4)])
    chooser = Chooser(fleet, "prefix_affinity")
    prefix = (11, 22, 33)
    first = chooser.choose("m", prefix, frozenset(), fetchable=False)
    assert first is not None
    fleet.nodes[first].active = 2  # busier than the rest, but it has the prefix
    assert chooser.choose("m", prefix, frozenset(), fetchable=False) == first


def test_conversations_behind_a_popular_system_prompt_spread_and_keep_their_homes() -> None:
    """Agents: one long system prompt, then each conversation's own text. The first node
    to see the prompt does not get every conversation (and every later turn of each): once
    the prompt is hot, new conversations go where the least is cached; a turn of a
    conversation goes back to the node that has the conversation."""
    fleet = Fleet([snapshot("a"), snapshot("b"), snapshot("c")])
    chooser = Chooser(fleet, "prefix_affinity")
    system = tuple(range(100, 130))  # 30 blocks every conversation shares
    homes = {}
    for number in range(12):
        opening = (*system, *range(1000 * number, 1000 * number + 8))
        homes[number] = chooser.choose("m", opening, frozenset(), fetchable=False)
    assert Counter(homes.values())["a"] <= 6  # the ones before the prompt was known as hot
    assert set(homes.values()) == {"a", "b", "c"}
    for number, home in homes.items():
        later_turn = (*system, *range(1000 * number, 1000 * number + 12))
        assert chooser.choose("m", later_turn, frozenset(), fetchable=False) == home


def test_a_group_of_a_few_requests_keeps_its_home_while_other_nodes_idle() -> None:
    """Fewer than HOT requests behind a prompt: they all go to the node that has it."""
    fleet = Fleet([snapshot("a"), snapshot("b")])
    chooser = Chooser(fleet, "prefix_affinity")
    prompt = tuple(range(40))
    first = chooser.choose("m", (*prompt, 1), frozenset(), fetchable=False)
    assert first is not None
    fleet.nodes[first].active = 1
    for question in range(2, HOT):
        assert chooser.choose("m", (*prompt, question), frozenset(), fetchable=False) == first
