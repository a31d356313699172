"""The control plane at scale: a thousand nodes registering and heartbeating while clients send
requests, against the same router with one node.

``bench.upstream --nodes N`` registers N simulated nodes (distinct names, distinct loopback
addresses 127.0.x.y, all answered by one fast fake) with a real router and heartbeats each
every 10 s, spread evenly. The report gives the time to register them all, the router's CPU
while only heartbeats arrive (and so its cost per heartbeat), and the latency a client sees
at concurrency 1 compared with a one-node fleet. Node selection is timed in this process:
``Proxy.choose`` over a registry of N nodes, the exact code a request runs.

    .venv/bin/python -m bench scale [--quick]
"""

from __future__ import annotations

import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path

import orjson

from bench.procs import ROOT, cpu_seconds, peak_rss_mib, start_upstream, stop
from bench.report import Report
from bench.router_overhead import BODY, load
from llmlb.common.serving import tune_gc
from llmlb.common.settings import RouterSettings
from llmlb.common.wire import Device, NodeLoad, RegisterRequest
from llmlb.router.fleet.registry import Registry
from llmlb.router.proxy.admission import Capacity
from llmlb.router.proxy.failover import Proxy
from llmlb.router.proxy.nodelink import NodeLinks
from llmlb.router.proxy.routing import Routed
from llmlb.router.storage.db import open_database
from llmlb.router.telemetry.metrics import RouterMetrics

sys.path.insert(0, str(ROOT))
from tests.support import node_token, start_router

HEARTBEAT_INTERVAL = 10.0


def _wait_registered(process: object, timeout: float, log: Path) -> float:
    """Seconds the simulator took to register its nodes (from its own line)."""
    stdout = process.stdout  # type: ignore[attr-defined]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = stdout.readline().decode()
        if line.startswith("registered"):
            return float(line.split()[3])
        if not line:
            break
    raise RuntimeError(f"the simulated nodes did not register: {log.read_text()[-3000:]}")


def _beats(home: Path) -> int:
    try:
        return int((home / "beats").read_text() or 0)
    except (OSError, ValueError):
        return 0


def fleet_run(nodes: int, seconds: float, home: Path) -> dict[str, float]:
    """One router, ``nodes`` simulated nodes: registration, heartbeat cost, client latency."""
    home.mkdir()
    # Every node keeps its heartbeat connection open: a fleet larger than the router's
    # connection limit (4,096 by default) needs a larger one, as an operator's would.
    env = {"LLMLB_AUTO_DISTRIBUTE": "none", "LLMLB_MAX_CONNECTIONS": str(max(4096, 2 * nodes))}
    router = start_router(home, home, "--no-auth", "--log-level", "warning", env=env)
    upstream = None
    try:
        upstream, _ = start_upstream(
            "--router", router.url, "--token", node_token(home), "--nodes", str(nodes),
            "--interval", str(HEARTBEAT_INTERVAL), "--count-file", str(home / "beats"),
            log=home / "upstream.log",
        )  # fmt: skip
        registered = _wait_registered(upstream, 600, home / "upstream.log")
        time.sleep(min(HEARTBEAT_INTERVAL, 3.0))  # heartbeats under way
        window = HEARTBEAT_INTERVAL if nodes > 1 else 3.0
        before, beats = cpu_seconds(router.proc.pid), _beats(home)
        time.sleep(window)
        idle_cpu = (cpu_seconds(router.proc.pid) - before) / window
        rate = (_beats(home) - beats) / window
        body = home / "body.json"
        body.write_bytes(orjson.dumps(BODY))
        client = load(router.url + "/v1/chat/completions", body, 1, seconds, [])
        return {
            "register_s": registered,
            "heartbeat_cpu": idle_cpu,
            "heartbeats_per_s": rate,
            "p50_ms": client["p50_ms"],
            "p99_ms": client["p99_ms"],
            "rps": client["rps"],
            "errors": client["errors"],
            "rss_mib": peak_rss_mib(router.proc.pid),
        }
    finally:
        if upstream is not None:
            stop(upstream)
        router.stop()


async def selection_micros(nodes: int, calls: int, folder: Path) -> tuple[float, float]:
    """p50 and p99 of ``Proxy.choose`` in microseconds, over a registry of ``nodes``."""
    tune_gc()  # as in the router process
    engine = await open_database(f"sqlite+aiosqlite:///{folder / f'select-{nodes}.db'}")
    settings = RouterSettings(home=folder, auto_distribute="none")
    registry = Registry(engine, heartbeat_interval=HEARTBEAT_INTERVAL, allow_cpu_nodes=False,
                        require_approval=False, node_max_concurrency=None)  # fmt: skip
    gpu = Device(kind="cuda", name="GPU", memory_total=80 << 30, memory_free=80 << 30)
    report = NodeLoad(state="ready", models_loaded=["fake-model"],
                      models_on_disk=["fake-model"], slots_total=4)  # fmt: skip
    for index in range(nodes):
        await registry.register(RegisterRequest(name=f"n{index}", base_url=f"http://n{index}:1",
                                                devices=[gpu], load=report))  # fmt: skip
    links = NodeLinks(None, connect_timeout=5.0, read_timeout=30.0)  # never used: no I/O
    proxy = Proxy(registry, settings, links, RouterMetrics(registry.all, 10.0), Capacity())
    routed = Routed("chat", "/v1/chat/completions", "fake-model", False, b"{}")
    times = []
    in_flight: list[str] = []  # requests in flight, as under load (64, or the slots)
    most = min(64, nodes * 4)
    for index in range(calls):
        started = time.perf_counter_ns()
        node = proxy.choose(routed, frozenset(), False)
        times.append(time.perf_counter_ns() - started)
        assert node is not None
        node.active += 1
        in_flight.append(node.id)
        if len(in_flight) >= most:
            registry.get(in_flight.pop(0)).active -= 1
        if index % 10 == 9:  # a heartbeat now and then
            await registry.heartbeat(node.id, report)
    await engine.dispose()
    times.sort()
    return times[len(times) // 2] / 1000, times[int(len(times) * 0.99)] / 1000


def run(report: Report, quick: bool) -> None:
    sizes = (1, 200) if quick else (1, 1000, 10000)
    seconds = 1.5 if quick else 5.0
    rows = []
    with tempfile.TemporaryDirectory(prefix="llmlb-bench-scale-") as scratch:
        folder = Path(scratch)
        for nodes in sizes:
            result = fleet_run(nodes, seconds, folder / f"fleet-{nodes}")
            p50, p99 = asyncio.run(selection_micros(nodes, 2000, folder))
            rows.append((nodes, result, p50, p99))
    base = rows[0][1]
    report.section(
        "Control plane at scale",
        f"Simulated nodes (one fast fake answering for all, each with its own kept-alive "
        f"connection to the router, as a real node's HTTP client keeps it) register 16 at a "
        f"time, then "
        f"heartbeat every {HEARTBEAT_INTERVAL:g} s, spread evenly. Router CPU is the "
        f"router's CPU while only heartbeats arrive, as a share of one core; the heartbeats' "
        f"own cost is what it uses above the one-node router (its idle loops). Client latency: "
        f"closed loop, concurrency 1, {seconds:g} s, while the heartbeats go on. Selection: "
        f"`Proxy.choose` timed in-process over a registry of that many nodes, 2,000 calls.",
    )
    report.table(
        ["nodes", "register all (s)", "heartbeats/s", "router CPU", "above one node",
         "CPU per heartbeat (ms)",
         "selection p50 (µs)", "selection p99 (µs)", "client p50 (ms)", "client p99 (ms)",
         "p50 − one node (ms)", "errors", "router RSS (MiB)"],
        [[n, r["register_s"], r["heartbeats_per_s"], f"{r['heartbeat_cpu']:.1%}",
          f"{r['heartbeat_cpu'] - base['heartbeat_cpu']:.1%}",
          (r["heartbeat_cpu"] - base["heartbeat_cpu"]) / r["heartbeats_per_s"] * 1000
          if n > 1 and r["heartbeats_per_s"] else float("nan"),
          p50, p99, r["p50_ms"], r["p99_ms"], r["p50_ms"] - base["p50_ms"], int(r["errors"]),
          r["rss_mib"]] for n, r, p50, p99 in rows],
    )  # fmt: skip
    report.add(
        "Median client latency across sizes: "
        + ", ".join(f"{n} nodes {r['p50_ms']:.2f} ms" for n, r, _, _ in rows)
        + f" (spread {statistics.pstdev([r['p50_ms'] for _, r, _, _ in rows]):.2f} ms)."
    )


if __name__ == "__main__":
    from bench.__main__ import main

    main(["scale", *sys.argv[1:]])
