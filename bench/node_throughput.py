"""Aggregate generation throughput of an llmlb node vs llama.cpp's own server, side by side.

Both serve the small real model with the same engine settings (slots, context, threads). The
baseline is xllamacpp's embedded llama.cpp HTTP server, started directly in a process of its
own. Rounds alternate between the two (ABBA) so that both see the same machine noise; only one
is generating at any time. Prints the median aggregate tokens/s and the ratio node/direct at 1, 4
and 8 concurrent streams.

    .venv/bin/python bench/node_throughput.py [--tokens 64] [--rounds 3]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import orjson

from llmlb.models.smallmodel import SMALL_MODEL_NAME, install_small_model
from llmlb.models.store import ModelStore

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.support import Process, start_node  # noqa: E402

PARALLEL = 8
CTX = 4096

DIRECT_SERVER = """
import sys, time
from pathlib import Path
from llmlb.node.engine import EngineSpec, _engine_params
from llmlb.node.templates import BUILTIN
import xllamacpp
spec = EngineSpec(name="{name}", path=Path(r"{path}"), purpose="generate", memory_bytes=0,
                  template=BUILTIN["qa"], ctx_size={ctx}, parallel={parallel}, threads={threads})
params = _engine_params(spec)
params.api_keys = []  # the baseline is llama.cpp's server as people run it: open on loopback
server = xllamacpp.Server(params)
print("direct listening on", server.listening_address, flush=True)
while True:
    time.sleep(3600)
"""


async def one_stream(client: httpx.AsyncClient, url: str, tokens: int) -> int:
    body = {
        "model": SMALL_MODEL_NAME,
        "prompt": "Once upon a time",
        "max_tokens": tokens,
        "ignore_eos": True,
        "temperature": 0.8,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    generated = 0
    async with client.stream("POST", url + "/v1/completions", json=body) as response:
        response.raise_for_status()
        async for line in response.aiter_lines():
            if line.startswith("data: {") and '"usage"' in line:
                usage = orjson.loads(line[6:]).get("usage")
                if usage:
                    generated = int(usage["completion_tokens"])
    return generated


async def aggregate_tps(url: str, concurrency: int, tokens: int) -> float:
    # A fresh connection per stream: llama.cpp's HTTP server closes reused connections early,
    # and on loopback a connect costs well under a millisecond of a seconds-long stream.
    limits = httpx.Limits(max_connections=concurrency + 4, max_keepalive_connections=0)
    async with httpx.AsyncClient(timeout=300, limits=limits) as client:
        await one_stream(client, url, 4)  # warm: model loaded, connection open
        started = time.perf_counter()
        counts = await asyncio.gather(
            *(one_stream(client, url, tokens) for _ in range(concurrency))
        )
        elapsed = time.perf_counter() - started
    return sum(counts) / elapsed


def start_direct(model: Path, threads: int, log: Path) -> tuple[subprocess.Popen[bytes], str]:
    code = DIRECT_SERVER.format(
        name=SMALL_MODEL_NAME, path=model, ctx=CTX, parallel=PARALLEL, threads=threads
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=log.open("wb")
    )
    assert proc.stdout is not None
    line = proc.stdout.readline().decode()
    if "listening on" not in line:
        raise RuntimeError(f"direct server did not start: {log.read_text()[-2000:]}")
    return proc, line.rsplit(" ", 1)[1].strip()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=64, help="tokens per stream")
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds per setting")
    parser.add_argument("--concurrency", default="1,4,8")
    args = parser.parse_args()
    threads = os.cpu_count() or 1
    with tempfile.TemporaryDirectory(prefix="llmlb-bench-") as scratch:
        home = Path(scratch)
        model = install_small_model(ModelStore(home / "models"))
        node: Process = start_node(
            home, home, "--parallel", str(PARALLEL), "--ctx-size", str(CTX),
            "--threads", str(threads), "--log-level", "warning",
        )  # fmt: skip
        direct, direct_url = start_direct(model.path, threads, home / "direct.log")
        try:
            print(f"model {SMALL_MODEL_NAME}, {args.tokens} tokens/stream, {threads} threads, "
                  f"{PARALLEL} slots, median of {args.rounds} alternating rounds")  # fmt: skip
            print(f"{'streams':>7} {'node tok/s':>11} {'direct tok/s':>13} {'node/direct':>12}")
            for concurrency in (int(c) for c in args.concurrency.split(",")):
                node_runs: list[float] = []
                direct_runs: list[float] = []
                for round_index in range(args.rounds):
                    # ABBA order: neither side always runs first (caches, clocks, neighbours).
                    sides = [(node.url, node_runs), (direct_url, direct_runs)]
                    for url, runs in sides if round_index % 2 == 0 else sides[::-1]:
                        runs.append(asyncio.run(aggregate_tps(url, concurrency, args.tokens)))
                node_tps = statistics.median(node_runs)
                direct_tps = statistics.median(direct_runs)
                print(f"{concurrency:>7} {node_tps:>11.1f} {direct_tps:>13.1f} "
                      f"{node_tps / direct_tps:>12.3f}")  # fmt: skip
        finally:
            node.stop()
            direct.kill()
            direct.wait()


if __name__ == "__main__":
    main()
