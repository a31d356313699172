"""What the router adds: requests/s and latency through the router vs calling the node directly.

The upstream is a minimal fast node (tests/fakenode.py: answers at once, in the node's wire
format) in a process of its own, registered with a real router (``llmlb serve``) in another.
The load generator (this process) runs the same load against both, side by side, at
concurrency 1, 16 and 64, non-streaming (latency to the whole answer) and streaming (time to
the first chunk). It prints requests/s, p50/p99 and the ratios router/direct. All three
processes share this machine's cores, so absolute numbers are low; the ratios are the point.

    .venv/bin/python bench/router_overhead.py [--seconds 3]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.support import node_token, start_router  # noqa: E402

UPSTREAM = """
import sys, time
sys.path.insert(0, {root!r})
from tests.fakenode import Behaviour, FakeNode
node = FakeNode("bench-upstream").start()
node.behaviour = Behaviour(chunks=5, chunk_delay=0.0)
node.join({router!r}, {token!r}, interval=1.0)
print("upstream listening on", node.url, flush=True)
while True:
    time.sleep(3600)
"""
BODY = {"model": "fake-model", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 8}


@dataclass
class Result:
    requests_per_second: float
    p50_ms: float
    p99_ms: float


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def run_load(url: str, concurrency: int, stream: bool, seconds: float) -> Result:
    latencies: list[float] = []
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    body = {**BODY, "stream": stream}
    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=30) as client:

        async def one() -> float:
            started = time.perf_counter()
            if not stream:
                response = await client.post("/v1/chat/completions", json=body)
                response.raise_for_status()
                return time.perf_counter() - started
            async with client.stream("POST", "/v1/chat/completions", json=body) as response:
                response.raise_for_status()
                first = None
                async for _ in response.aiter_raw():
                    first = first or time.perf_counter() - started
                return first or 0.0

        for _ in range(concurrency):  # warm the connection pool
            await one()
        deadline = time.perf_counter() + seconds
        done = 0

        async def worker() -> None:
            nonlocal done
            while time.perf_counter() < deadline:
                latencies.append(await one())
                done += 1

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        elapsed = time.perf_counter() - started
    return Result(
        done / elapsed, percentile(latencies, 0.5) * 1000, percentile(latencies, 0.99) * 1000
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=3.0, help="per measurement")
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds; medians")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="llmlb-bench-") as scratch:
        home = Path(scratch)
        router = start_router(home, home, "--no-auth", "--log-level", "warning",
                              env={"LLMLB_NODE_MAX_CONCURRENCY": "1000"})  # fmt: skip
        code = UPSTREAM.format(root=str(ROOT), router=router.url, token=node_token(home))
        upstream = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE,
                                    stderr=(home / "upstream.log").open("wb"))  # fmt: skip
        assert upstream.stdout is not None
        direct_url = upstream.stdout.readline().decode().rsplit(" ", 1)[1].strip()
        try:
            time.sleep(0.5)
            print(f"{args.seconds:.0f} s per run, median of {args.rounds} alternating rounds")
            print(f"{'mode':>10} {'conc':>4} | {'direct rps':>10} {'router rps':>10} "
                  f"{'ratio':>6} | {'p50 direct':>10} {'p50 router':>10} {'added':>7} | "
                  f"{'p99 direct':>10} {'p99 router':>10}")  # fmt: skip
            for stream in (False, True):
                for concurrency in (1, 16, 64):
                    runs: dict[str, list[Result]] = {"direct": [], "router": []}
                    for index in range(args.rounds):
                        order = [("direct", direct_url), ("router", router.url)]
                        for side, url in order if index % 2 == 0 else order[::-1]:
                            runs[side].append(
                                asyncio.run(run_load(url, concurrency, stream, args.seconds))
                            )
                    d = {k: statistics.median(getattr(r, k) for r in runs["direct"])
                         for k in ("requests_per_second", "p50_ms", "p99_ms")}  # fmt: skip
                    r = {k: statistics.median(getattr(x, k) for x in runs["router"])
                         for k in ("requests_per_second", "p50_ms", "p99_ms")}  # fmt: skip
                    mode = "stream/ttfc" if stream else "whole"
                    print(
                        f"{mode:>10} {concurrency:>4} | {d['requests_per_second']:>10.0f} "
                        f"{r['requests_per_second']:>10.0f} "
                        f"{r['requests_per_second'] / d['requests_per_second']:>6.2f} | "
                        f"{d['p50_ms']:>10.2f} {r['p50_ms']:>10.2f} "
                        f"{r['p50_ms'] - d['p50_ms']:>7.2f} | "
                        f"{d['p99_ms']:>10.2f} {r['p99_ms']:>10.2f}"
                    )
        finally:
            upstream.kill()
            upstream.wait()
            router.stop()


if __name__ == "__main__":
    main()
