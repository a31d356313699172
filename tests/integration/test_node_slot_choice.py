"""Conversations behind one shared system prompt, more of them than the node has slots: each
conversation's next turn finds its own earlier turns cached (``slot_choice`` cache, the
default), so only the new turn is computed.

Under llama.cpp's own choice (``--slot-choice similarity``) every next turn here computed its
own text again (140 to 144 tokens each, the system prompt alone reused; checked by hand with
this test's requests against a node so started): a new conversation took the slot whose
prompt shared the most with it and overwrote the conversation there without saving it, and
idle slots are saved and emptied as each request starts, which left nothing a conversation
could resume. With ``cache``, 16 each."""

from __future__ import annotations

import random

import httpx

from tests.support import Process

MODEL = "gemma-3-270m"
SLOTS = 4  # the session's node (tests/conftest.py)
WORDS = ["harbour", "ferry", "ticket", "schedule", "weather", "tide", "captain", "cargo",
         "river", "bridge", "lantern", "market", "signal", "anchor", "island"]  # fmt: skip


def _text(seed: int, words: int) -> str:
    chance = random.Random(seed)
    return " ".join(chance.choice(WORDS) for _ in range(words))


def _ask(http: httpx.Client, messages: list[dict[str, str]]) -> dict[str, int]:
    """llama.cpp's timings of one answer: prompt_n (tokens computed), cache_n (reused)."""
    reply = http.post("/v1/chat/completions", json={
        "model": MODEL, "messages": messages, "max_tokens": 1, "temperature": 0,
    })  # fmt: skip
    assert reply.status_code == 200, reply.text
    timings: dict[str, int] = reply.json()["timings"]
    return timings


def test_each_conversation_resumes_its_own_turns_behind_a_shared_system_prompt(
    node: Process,
) -> None:
    system = {"role": "system", "content": "You answer ferry questions. " + _text(7, 250)}
    conversations = [
        [system, {"role": "user", "content": f"Trip {n}: " + _text(100 + n, 120)}]
        for n in range(SLOTS + 1)
    ]
    with httpx.Client(base_url=node.url, timeout=120) as http:
        own_tokens = []
        for messages in conversations:  # one after another: each has the node to itself
            first = _ask(http, messages)
            own_tokens.append(first["prompt_n"])  # (the system prompt was cached, at least
            messages += [{"role": "assistant", "content": "Noted."},  # after the first)
                         {"role": "user", "content": "And the return?"}]  # fmt: skip
        computed = [_ask(http, messages)["prompt_n"] for messages in conversations]
    # Each next turn computes its new words (a dozen tokens or so), not its own text again.
    assert min(own_tokens[1:]) > 100, own_tokens
    assert max(computed) < 50, (computed, own_tokens)
