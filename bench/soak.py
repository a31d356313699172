"""Soak: minutes of mixed load through a real router and a real node, with clients that leave.

Six clients loop: half ask for whole answers, half for streams, and 30% of the streams are
dropped after three lines (the client closes the connection). The report gives errors (any
answer that is not a 200, and any stream that ends without ``[DONE]``, except those the client
dropped), the history's row count against the requests sent, and the resident memory of router
and node after a warm-up and at the end.

The node's prompt cache (llama.cpp's host-memory copies of finished prompts) is the one thing
in it that is meant to grow: it fills to its bound and stays there. With the default 512 MiB it
fills over about ten minutes of this load, so the soak gives the node a 64 MiB cache, which
fills within the warm-up: growth after it is then growth that should not be there. (With
``--prompt-cache-mib 0`` the node's memory was flat, 466 -> 467 MiB over 150 s; with 512 it
grew 0.7 MiB/s.)

    .venv/bin/python -m bench soak [--quick]

``LLMLB_SOAK_SECONDS`` sets the length, ``LLMLB_SOAK_NODE_ARGS`` adds arguments to the node
(for example ``--prompt-cache-mib 0``, to see what the prompt cache adds to the growth).
"""

from __future__ import annotations

import asyncio
import os
import random
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import httpx

from bench.procs import ROOT, rss_mib
from bench.report import Report
from llmlb.models.smallmodel import SMALL_MODEL_NAME, install_small_model
from llmlb.models.store import ModelStore

sys.path.insert(0, str(ROOT))
from tests.support import start_fleet_node, start_router, wait_until

CLIENTS = 6
PROMPT_CACHE_MIB = 64
SAMPLE_SECONDS = 30.0
DROP_SHARE = 0.3
QUESTION = [{"role": "user", "content": "Name a colour of the sky."}]


class Tally:
    def __init__(self) -> None:
        self.sent = 0
        self.dropped = 0
        self.errors: Counter[str] = Counter()


async def client(index: int, url: str, deadline: float, tally: Tally) -> None:
    chance = random.Random(index)
    streaming = index % 2 == 1
    async with httpx.AsyncClient(base_url=url, timeout=120) as http:
        while time.monotonic() < deadline:
            body = {"model": SMALL_MODEL_NAME, "messages": QUESTION,
                    "max_tokens": chance.randint(4, 24), "stream": streaming}  # fmt: skip
            tally.sent += 1
            try:
                if not streaming:
                    answer = await http.post("/v1/chat/completions", json=body)
                    if answer.status_code != 200:
                        tally.errors[f"{answer.status_code}: {answer.text[:120]}"] += 1
                    continue
                drop = chance.random() < DROP_SHARE
                async with http.stream("POST", "/v1/chat/completions", json=body) as answer:
                    if answer.status_code != 200:
                        await answer.aread()
                        tally.errors[f"{answer.status_code}: {answer.text[:120]}"] += 1
                        continue
                    lines, done = 0, False
                    async for line in answer.aiter_lines():
                        if line.startswith("data: "):
                            lines += 1
                            if '"error"' in line:
                                tally.errors[f"stream error event: {line[:120]}"] += 1
                            done = done or line == "data: [DONE]"
                        if drop and lines >= 3:
                            break
                    if drop and lines >= 3:
                        tally.dropped += 1
                    elif not done:
                        tally.errors["stream ended without [DONE]"] += 1
            except httpx.HTTPError as exc:
                tally.errors[f"{type(exc).__name__}: {exc}"[:160]] += 1


def run(report: Report, quick: bool) -> None:
    seconds, warmup = (20.0, 5.0) if quick else (600.0, 120.0)
    seconds = float(os.environ.get("LLMLB_SOAK_SECONDS", seconds))
    node_args = os.environ.get("LLMLB_SOAK_NODE_ARGS", "").split()
    with tempfile.TemporaryDirectory(prefix="llmlb-bench-soak-") as scratch:
        home = Path(scratch)
        (home / "router").mkdir()
        install_small_model(ModelStore(home / "node" / "models"))
        router = start_router(home / "router", home, "--no-auth", "--log-level", "warning",
                              "--allow-cpu-nodes")  # fmt: skip
        node = start_fleet_node(home / "node", home, router, home / "router", "soak-node",
                                "--log-level", "warning", "--parallel", "4", "--prompt-cache-mib",
                                str(PROMPT_CACHE_MIB), *node_args)  # fmt: skip
        try:
            with httpx.Client(base_url=router.url, timeout=120) as http:
                ask = {"model": SMALL_MODEL_NAME, "messages": QUESTION, "max_tokens": 2}
                wait_until(lambda: http.post("/v1/chat/completions", json=ask).status_code == 200,
                           timeout=120, step=0.5)  # fmt: skip
                before = http.get("/api/requests", params={"limit": 1}).json()["total"]
            tally = Tally()
            started = time.monotonic()
            memory: dict[str, list[float]] = {"router": [], "node": []}
            curve: list[tuple[float, float]] = []

            async def drive() -> None:
                deadline = started + seconds
                jobs = [asyncio.create_task(client(i, router.url, deadline, tally))
                        for i in range(CLIENTS)]  # fmt: skip
                await asyncio.sleep(warmup)
                memory["router"].append(rss_mib(router.proc.pid))
                memory["node"].append(rss_mib(node.proc.pid))
                while not all(job.done() for job in jobs):  # the node's RSS over time
                    await asyncio.wait(jobs, timeout=SAMPLE_SECONDS)
                    curve.append((time.monotonic() - started, rss_mib(node.proc.pid)))
                await asyncio.gather(*jobs)

            asyncio.run(drive())
            elapsed = time.monotonic() - started
            memory["router"].append(rss_mib(router.proc.pid))
            memory["node"].append(rss_mib(node.proc.pid))
            with httpx.Client(base_url=router.url, timeout=120) as http:
                rows = http.get("/api/requests", params={"limit": 1}).json()["total"] - before
        finally:
            node.stop()
            router.stop()
    errors = sum(tally.errors.values())
    report.section(
        "Soak",
        f"{elapsed:.0f} s of load through a real router and node ({SMALL_MODEL_NAME}, 4 slots, "
        f"a {PROMPT_CACHE_MIB} MiB prompt cache, which fills during the warm-up): {CLIENTS} "
        f"clients, half streaming, {DROP_SHARE:.0%} of streams dropped after three lines. "
        f"Memory after a {warmup:.0f} s warm-up and at the end.",
    )
    growth = {k: (v[1] - v[0]) / v[0] for k, v in memory.items()}
    report.table(
        ["requests sent", "streams dropped", "errors", "history rows", "router RSS (MiB)",
         "node RSS (MiB)"],
        [[tally.sent, tally.dropped, errors, rows,
          f"{memory['router'][0]:.0f} → {memory['router'][1]:.0f} ({growth['router']:+.1%})",
          f"{memory['node'][0]:.0f} → {memory['node'][1]:.0f} ({growth['node']:+.1%})"]],
    )  # fmt: skip
    report.add("Node RSS over time (s: MiB): "
               + ", ".join(f"{t:.0f}: {m:.0f}" for t, m in curve))  # fmt: skip
    if tally.errors:
        report.add("Errors: " + "; ".join(f"{n}× {e}" for e, n in tally.errors.most_common()))


if __name__ == "__main__":
    from bench.__main__ import main

    main(["soak", *sys.argv[1:]])
