"""The prefix index: shared system prompts share blocks, histories extend them, bounded."""

from __future__ import annotations

from llmlb.router.balancer.prefixes import BLOCK, PrefixIndex, prefix_blocks, prompt_text

SYSTEM = "You are a careful assistant for the harbour office. " * 40  # ~2,000 characters


def chat(*turns: tuple[str, str]) -> dict[str, object]:
    return {"messages": [{"role": role, "content": text} for role, text in turns]}


def test_requests_that_share_a_system_prompt_share_its_blocks() -> None:
    first = prefix_blocks("m", chat(("system", SYSTEM), ("user", "When does the ferry leave?")))
    other = prefix_blocks("m", chat(("system", SYSTEM), ("user", "Where can I park?")))
    whole_system_blocks = len(SYSTEM) // BLOCK
    assert first[:whole_system_blocks] == other[:whole_system_blocks]
    # A different system prompt shares nothing; neither does another model.
    assert prefix_blocks("m", chat(("system", SYSTEM.upper()), ("user", "x")))[0] != first[0]
    assert prefix_blocks("other", chat(("system", SYSTEM)))[0] != first[0]


def test_a_later_turn_extends_the_earlier_prefix() -> None:
    turn1 = chat(("system", SYSTEM), ("user", "Q1 " * 100))
    turn2 = chat(("system", SYSTEM), ("user", "Q1 " * 100), ("assistant", "A1"), ("user", "Q2"))
    earlier, later = prefix_blocks("m", turn1), prefix_blocks("m", turn2)
    assert len(later) >= len(earlier) and later[: len(earlier) - 1] == earlier[:-1]


def test_content_parts_count_as_their_text_and_short_prompts_have_no_blocks() -> None:
    parts = {"messages": [{"role": "user", "content": [{"type": "text", "text": "hi"}]}]}
    assert prompt_text(parts) == prompt_text({"messages": [{"role": "user", "content": "hi"}]})
    assert prefix_blocks("m", {"prompt": "short"}) == ()
    assert prefix_blocks("m", {"prompt": ["not", "a", "string"]}) == ()
    assert prefix_blocks("m", {"prompt": "x" * 10**7}) == prefix_blocks(
        "m", {"prompt": "x" * 10**6}
    )


def test_match_gives_each_node_its_leading_depth() -> None:
    index = PrefixIndex()
    shared = prefix_blocks("m", chat(("system", SYSTEM), ("user", "a question " * 30)))
    index.add(shared, "node-a")
    index.add(shared[:5], "node-b")
    assert index.match(shared) == {"node-a": len(shared), "node-b": 5}
    assert index.match(prefix_blocks("m", chat(("system", "unrelated " * 100)))) == {}


def test_the_index_is_bounded_and_forgets_the_least_recently_used() -> None:
    index = PrefixIndex(capacity=100)
    old = prefix_blocks("m", {"prompt": "old " * 2000})
    index.add(old, "n")
    for number in range(50):
        index.add(prefix_blocks("m", {"prompt": f"conversation {number} " * 200}), "n")
    assert len(index) == 100
    assert index.match(old) == {}
    assert sum(index.blocks_of.values()) == 100  # the per-node counts follow evictions
