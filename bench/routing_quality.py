"""Routing quality: which node a request goes to decides whether its prompt is computed again.

Two real nodes (one thread each, so they do not share a core) behind a real router, started
fresh for each side so that no side inherits another's caches. The sides: each of llmlb's
strategies, and SGLang's gateway with its ``cache_aware`` policy (the best-known prefix-aware
router) in front of the same two nodes. Two workloads:

- shared system prompts: groups of requests that share a long system prompt (each group its
  own) and ask different questions, the groups interleaved, two requests in flight;
- growing conversations: many more conversations than nodes, all under way at once, each
  turn repeating the conversation so far (the answers included) and adding a question, two
  requests in flight (chat);
- the same behind one long system prompt that every conversation shares (agents).

Reported per side: mean and p90 time to the first token (streamed), wall time, requests/s,
how the requests split over the nodes, and the bound no router can beat.
``LLMLB_BENCH_ROUTING_ROUNDS=3`` runs each side three times and reports the median run.

    .venv/bin/python -m bench routing [--quick]
"""

from __future__ import annotations

import asyncio
import os
import random
import statistics
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

import httpx

from bench import peers
from bench.procs import CACHE, ROOT, stop
from bench.report import Report
from llmlb.models.smallmodel import SMALL_MODEL_NAME, install_small_model
from llmlb.models.store import ModelStore

sys.path.insert(0, str(ROOT))
from tests.support import (
    free_port,
    node_token,
    start_fleet_node,
    start_router,
    wait_until,
)

STRATEGIES = ("round_robin", "least_busy", "load", "prefix_affinity")
SGLANG = "SGLang cache_aware"
WORDS = ["harbour", "ferry", "ticket", "schedule", "weather", "tide", "captain", "cargo",
         "passenger", "dock", "lighthouse", "storm", "anchor", "rope", "deck", "cabin"]  # fmt: skip
IN_FLIGHT = 2

Messages = list[dict[str, str]]


def system_prompt(group: int, words: int) -> str:
    chance = random.Random(group)
    text = " ".join(chance.choice(WORDS) for _ in range(words))
    return f"You are the assistant of harbour office {group}. Notes: {text}."


def workload(groups: int, per_group: int, words: int) -> list[tuple[int, Messages]]:
    """(group, messages) in the order they are sent: the groups interleaved."""
    prompts = [system_prompt(g, words) for g in range(groups)]
    return [
        (g, [{"role": "system", "content": prompts[g]},
             {"role": "user", "content": f"Question {turn} from visitor {g}: when is it open?"}])
        for turn in range(per_group) for g in range(groups)
    ]  # fmt: skip


async def ask(http: httpx.AsyncClient, messages: Messages) -> tuple[float, str, str]:
    """(seconds to the first token, node that served, the answer's text) of one streamed
    request."""
    body = {"model": SMALL_MODEL_NAME, "messages": messages, "max_tokens": 8, "stream": True}
    started = time.perf_counter()
    first = None
    text = []
    async with http.stream("POST", "/v1/chat/completions", json=body) as answer:
        answer.raise_for_status()
        node = answer.headers.get("x-llmlb-node", "?")
        async for line in answer.aiter_lines():
            if line.startswith("data: {") and '"content":"' in line:
                first = first if first is not None else time.perf_counter() - started
                text.append(line.split('"content":"', 1)[1].split('"', 1)[0])
    elapsed = first if first is not None else time.perf_counter() - started
    return elapsed, node, "".join(text).replace("\\n", " ") or "(no text)"


Outcome = tuple[list[float], Counter[str], float]  # times to first token, per node, wall
Drive = Callable[[str, dict[str, str]], Coroutine[Any, Any, Outcome]]  # (url, headers)


def shared_prompts(requests: list[tuple[int, Messages]]) -> Drive:
    """Sends ``requests`` in order, ``IN_FLIGHT`` at a time; times to first token in that
    order."""

    async def drive(url: str, headers: dict[str, str]) -> Outcome:
        queue: asyncio.Queue[tuple[int, Messages]] = asyncio.Queue()
        for index, (_, messages) in enumerate(requests):
            queue.put_nowait((index, messages))
        firsts = [0.0] * len(requests)
        nodes: Counter[str] = Counter()

        async def worker() -> None:
            async with httpx.AsyncClient(base_url=url, headers=headers, timeout=600) as http:
                while not queue.empty():
                    index, messages = queue.get_nowait()
                    firsts[index], node, _ = await ask(http, messages)
                    nodes[node] += 1

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(IN_FLIGHT)))
        return firsts, nodes, time.perf_counter() - started

    return drive


def opening(conversation: int, words: int) -> str:
    chance = random.Random(1000 + conversation)
    log = " ".join(chance.choice(WORDS) for _ in range(words))
    return f"Voyage {conversation}. My logbook so far: {log}. Question 0: where are we?"


def conversations(count: int, turns: int, words: int, shared_words: int = 0) -> Drive:
    """``count`` conversations, all under way at once, ``turns`` turns each, ``IN_FLIGHT``
    requests at a time (first come, first served): each turn sends the conversation so far,
    answers included, plus a question. Times to first token turn by turn (conversation 0's
    turn 0, conversation 1's turn 0, ...)."""

    navigator = "You are a ship's navigator." + (
        f" Standing orders: {system_prompt(-1, shared_words)}" if shared_words else ""
    )

    async def drive(url: str, headers: dict[str, str]) -> Outcome:
        gate = asyncio.Semaphore(IN_FLIGHT)
        firsts = [0.0] * (count * turns)
        nodes: Counter[str] = Counter()

        async def converse(index: int, http: httpx.AsyncClient) -> None:
            messages = [{"role": "system", "content": navigator},
                        {"role": "user", "content": opening(index, words)}]  # fmt: skip
            for turn in range(turns):
                async with gate:
                    first, node, text = await ask(http, messages)
                firsts[turn * count + index] = first
                nodes[node] += 1
                question = f"Question {turn + 1}: and then?"
                messages += [{"role": "assistant", "content": text},
                             {"role": "user", "content": question}]  # fmt: skip

        started = time.perf_counter()
        limits = httpx.Limits(max_connections=count)
        async with httpx.AsyncClient(base_url=url, headers=headers, timeout=600,
                                     limits=limits) as http:  # fmt: skip
            await asyncio.gather(*(converse(i, http) for i in range(count)))
        return firsts, nodes, time.perf_counter() - started

    return drive


def one_side(side: str, drive: Drive, home: Path, sglang: Path | None) -> Outcome:
    """Two fresh nodes behind a fresh router with ``side``'s strategy (for SGLang's side, the
    router only admits the nodes and the gateway is what the clients call), then ``drive``."""
    home.mkdir()
    (home / "router").mkdir()
    strategy = side if side in STRATEGIES else "load"
    router = start_router(home / "router", home, "--no-auth", "--allow-cpu-nodes",
                          "--log-level", "warning", port=free_port(),
                          env={"LLMLB_BALANCER": strategy,
                               "LLMLB_AUTO_DISTRIBUTE": "none"})  # fmt: skip
    nodes = []
    gateway = None
    try:
        for name in ("node-a", "node-b"):
            install_small_model(ModelStore(home / name / "models"))
            nodes.append(start_fleet_node(home / name, home, router, home / "router", name,
                                          "--threads", "1", "--parallel", "2",
                                          "--log-level", "warning"))  # fmt: skip
        token = node_token(home / "router")
        with httpx.Client(base_url=router.url, timeout=120) as http:

            def both_ready() -> bool:
                listed = http.get("/api/nodes").json()["data"]
                return sum(n["status"] == "ready" for n in listed) == 2  # type: ignore[no-any-return]

            wait_until(both_ready, timeout=120)
            for node in nodes:  # load the model on both, outside the measurement
                with node.client() as direct:
                    warm = {"model": SMALL_MODEL_NAME, "max_tokens": 1,
                            "messages": [{"role": "user", "content": "hi"}]}  # fmt: skip
                    bearer = {"authorization": f"Bearer {token}"}
                    answer = direct.post("/v1/chat/completions", headers=bearer, json=warm)
                    answer.raise_for_status()
        url, headers = router.url, {}
        if sglang is not None:  # the gateway passes the client's token on to the nodes
            port = free_port()
            gateway = peers.start_sglang(sglang, [n.url for n in nodes], port, home,
                                         "cache_aware", api_key=token)  # fmt: skip
            url, headers = f"http://127.0.0.1:{port}", {"authorization": f"Bearer {token}"}
        return asyncio.run(drive(url, headers))
    finally:
        if gateway is not None:
            stop(gateway)
        for node in nodes:
            node.stop()
        router.stop()


def run(report: Report, quick: bool, only: tuple[str, ...] = ()) -> None:
    """``only``: the workloads to run (their titles' first words), all when empty."""
    sglang = peers.install_sglang(CACHE / "sglang-install.log") if not quick else None
    sides = ["round_robin", "prefix_affinity"] if quick else [*STRATEGIES]  # quick: the pair
    if sglang is not None:
        sides.append(SGLANG)
    # An odd number of groups and of conversations: with an even one, round robin's
    # alternation would happen to send every group (each conversation's every turn) to one node.
    groups, per_group, words = (3, 2, 150) if quick else (5, 4, 700)
    count, turns, log_words, shared_words = (3, 2, 150, 250) if quick else (9, 4, 300, 500)
    workloads: dict[str, tuple[Drive, str, int]] = {
        "shared system prompts": (
            shared_prompts(workload(groups, per_group, words)),
            f"{groups} groups × {per_group} requests, interleaved, {IN_FLIGHT} in flight; each "
            f"group shares a system prompt of about {words * 1.6:.0f} tokens and asks "
            f"different questions; 8 tokens each, streamed.",
            groups,
        ),
        "growing conversations": (
            conversations(count, turns, log_words),
            f"{count} conversations × {turns} turns, all under way at once, {IN_FLIGHT} requests "
            f"in flight (first come, first served); each opens with about "
            f"{log_words * 1.6:.0f} tokens of its own and each turn repeats the conversation so "
            f"far (the node's answers included) and adds a question; 8 tokens each, streamed.",
            count,
        ),
        "conversations behind one system prompt": (
            conversations(count, turns, log_words // 2, shared_words),
            f"As above, but every conversation opens behind the same system prompt of about "
            f"{shared_words * 1.6:.0f} tokens (agents: one prompt and tool set, many sessions) "
            f"and then about {log_words * 0.8:.0f} tokens of its own.",
            count,
        ),
    }
    # LLMLB_BENCH_ROUTING_ROUNDS=n: each side n times (the sides alternating), and the run
    # of median mean TTFT reported for each, with every run's figures under the table.
    rounds = int(os.environ.get("LLMLB_BENCH_ROUTING_ROUNDS", "1"))
    with tempfile.TemporaryDirectory(prefix="llmlb-bench-routing-") as scratch:
        for title, (drive, what, firsts_count) in workloads.items():
            if only and title.split()[0] not in only:
                continue
            runs: dict[str, list[Outcome]] = {side: [] for side in sides}
            for number in range(rounds):
                for side in sides:
                    folder = Path(scratch) / f"{title.split()[0]}-{side.replace(' ', '-')}-{number}"
                    runs[side].append(one_side(side, drive, folder,
                                               sglang if side == SGLANG else None))  # fmt: skip
            results = {side: _median_run(outcomes) for side, outcomes in runs.items()}
            _report(report, title, what, results, firsts_count, sglang is not None, quick)
            if rounds > 1:
                report.add(f"{rounds} runs of each side, mean TTFT (s) / requests/s: " + "; ".join(
                    f"{side} " + ", ".join(f"{statistics.fmean(f):.3f} / {len(f) / w:.2f}"
                                           for f, _, w in outcomes)
                    for side, outcomes in runs.items()
                ) + ". The table shows each side's run of median mean TTFT.")  # fmt: skip


def _median_run(outcomes: list[Outcome]) -> Outcome:
    ordered = sorted(outcomes, key=lambda outcome: statistics.fmean(outcome[0]))
    return ordered[(len(ordered) - 1) // 2]


def _report(report: Report, title: str, what: str, results: dict[str, Outcome],
            first_round: int, with_sglang: bool, quick: bool) -> None:  # fmt: skip
    report.section(
        f"Routing quality: {title}",
        f"Two real nodes ({SMALL_MODEL_NAME}, 2 slots and 1 thread each) behind a router, fresh "
        f"for each side; `{SGLANG}` is SGLang's gateway (`sglang-router` "
        f"{peers.SGLANG_VERSION}, `--policy cache_aware`, its defaults) in front of the same two "
        f"nodes. {what}"
        + ("" if with_sglang else " SGLang's gateway was not measured in this run"
           + (" (`--quick` skips it)." if quick else " (its install failed).")),
    )  # fmt: skip
    base = statistics.fmean(results["round_robin"][0])
    base_rate = len(results["round_robin"][0]) / results["round_robin"][2]
    rows = []
    for side, (firsts, nodes, wall) in results.items():
        ordered = sorted(firsts)
        rows.append([side, statistics.fmean(firsts), ordered[int(0.9 * (len(ordered) - 1))],
                     base / statistics.fmean(firsts), wall, len(firsts) / wall,
                     len(firsts) / wall / base_rate,
                     " / ".join(f"{n} {c}" for n, c in sorted(nodes.items()) if n != "?")
                     or "–"])  # fmt: skip
    report.table(["side", "mean TTFT (s)", "p90 TTFT (s)", "round robin ÷ this (mean)",
                  "wall (s)", "requests/s", "÷ round robin (req/s)", "requests per node"],
                 rows)  # fmt: skip
    # What no router can beat: each group's (conversation's) first request computes its prompt
    # (a miss) wherever it goes, and at best every later one finds all but its newest part
    # cached (a hit): the median of the first round against the median of the later rounds'
    # fastest side.
    total = len(results["round_robin"][0])
    if total <= first_round:
        return
    misses = [t for firsts, _, _ in results.values() for t in firsts[:first_round]]
    later = min((statistics.median(f[first_round:]) for f, _, _ in results.values()))
    miss = statistics.median(misses)
    best = (miss * first_round + later * (total - first_round)) / total
    report.add(
        f"The most any side could cut against this round robin run: {base / best:.2f}× (every "
        f"first request a miss, {miss:.2f} s, the median of the first round; every later one as "
        f"fast as the fastest side's median later request, {later:.2f} s). "
        + ", ".join(f"{side} reached {base / statistics.fmean(r[0]):.2f}×"
                    for side, r in results.items() if side != "round_robin") + "."
    )  # fmt: skip


if __name__ == "__main__":
    from bench.__main__ import main

    main(["routing", *sys.argv[1:]])
