"""Which node has which prompt prefix in its cache: a bounded, approximate prefix index.

llama.cpp reuses the KV cache of the longest prefix a new prompt shares with one it has
processed (in a slot, or from its host-memory prompt cache), so a request whose conversation a
node has seen starts far sooner there: a 920-token system prompt takes this machine's CPU 4.5 s
to process cold and 0.2 s cached. The router never renders prompts (templates live on the
nodes), but a rendered prompt grows with its messages in order, so two requests share a
rendered prefix about as far as their messages' text does.

So the text is cut into blocks of ``BLOCK`` characters and a hash is chained through them: block
i's key stands for blocks 0..i, which is a prefix tree kept as a flat map, as cache-aware routers
do. The index remembers, for each key, the last few nodes that were sent it. The longest run of
leading keys a node has is what it can reuse. Memory is bounded: at most ``capacity`` keys
(least recently used out first) and ``MAX_BLOCKS`` per request.

Each key also counts the requests that were sent through it. Where a request's match ends says
what kind of prefix it shares: a turn of a conversation ends its match in its own last turn,
which one request reached; a new conversation behind a long system prompt (agents, tools)
ends it where the many conversations that share that prompt part ways, which ``HOT`` or more
reached. A hot prefix is worth a copy on a second node (computed once there) rather than
piling every newcomer onto the one node that has it.
"""

from __future__ import annotations

from collections import Counter, OrderedDict
from collections.abc import Mapping

BLOCK = 128  # characters: about 32 tokens
BLOCK_TOKENS = BLOCK // 4  # the balancer's estimate (4 characters a token)
MAX_BLOCKS = 512  # 64 KiB of prompt: the rest of a longer one is not indexed
NODES_PER_BLOCK = 4
HOT = 4  # requests through one key: from here on a shared prefix, no longer one conversation's


def _text_of(content: object) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # content parts: the text ones reach the prompt
        return "".join(p["text"] for p in content
                       if isinstance(p, dict) and isinstance(p.get("text"), str))  # fmt: skip
    return ""


def prompt_text(body: Mapping[str, object]) -> str:
    """The request's prompt as text, in the order a template renders it."""
    messages = body.get("messages")
    if isinstance(messages, list):
        return "".join(
            f"{m.get('role')}\x1f{_text_of(m.get('content'))}\x1e"
            for m in messages
            if isinstance(m, dict)
        )
    prompt = body.get("prompt")
    return prompt if isinstance(prompt, str) else ""


def prefix_blocks(model: str, body: Mapping[str, object]) -> tuple[int, ...]:
    """The chained keys of the request's whole blocks of prompt (none for a short prompt)."""
    text = prompt_text(body)
    end = min(len(text), BLOCK * MAX_BLOCKS)
    key = hash(model)
    keys = []
    for start in range(0, end - BLOCK + 1, BLOCK):
        key = hash((key, text[start : start + BLOCK]))
        keys.append(key)
    return tuple(keys)


class PrefixIndex:
    def __init__(self, capacity: int = 65536) -> None:
        self._capacity = capacity
        self._holders: OrderedDict[int, tuple[str, ...]] = OrderedDict()
        self._through: dict[int, int] = {}  # key -> requests sent through it
        # Blocks indexed per node: how much of the cache a node is already known to use.
        self.blocks_of: Counter[str] = Counter()

    def __len__(self) -> int:
        return len(self._holders)

    def match(self, keys: tuple[int, ...]) -> dict[str, int]:
        """Node id -> how many leading blocks of ``keys`` were sent to it (0: absent)."""
        depth: dict[str, int] = {}
        for index, key in enumerate(keys):
            holders = self._holders.get(key)
            if holders is None:
                break
            for node_id in holders:
                depth[node_id] = index + 1
        return depth

    def hot(self, keys: tuple[int, ...], depth: int) -> bool:
        """Whether the request's match (its first ``depth`` keys) ends in a prefix that ``HOT``
        or more requests have shared."""
        return depth > 0 and self._through.get(keys[depth - 1], 0) >= HOT

    def add(self, keys: tuple[int, ...], node_id: str) -> None:
        """``keys`` went to ``node_id``: its cache now holds them."""
        holders = self._holders
        through = self._through
        for key in keys:
            through[key] = through.get(key, 0) + 1
            seen = holders.get(key, ())
            if node_id not in seen:
                kept = seen[-(NODES_PER_BLOCK - 1) :]
                self.blocks_of.subtract(seen[: len(seen) - len(kept)])
                holders[key] = (*kept, node_id)
                self.blocks_of[node_id] += 1
            holders.move_to_end(key)
        while len(holders) > self._capacity:
            key, gone = holders.popitem(last=False)
            self.blocks_of.subtract(gone)
            del through[key]
