"""Routing quality: which node a request goes to decides whether its prompt is computed again.

Two real nodes (one thread each, so they do not share a core) behind a real router, started
fresh for each strategy so that no strategy inherits another's caches. The workload: groups of
requests that share a long system prompt (each group its own) and ask different questions,
the groups interleaved (as conversations come back), two requests in flight at a time.
Reported per strategy: mean and p90 time to the first token (streamed), wall time, requests/s,
and how the requests split over the nodes.

    .venv/bin/python -m bench routing [--quick]
"""

from __future__ import annotations

import asyncio
import random
import statistics
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import httpx

from bench.procs import ROOT
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
WORDS = ["harbour", "ferry", "ticket", "schedule", "weather", "tide", "captain", "cargo",
         "passenger", "dock", "lighthouse", "storm", "anchor", "rope", "deck", "cabin"]  # fmt: skip


def system_prompt(group: int, words: int) -> str:
    chance = random.Random(group)
    text = " ".join(chance.choice(WORDS) for _ in range(words))
    return f"You are the assistant of harbour office {group}. Notes: {text}."


def workload(groups: int, per_group: int, words: int) -> list[tuple[int, list[dict[str, str]]]]:
    """(group, messages) in the order they are sent: the groups interleaved."""
    prompts = [system_prompt(g, words) for g in range(groups)]
    return [
        (g, [{"role": "system", "content": prompts[g]},
             {"role": "user", "content": f"Question {turn} from visitor {g}: when is it open?"}])
        for turn in range(per_group) for g in range(groups)
    ]  # fmt: skip


async def ask(http: httpx.AsyncClient, messages: list[dict[str, str]]) -> tuple[float, str]:
    """(seconds to the first token, node that served) of one streamed request."""
    body = {"model": SMALL_MODEL_NAME, "messages": messages, "max_tokens": 8, "stream": True}
    started = time.perf_counter()
    first = None
    async with http.stream("POST", "/v1/chat/completions", json=body) as answer:
        answer.raise_for_status()
        node = answer.headers.get("x-llmlb-node", "?")
        async for line in answer.aiter_lines():
            if first is None and line.startswith("data: {") and '"content":"' in line:
                first = time.perf_counter() - started
    return (first if first is not None else time.perf_counter() - started), node


Outcome = tuple[list[float], Counter[str], float]  # times to first token, per node, wall


async def drive(url: str, requests: list[tuple[int, list[dict[str, str]]]]) -> Outcome:
    """Times to first token in the order the requests were sent, requests per node, wall."""
    queue: asyncio.Queue[tuple[int, list[dict[str, str]]]] = asyncio.Queue()
    for index, (_, messages) in enumerate(requests):
        queue.put_nowait((index, messages))
    firsts = [0.0] * len(requests)
    nodes: Counter[str] = Counter()

    async def worker() -> None:
        async with httpx.AsyncClient(base_url=url, timeout=600) as http:
            while not queue.empty():
                index, messages = queue.get_nowait()
                firsts[index], node = await ask(http, messages)
                nodes[node] += 1

    started = time.perf_counter()
    await asyncio.gather(worker(), worker())
    return firsts, nodes, time.perf_counter() - started


def one_strategy(
    strategy: str, requests: list[tuple[int, list[dict[str, str]]]], home: Path
) -> Outcome:
    home.mkdir()
    (home / "router").mkdir()
    router = start_router(home / "router", home, "--no-auth", "--allow-cpu-nodes",
                          "--log-level", "warning", port=free_port(),
                          env={"LLMLB_BALANCER": strategy,
                               "LLMLB_AUTO_DISTRIBUTE": "none"})  # fmt: skip
    nodes = []
    try:
        for name in ("node-a", "node-b"):
            install_small_model(ModelStore(home / name / "models"))
            nodes.append(start_fleet_node(home / name, home, router, home / "router", name,
                                          "--threads", "1", "--parallel", "2",
                                          "--log-level", "warning"))  # fmt: skip
        with httpx.Client(base_url=router.url, timeout=120) as http:

            def both_ready() -> bool:
                listed = http.get("/api/nodes").json()["data"]
                return sum(n["status"] == "ready" for n in listed) == 2  # type: ignore[no-any-return]

            wait_until(both_ready, timeout=120)
            token = {"authorization": f"Bearer {node_token(home / 'router')}"}
            for node in nodes:  # load the model on both, outside the measurement
                with node.client() as direct:
                    warm = {"model": SMALL_MODEL_NAME, "max_tokens": 1,
                            "messages": [{"role": "user", "content": "hi"}]}  # fmt: skip
                    direct.post("/v1/chat/completions", headers=token, json=warm).raise_for_status()
        return asyncio.run(drive(router.url, requests))
    finally:
        for node in nodes:
            node.stop()
        router.stop()


def run(report: Report, quick: bool) -> None:
    # An odd number of groups: with an even one, round robin's alternation would happen to
    # send every group to one node.
    groups, per_group, words = (3, 2, 150) if quick else (5, 4, 700)
    requests = workload(groups, per_group, words)
    results = {}
    strategies = ("round_robin", "prefix_affinity") if quick else STRATEGIES  # quick: the pair
    with tempfile.TemporaryDirectory(prefix="llmlb-bench-routing-") as scratch:
        for strategy in strategies:
            results[strategy] = one_strategy(strategy, requests, Path(scratch) / strategy)
    report.section(
        "Routing quality",
        f"Two real nodes ({SMALL_MODEL_NAME}, 2 slots and 1 thread each) behind a router, fresh "
        f"for each strategy. {groups} groups × {per_group} requests, interleaved, 2 in flight; "
        f"each group shares a system prompt of about {words * 1.6:.0f} tokens and asks "
        f"different questions; 8 tokens each, streamed.",
    )
    base = statistics.fmean(results["round_robin"][0])
    rows = []
    for strategy, (firsts, nodes, wall) in results.items():
        ordered = sorted(firsts)
        rows.append([strategy, statistics.fmean(firsts), ordered[int(0.9 * (len(ordered) - 1))],
                     base / statistics.fmean(firsts), wall, len(firsts) / wall,
                     " / ".join(f"{n} {c}" for n, c in sorted(nodes.items()))])  # fmt: skip
    report.table(["strategy", "mean TTFT (s)", "p90 TTFT (s)", "round robin ÷ this (mean)",
                  "wall (s)", "requests/s", "requests per node"], rows)  # fmt: skip
    # What no router can beat here: each group's first request computes its prompt (a miss)
    # wherever it goes, and at best every later one finds it cached (a hit). Round robin's
    # last round is all hits once every group has been to both nodes (from the third round).
    if per_group < 3:
        return
    misses = [t for firsts, _, _ in results.values() for t in firsts[:groups]]
    hits = results["round_robin"][0][-groups:]
    miss, hit = statistics.median(misses), statistics.median(hits)
    best = (miss + (per_group - 1) * hit) / per_group
    report.add(
        f"The most any strategy could cut against this round robin run: {base / best:.2f}× "
        f"(every group's first request a miss, {miss:.2f} s, the median of the first round; "
        f"every later one a hit, {hit:.2f} s, the median of round robin's last round). "
        f"prefix_affinity reached {base / statistics.fmean(results['prefix_affinity'][0]):.2f}×."
    )


if __name__ == "__main__":
    from bench.__main__ import main

    main(["routing", *sys.argv[1:]])
