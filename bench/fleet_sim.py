"""Routing at fleet scale: a calibrated simulation of 16 and 64 nodes.

This machine runs two real nodes. The balancer does not care how many there are, so this
drives llmlb's own choice (``router.balancer.Chooser`` with each strategy, the real prefix index
and ranking) over simulated nodes, in simulated time. It is a simulation: the nodes' timing is
a model whose figures come from the real node's measurements (``CALIBRATION``), and its prompt
cache is an ideal one (a longest-prefix match over the same 128-character blocks the router
indexes, least recently used out first), not llama.cpp's (whose slot choice loses a
conversation behind a long shared prompt: see bench/RESULTS.md).

Beside llmlb's strategies, ``SGLang cache_aware`` is SGLang's gateway's policy as its source
describes it (``CacheAwarePolicy``, with its defaults): each node's tree of the prompts sent
to it (never evicted at this size); when the busiest node has 64 requests more than the
idlest and 1.5 × as many, the idlest; otherwise the node whose tree matches the most of the
prompt where that is over 30 % of it, else the node whose tree is smallest. Its trees are kept
here at the router's block granularity, not character by character.

A node runs at most ``slots`` requests at once and queues the rest; the ones running share its
compute, with the aggregate speed-up the node throughput benchmark measured for parallel
streams. A request's work is its prompt (uncached tokens at the cold rate, cached ones at the
cached rate) and then its tokens. Workloads: the routing suite's three, scaled to the fleet
(conversations 4.5 × the nodes, all under way at once, as many requests in flight as nodes).

    .venv/bin/python -m bench fleet [--quick]
"""

from __future__ import annotations

import random
import statistics
import sys
from collections import Counter, OrderedDict, deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import cast

from bench.report import Report
from llmlb.common.settings import BalancerStrategy
from llmlb.node.metrics import moving_average
from llmlb.router.balancer.choice import Chooser
from llmlb.router.balancer.prefixes import BLOCK, prefix_blocks, prompt_text
from llmlb.router.balancer.ranking import NodeSnapshot

MODEL = "gemma-3-270m"
# From the real node (gemma-3-270m, one thread; bench/RESULTS.md): a 1,120-token prompt takes
# 2.24 s cold and 0.13 s cached; one stream generates 88.8 tokens/s; 4 and 8 streams 1.4× and
# 2.2× that in all; a 512 MiB prompt cache at about 18 KiB of KV per token.
CALIBRATION = {
    "prefill_s_per_token": 2.24 / 1120,
    "cached_s_per_token": 0.10 / 1120,
    "decode_s_per_token": 1 / 88.8,
    "parallel_gain_per_stream": 0.17,  # aggregate speed with n running: 1 + 0.17 (n - 1)
    "slots": 2,
    "cache_tokens": 29_000,
}
CHARS_PER_TOKEN = 4
MAX_TOKENS = 8
STRATEGIES: tuple[BalancerStrategy, ...] = ("round_robin", "least_busy", "load", "prefix_affinity")
WORDS = ["harbour", "ferry", "ticket", "schedule", "weather", "tide", "captain", "cargo",
         "passenger", "dock", "lighthouse", "storm", "anchor", "rope", "deck", "cabin"]  # fmt: skip


SGLANG = "SGLang cache_aware"
CACHE_THRESHOLD, BALANCE_ABS, BALANCE_REL = 0.3, 64, 1.5  # sglang-router's defaults


class CacheAwareChooser:
    """SGLang's gateway's ``cache_aware`` choice over the simulated fleet (see above)."""

    def __init__(self, fleet: Fleet) -> None:
        self._fleet = fleet
        self._trees: dict[str, set[int]] = {node: set() for node in fleet.nodes}

    def choose(self, model: str, prefix: tuple[int, ...], tried: frozenset[str],
               fetchable: bool) -> str | None:  # fmt: skip
        loads = self._fleet.active
        nodes = [node for node in self._fleet.nodes if node not in tried]
        busiest = max(loads[node] for node in nodes)
        idlest = min(loads[node] for node in nodes)
        if busiest - idlest > BALANCE_ABS and busiest > idlest * BALANCE_REL:
            chosen = min(nodes, key=lambda node: loads[node])
        else:
            matched = {node: _depth(self._trees[node], prefix) for node in nodes}
            best = max(nodes, key=lambda node: matched[node])
            if prefix and matched[best] / len(prefix) > CACHE_THRESHOLD:
                chosen = best
            else:
                chosen = min(nodes, key=lambda node: len(self._trees[node]))
        self._trees[chosen].update(prefix)
        return chosen


def _depth(tree: set[int], keys: tuple[int, ...]) -> int:
    depth = 0
    for key in keys:
        if key not in tree:
            break
        depth += 1
    return depth


def words(seed: int, count: int) -> str:
    chance = random.Random(seed)
    return " ".join(chance.choice(WORDS) for _ in range(count))


@dataclass
class Request:
    conversation: int
    keys: tuple[int, ...]
    tokens: int
    sent: float
    to_first: float = 0.0  # solo-speed seconds of work left until the first token
    to_end: float = 0.0  # and until the last
    first: float | None = None
    node: str = ""


@dataclass
class Node:
    id: str
    slots: int
    cache_blocks: int
    running: list[Request] = field(default_factory=list)
    waiting: deque[Request] = field(default_factory=deque)
    cache: OrderedDict[int, None] = field(default_factory=OrderedDict)
    served: int = 0
    request_seconds: float = 0.0  # moving average of its requests' durations, as nodes report

    def cached(self, keys: tuple[int, ...]) -> int:
        depth = 0
        for key in keys:
            if key not in self.cache:
                break
            depth += 1
        return depth

    def start(self, request: Request) -> None:
        """The request's prompt meets the cache now (it is computed from here)."""
        hit_tokens = min(self.cached(request.keys) * BLOCK // CHARS_PER_TOKEN, request.tokens)
        for key in request.keys:
            self.cache[key] = None
            self.cache.move_to_end(key)
        while len(self.cache) > self.cache_blocks:
            self.cache.popitem(last=False)
        c = CALIBRATION
        prefill = ((request.tokens - hit_tokens) * c["prefill_s_per_token"]
                   + hit_tokens * c["cached_s_per_token"])  # fmt: skip
        request.to_first = prefill + c["decode_s_per_token"]
        request.to_end = prefill + MAX_TOKENS * c["decode_s_per_token"]
        self.running.append(request)

    def rate(self) -> float:
        """Each running request's speed, as a share of running alone."""
        n = len(self.running)
        return (1 + CALIBRATION["parallel_gain_per_stream"] * (n - 1)) / n if n else 0.0


class Fleet:
    """The simulated nodes, as the Chooser's ``FleetView``."""

    def __init__(self, count: int) -> None:
        c = CALIBRATION
        self.nodes = {f"node-{i:02d}": Node(f"node-{i:02d}", int(c["slots"]),
                                            int(c["cache_tokens"]) * CHARS_PER_TOKEN // BLOCK)
                      for i in range(count)}  # fmt: skip
        self.active: Counter[str] = Counter()  # the router's requests in flight, per node
        self._snapshots = {
            i: NodeSnapshot(
                id=i,
                name=i,
                models_loaded=frozenset({MODEL}),
                models_on_disk=frozenset({MODEL}),
                active=0,
                queued=0,
                slots=n.slots,
                limit=n.slots * 4,
                prompt_tokens_per_second=1 / c["prefill_s_per_token"],
            )
            for i, n in self.nodes.items()
        }

    def holders(self, model: str) -> list[str]:
        return list(self.nodes)

    def snapshots(self, ids: Iterable[str] | None = None) -> list[NodeSnapshot]:
        chosen = [self._snapshots[i] for i in (self.nodes if ids is None else ids)]
        for snapshot in chosen:
            snapshot.active = self.active[snapshot.id]
            snapshot.request_seconds = self.nodes[snapshot.id].request_seconds
        return chosen


Conversation = list[list[dict[str, str]]]  # each turn's messages, sent in order


def workload(kind: str, count: int, turns: int) -> list[Conversation]:
    """``count`` conversations of ``turns`` requests each; ``shared``: each request of a group
    repeats the group's system prompt (no history); ``growing``: each turn the conversation
    so far; ``agents``: growing, behind one system prompt all share."""
    shared_prompt = f"Standing orders: {words(-1, 500)}"
    conversations = []
    for number in range(count):
        system = {"shared": f"Office {number}: {words(number, 700)}", "growing": "Navigator.",
                  "agents": shared_prompt}[kind]  # fmt: skip
        own = words(1000 + number, 150 if kind == "agents" else 300)
        history = [{"role": "system", "content": system},
                   {"role": "user", "content": f"Voyage {number}: {own}"}]  # fmt: skip
        turns_of: Conversation = []
        for turn in range(turns):
            if kind == "shared":
                turns_of.append([{"role": "system", "content": system},
                                 {"role": "user", "content": f"Question {turn}?"}])  # fmt: skip
                continue
            turns_of.append(list(history))
            history += [{"role": "assistant", "content": f"Answer {turn} of {number}, brief."},
                        {"role": "user", "content": f"Question {turn + 1}: and then?"}]  # fmt: skip
        conversations.append(turns_of)
    return conversations


def simulate(strategy: BalancerStrategy | str, nodes: int, conversations: list[Conversation],
             in_flight: int) -> tuple[list[float], float, Counter[str]]:  # fmt: skip
    """(times to first token, simulated seconds in all, requests per node); ``strategy``:
    one of llmlb's, or SGLANG."""
    fleet = Fleet(nodes)
    chooser: Chooser | CacheAwareChooser
    if strategy == SGLANG:
        chooser = CacheAwareChooser(fleet)
    else:
        chooser = Chooser(fleet, cast(BalancerStrategy, strategy))
    now = 0.0
    pending: deque[Request] = deque()
    next_turn = [0] * len(conversations)
    firsts: list[float] = []
    outstanding = 0

    def send(number: int) -> None:
        messages = conversations[number][next_turn[number]]
        next_turn[number] += 1
        body = {"messages": messages}
        tokens = len(prompt_text(body)) // CHARS_PER_TOKEN
        pending.append(Request(number, prefix_blocks(MODEL, body), tokens, now))

    # Every conversation is under way from the start; ``in_flight`` requests at a time, first
    # come, first served; a conversation's next turn queues once its answer is in.
    for number in range(len(conversations)):
        send(number)
    while pending or outstanding:
        while pending and outstanding < in_flight:
            request = pending[0]
            chosen = chooser.choose(MODEL, request.keys, frozenset(), fetchable=False)
            if chosen is None:
                break
            pending.popleft()
            request.sent, request.node = now, chosen  # timed from here, as the clients time it
            fleet.active[chosen] += 1
            outstanding += 1
            node = fleet.nodes[chosen]
            node.served += 1
            if len(node.running) < node.slots:
                node.start(request)
            else:
                node.waiting.append(request)
        # The next moment a running request reaches its first or last token.
        step = min(
            ((r.to_first if r.first is None else r.to_end) / n.rate()
             for n in fleet.nodes.values() for r in n.running),
            default=None,
        )  # fmt: skip
        if step is None:  # nothing runs: only when nothing can be placed
            raise RuntimeError(f"{len(pending)} requests that no node takes")
        now += step
        for node in fleet.nodes.values():
            rate = node.rate()
            done = []
            for request in node.running:
                request.to_first -= step * rate
                request.to_end -= step * rate
                if request.first is None and request.to_first <= 1e-12:
                    request.first = now - request.sent
                    firsts.append(request.first)
                if request.to_end <= 1e-12:
                    done.append(request)
            for request in done:
                node.request_seconds = moving_average(node.request_seconds, now - request.sent)
                node.running.remove(request)
                fleet.active[node.id] -= 1
                outstanding -= 1
                if node.waiting:
                    node.start(node.waiting.popleft())
                number = request.conversation
                if next_turn[number] < len(conversations[number]):
                    send(number)
    served = Counter({n.id: n.served for n in fleet.nodes.values()})
    return firsts, now, served


def bound_rps(conversations: list[Conversation], nodes: int) -> float:
    """Requests/s no router can beat in this model: every request does the least work it
    could (its prompt cold only where no earlier request had that prefix: each conversation's
    first turn, and each later turn's newest part) and every node runs one request at a time,
    never idle. (``nodes`` in flight: one on each node is the most the fleet can do at once; two
    on one node run at 1.17 the speed of one while another node has none.)"""
    c = CALIBRATION
    seen: set[int] = set()
    work = 0.0
    # In the order the simulation sends them: every conversation's first turn, then the second...
    for turn in range(max(len(conversation) for conversation in conversations)):
        for conversation in conversations:
            if turn >= len(conversation):
                continue
            body = {"messages": conversation[turn]}
            keys = prefix_blocks(MODEL, body)
            tokens = len(prompt_text(body)) // CHARS_PER_TOKEN
            depth = next((i for i, key in enumerate(keys) if key not in seen), len(keys))
            hit = min(depth * BLOCK // CHARS_PER_TOKEN, tokens)
            work += ((tokens - hit) * c["prefill_s_per_token"] + hit * c["cached_s_per_token"]
                     + MAX_TOKENS * c["decode_s_per_token"])  # fmt: skip
            seen.update(keys)
    requests = sum(len(conversation) for conversation in conversations)
    return requests / (work / nodes)


def run(report: Report, quick: bool) -> None:
    # Two nodes: the routing suite's real pair, as a check of the model against measurement.
    sizes = (2, 16) if quick else (2, 16, 64)
    report.section(
        "Routing at fleet scale (a calibrated simulation)",
        "Not measured: llmlb's own choice (`Chooser`, each strategy) over simulated nodes in "
        "simulated time (`bench/fleet_sim.py`). Each node: "
        f"{CALIBRATION['slots']} slots; a prompt costs "
        f"{CALIBRATION['prefill_s_per_token'] * 1000:.2f} ms a token cold and "
        f"{CALIBRATION['cached_s_per_token'] * 1000:.3f} ms cached, a generated token "
        f"{CALIBRATION['decode_s_per_token'] * 1000:.1f} ms; n requests running share it at "
        f"1 + {CALIBRATION['parallel_gain_per_stream']} (n − 1) the speed of one; an ideal "
        f"prompt cache of {CALIBRATION['cache_tokens']:,} tokens (least recently used out). "
        "These are the real node's figures (gemma-3-270m, one thread); each node reports its "
        "mean request time and its prompt speed, as real ones do. "
        f"`{SGLANG}`: SGLang's gateway's policy with its defaults, from its source, at the "
        "router's block granularity. Conversations: 4.5 × "
        "the nodes (9 for 2 nodes, as in the routing suite), 4 turns, as many in flight as "
        "nodes, 8 tokens an answer. `spread` is the busiest node's requests over the mean. "
        "`bound` is the requests/s no router can beat in this model (every request doing the "
        "least work it could, every node busy with one request at a time).",
    )
    rows = []
    for nodes in sizes:
        count = nodes * 9 // 2 | 1  # odd: see the routing suite
        for kind in ("shared", "growing", "agents"):
            conversations = workload(kind, count, 4)
            base = base_rate = 0.0  # round robin's, the first side's
            for strategy in (*STRATEGIES, SGLANG):
                firsts, wall, served = simulate(strategy, nodes, conversations, nodes)
                mean = statistics.fmean(firsts)
                base = base or mean
                base_rate = base_rate or len(firsts) / wall
                ordered = sorted(firsts)
                rows.append([nodes, kind, strategy, mean, ordered[int(0.9 * (len(ordered) - 1))],
                             base / mean, len(firsts) / wall, len(firsts) / wall / base_rate,
                             max(served.values()) / statistics.fmean(served.values())])  # fmt: skip
            bound = bound_rps(conversations, nodes)
            rows.append([nodes, kind, "bound", "–", "–", "–", bound, bound / base_rate, "–"])
    report.table(["nodes", "workload", "strategy", "mean TTFT (s)", "p90 TTFT (s)",
                  "round robin ÷ this", "requests/s", "÷ round robin (req/s)", "spread"],
                 rows)  # fmt: skip


if __name__ == "__main__":
    from bench.__main__ import main

    main(["fleet", *sys.argv[1:]])
