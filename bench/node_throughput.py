"""Node throughput: generated tokens/s with the small model at 1-16 concurrent streams, through
llmlb's node, through xllamacpp's embedded llama.cpp server directly, and through llama.cpp's own
``llama-server`` built on this machine (``bench/native.py``).

All serve the same model with the same engine settings (8 slots, 4096 context, one KV cache for
all slots, every core). With ``make native`` done, a fourth side is llmlb's node running on the
engine built for this CPU (``$LLMLB_BENCH_CACHE/native-venv``, made by ``make native``-like
steps in ``bench/native.py``). Only one side generates at a time; the order rotates each round.

    .venv/bin/python -m bench node [--quick]
"""

from __future__ import annotations

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

from bench import native
from bench.procs import ROOT, stop
from bench.report import Report
from llmlb.models.smallmodel import SMALL_MODEL_NAME, install_small_model
from llmlb.models.store import ModelStore

sys.path.insert(0, str(ROOT))
from tests.support import Process, free_port, start_node

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
        "model": SMALL_MODEL_NAME, "prompt": "Once upon a time", "max_tokens": tokens,
        "n_predict": tokens, "ignore_eos": True, "temperature": 0.8, "stream": True,
        "stream_options": {"include_usage": True},
    }  # fmt: skip
    pieces = usage = 0
    async with client.stream("POST", url + "/v1/completions", json=body) as response:
        response.raise_for_status()
        async for line in response.aiter_lines():
            if not line.startswith("data: {"):
                continue
            event = orjson.loads(line[6:])
            if event.get("usage"):
                usage = int(event["usage"]["completion_tokens"])
            if any(c.get("text") for c in event.get("choices") or []):
                pieces += 1
    return usage or pieces


async def aggregate_tps(url: str, concurrency: int, tokens: int) -> float:
    # A fresh connection per stream: llama.cpp's HTTP server closes reused connections early,
    # and on loopback a connect costs well under a millisecond of a seconds-long stream.
    limits = httpx.Limits(max_connections=concurrency + 4, max_keepalive_connections=0)
    async with httpx.AsyncClient(timeout=600, limits=limits) as client:
        await one_stream(client, url, 4)  # warm: model loaded, connection open
        started = time.perf_counter()
        streams = (one_stream(client, url, tokens) for _ in range(concurrency))
        counts = await asyncio.gather(*streams)
        elapsed = time.perf_counter() - started
    return sum(counts) / elapsed


def _wait_healthy(url: str, process: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if process.poll() is not None:
            break
        try:
            if httpx.get(url + "/health", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"{url} did not become healthy: {log.read_text()[-2000:]}")


def start_direct(model: Path, threads: int, log: Path) -> tuple[subprocess.Popen[bytes], str]:
    code = DIRECT_SERVER.format(name=SMALL_MODEL_NAME, path=model, ctx=CTX, parallel=PARALLEL,
                                threads=threads)  # fmt: skip
    process = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE,
                               stderr=log.open("wb"))  # fmt: skip
    assert process.stdout is not None
    line = process.stdout.readline().decode()
    if "listening on" not in line:
        raise RuntimeError(f"direct server did not start: {log.read_text()[-2000:]}")
    return process, line.rsplit(" ", 1)[1].strip()


def start_native(
    binary: Path, model: Path, threads: int, log: Path
) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    process = subprocess.Popen(
        [str(binary), "-m", str(model), "--host", "127.0.0.1", "--port", str(port),
         "--ctx-size", str(CTX), "--parallel", str(PARALLEL), "--threads", str(threads),
         "--threads-batch", str(threads), "--kv-unified", "--cont-batching", "--no-webui"],
        stdout=log.open("wb"), stderr=subprocess.STDOUT,
        env={**os.environ, "LD_LIBRARY_PATH": str(binary.parent)},
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    _wait_healthy(url, process, log)
    return process, url


def run(report: Report, quick: bool) -> None:
    concurrencies = (1, 4) if quick else (1, 4, 8, 16)
    tokens, rounds = (32, 1) if quick else (64, 2)
    threads = os.cpu_count() or 1
    with tempfile.TemporaryDirectory(prefix="llmlb-bench-node-") as scratch:
        home = Path(scratch)
        model = install_small_model(ModelStore(home / "models"))
        node_args = ("--parallel", str(PARALLEL), "--ctx-size", str(CTX), "--threads",
                     str(threads), "--log-level", "warning")  # fmt: skip
        node: Process = start_node(home, home, *node_args)
        direct, direct_url = start_direct(model.path, threads, home / "direct.log")
        sides = {"llmlb node": node.url, "xllamacpp server": direct_url}
        others: list[subprocess.Popen[bytes]] = [direct]
        binary = native.llama_server(home / "native-build.log", build=not quick)
        native_node = None
        try:
            if binary is not None:
                process, url = start_native(binary, model.path, threads, home / "native.log")
                others.append(process)
                sides["llama-server (native build)"] = url
            python = native.native_python(home / "native-venv.log")
            if python is not None:
                native_node = Process(
                    ["node", "--host", "127.0.0.1", "--port", "0", "--allow-cpu", *node_args],
                    home, home / "native-node.log", {}, python=str(python),
                )  # fmt: skip
                sides["llmlb node (make native)"] = native_node.url
            names = list(sides)
            results: dict[tuple[str, int], list[float]] = {}
            for concurrency in concurrencies:
                for index in range(rounds):
                    order = names[index % len(names) :] + names[: index % len(names)]
                    for side in order:
                        tps = asyncio.run(aggregate_tps(sides[side], concurrency, tokens))
                        results.setdefault((side, concurrency), []).append(tps)
        finally:
            node.stop()
            if native_node is not None:
                native_node.stop()
            for process in others:
                stop(process)
    _report(report, names, results, concurrencies, tokens, rounds, threads, binary is not None)


def _report(report: Report, names: list[str], results: dict[tuple[str, int], list[float]],
            concurrencies: tuple[int, ...], tokens: int, rounds: int, threads: int,
            built: bool) -> None:  # fmt: skip
    median = {k: statistics.median(v) for k, v in results.items()}
    baseline = "llama-server (native build)" if built else "xllamacpp server"
    report.section(
        "Node throughput",
        f"Aggregate generated tokens/s, {SMALL_MODEL_NAME}, {tokens} tokens a stream "
        f"(`ignore_eos`), completions, {PARALLEL} slots, {CTX} context, {threads} threads; "
        f"median of {rounds} rounds whose side order rotates. Ratios are to {baseline}."
        + ("" if built else " llama.cpp's own server was not built in this run (`--quick` "
           "does not build it)."),
    )  # fmt: skip
    rows = []
    for concurrency in concurrencies:
        base = median[(baseline, concurrency)]
        for side in names:
            value = median[(side, concurrency)]
            rows.append([concurrency, side, value, value / base])
    report.table(["streams", "side", "tokens/s", f"÷ {baseline}"], rows)
    gains = ", ".join(
        f"{side} {median[(side, concurrencies[-1])] / median[(side, concurrencies[0])]:.2f}×"
        for side in names
    )
    report.add(f"Gain from {concurrencies[0]} to {concurrencies[-1]} streams: {gains}.")
    report.chart(
        "node-throughput", "Generated tokens/s", "concurrent streams", "tokens/s",
        {side: (concurrencies, [median[(side, c)] for c in concurrencies]) for side in names},
    )  # fmt: skip


if __name__ == "__main__":
    from bench.__main__ import main

    main(["node", *sys.argv[1:]])
