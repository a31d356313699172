"""Router overhead: the same fast upstream called directly, through llmlb, through LiteLLM.

The upstream is ``bench.upstream`` (a bare asyncio fake node) in a process of its own,
registered with a real router (``llmlb serve --no-auth``) and configured as LiteLLM's proxy's
only deployment. The load generator (``bench.loadgen``, its own process) runs the same
closed-loop load against each side in turn at each concurrency, whole answers and streams;
the order of the sides rotates every round and the report gives medians. The direct runs
double as the load generator's proof: they report its CPU use beside the upstream's.

    .venv/bin/python -m bench router [--quick]
"""

from __future__ import annotations

import os
import resource
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import orjson

from bench import litellm, peers
from bench.procs import (
    ROOT,
    cpu_seconds,
    peak_rss_mib,
    rss_mib,
    start_upstream,
    stop,
    wait_for_line,
)
from bench.report import Report

sys.path.insert(0, str(ROOT))
from tests.support import free_port, node_token, start_router

BODY = {"model": "fake-model", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 8}
METRICS = ("rps", "p50_ms", "p99_ms", "ttfc_p50_ms", "ttfc_p99_ms", "cpu_us")
WARMUP = 0.5  # seconds of load before each point's measured window
CONCURRENCIES = (1, 16, 64, 256)  # (1, 64) with --quick
# After the points: runs of many clients, each on new connections, for llmlb's sides.
CHURN_RUNS, CHURN_CLIENTS, CHURN_SECONDS = 8, 256, 0.3


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def load(
    url: str, body: Path, concurrency: int, seconds: float, headers: list[str]
) -> dict[str, float]:
    args = [sys.executable, "-m", "bench.loadgen", url, "--body-file", str(body),
            "--concurrency", str(concurrency), "--seconds", str(seconds),
            "--warmup", str(WARMUP)]  # fmt: skip
    for header in headers:
        args += ["--header", header]
    done = subprocess.run(args, cwd=ROOT, capture_output=True, timeout=seconds + 120, check=True)
    result: dict[str, float] = orjson.loads(done.stdout.splitlines()[-1])
    return result


def run(report: Report, quick: bool) -> None:
    concurrencies = (1, 64) if quick else CONCURRENCIES
    seconds, rounds = (1.5, 1) if quick else (3.0, 3)
    with tempfile.TemporaryDirectory(prefix="llmlb-bench-router-") as scratch:
        home = Path(scratch)
        bodies = {}
        for mode, stream in (("whole", False), ("stream", True)):
            bodies[mode] = home / f"{mode}.json"
            bodies[mode].write_bytes(orjson.dumps({**BODY, "stream": stream}))
        router = start_router(home, home, "--no-auth", "--log-level", "warning")
        upstream, port = start_upstream("--router", router.url, "--token", node_token(home),
                                        log=home / "upstream.log")  # fmt: skip
        proxy = None
        earlier: list[Any] = []  # an earlier llmlb's router and upstream, and its worktree
        started: list[subprocess.Popen[bytes]] = []  # the peers
        try:
            wait_for_line(upstream, "registered", 30)
            path = "/v1/chat/completions"
            sides: dict[str, tuple[str, list[str], int | None]] = {
                "direct": (f"http://127.0.0.1:{port}{path}", [], None),
                "llmlb": (router.url + path, [], router.proc.pid),
            }
            nginx_port = free_port()
            nginx = peers.start_nginx(port, nginx_port, home)
            if nginx is not None:
                started.append(nginx)
                sides["nginx"] = (f"http://127.0.0.1:{nginx_port}{path}", [], nginx.pid)
            sglang = peers.install_sglang(home / "sglang-install.log")
            if sglang is not None:
                gateway_port = free_port()
                # round_robin: the gateway's cheapest policy (cache_aware walks a tree a request)
                started.append(peers.start_sglang(sglang, [f"http://127.0.0.1:{port}"],
                                                  gateway_port, home, "round_robin"))  # fmt: skip
                sides["SGLang"] = (f"http://127.0.0.1:{gateway_port}{path}", [],
                                   started[-1].pid)  # fmt: skip
            executable = None if quick else litellm.install(home / "litellm-install.log")
            if executable is not None:
                proxy_port = free_port()
                proxy = litellm.start(executable, port, proxy_port, home)
                key = f"authorization: Bearer {litellm.MASTER_KEY}"
                sides["LiteLLM"] = (f"http://127.0.0.1:{proxy_port}{path}", [key], proxy.pid)
            against = os.environ.get("LLMLB_BENCH_AGAINST")
            if against:
                sides[f"llmlb@{against}"] = _earlier_router(against, home, path, earlier)
            workers = os.environ.get("LLMLB_BENCH_WORKERS")
            if workers:
                sides[f"llmlb ×{workers}"] = _side_router(home, "workers", path, earlier, {},
                                                         "--workers", workers)  # fmt: skip
            traced = os.environ.get("LLMLB_BENCH_TRACED")
            if traced:
                sides["llmlb traced"] = _traced_router(home, path, earlier, traced)
            names = list(sides)
            results: dict[tuple[str, str, int], list[dict[str, float]]] = {}
            generator_share: list[tuple[str, int, float, float]] = []
            for mode in ("whole", "stream"):
                for concurrency in concurrencies:
                    for index in range(rounds):
                        order = names[index % len(names) :] + names[: index % len(names)]
                        for side in order:
                            url, headers, pid = sides[side]
                            before = (_children_cpu(), cpu_seconds(upstream.pid))
                            proxy_cpu = cpu_seconds(pid) if pid is not None else 0.0
                            result = load(url, bodies[mode], concurrency, seconds, headers)
                            # The proxy's CPU per answer, warm-up and drain included: steadier
                            # than requests/s on a shared machine, for a before/after.
                            result["cpu_us"] = (
                                (cpu_seconds(pid) - proxy_cpu) / max(result["answered"], 1) * 1e6
                                if pid is not None else float("nan")
                            )  # fmt: skip
                            if side == "direct":
                                wall = seconds + WARMUP + 0.2  # and its 0.2 s connect pause
                                generator = (_children_cpu() - before[0]) / wall
                                fake = (cpu_seconds(upstream.pid) - before[1]) / wall
                                generator_share.append((mode, concurrency, generator, fake))
                            results.setdefault((side, mode, concurrency), []).append(result)
            memory = _memory(sides)  # before the churn below, which adds its own line
            churn = {side: _churn(sides[side], bodies["whole"], quick)
                     for side in names if side.startswith("llmlb")}  # fmt: skip
            _report(report, sides, results, generator_share, concurrencies, seconds, rounds,
                    quick, memory, churn)  # fmt: skip
        finally:
            stop(upstream)
            for peer in started:
                stop(peer)
            if proxy is not None:
                stop(proxy)
            _stop_earlier(earlier)
            router.stop()


def _earlier_router(
    revision: str, home: Path, path: str, started: list[Any]
) -> tuple[str, list[str], int | None]:
    """``LLMLB_BENCH_AGAINST=<git revision>``: that revision's router (from a worktree, first
    on PYTHONPATH) with an upstream of its own, as one more side: before/after in one run."""
    tree = home / "earlier-tree"
    subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", str(tree), revision],
                   check=True, capture_output=True)  # fmt: skip
    started.append(tree)
    return _side_router(home, "earlier", path, started, {"PYTHONPATH": str(tree / "src")})


def _traced_router(
    home: Path, path: str, started: list[Any], ratio: str
) -> tuple[str, list[str], int | None]:
    """``LLMLB_BENCH_TRACED=<ratio>``: this router with tracing on (that share of requests
    sampled, 1 for all; spans sent over OTLP/HTTP to a receiver in this process), with an
    upstream of its own."""
    from tests.otlp import Receiver

    receiver = Receiver().start()
    started.append(receiver)
    otel = {
        "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.url,
        "OTEL_TRACES_SAMPLER": "parentbased_traceidratio",
        "OTEL_TRACES_SAMPLER_ARG": ratio,
    }
    return _side_router(home, "traced", path, started, otel)


def _side_router(
    home: Path, name: str, path: str, started: list[Any], env: dict[str, str], *args: str
) -> tuple[str, list[str], int | None]:
    """One more router (in a home of its own, with ``env`` and ``args``) and an upstream
    registered with it, as a side; what it started is added to ``started``. (Its CPU is its
    process tree's: with ``--workers``, the workers'.)"""
    side_home = home / name
    side_home.mkdir()
    router = start_router(side_home, home, "--no-auth", "--log-level", "warning", *args, env=env,
                          name=f"{name}-router")  # fmt: skip
    started.append(router)
    upstream, _ = start_upstream("--router", router.url, "--token", node_token(side_home),
                                 log=home / f"{name}-upstream.log")  # fmt: skip
    started.append(upstream)
    wait_for_line(upstream, "registered", 30)
    return router.url + path, [], router.proc.pid


def _stop_earlier(started: list[Any]) -> None:
    for thing in reversed(started):
        if isinstance(thing, Path):
            subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(thing)],
                           capture_output=True)  # fmt: skip
        elif isinstance(thing, subprocess.Popen):
            stop(thing)
        else:
            thing.stop()


def _tree(pid: int) -> list[int]:
    import psutil

    return [pid, *(child.pid for child in psutil.Process(pid).children(recursive=True))]


def _median(runs: list[dict[str, float]], key: str) -> float:
    """The median over the rounds that measured ``key`` (a round whose every answer came
    after its window has no latencies); NaN, shown as "–", when none did."""
    measured = [r[key] for r in runs if r[key] is not None]
    return statistics.median(measured) if measured else float("nan")


def _memory(sides: dict[str, tuple[str, list[str], int | None]]) -> dict[str, tuple[float, float]]:
    """Each side's RSS now and its peak, of its largest process (nginx's worker, one of
    llmlb's router workers)."""
    pids = {side: pid for side, (_, _, pid) in sides.items() if pid is not None}
    return {side: max((rss_mib(p), peak_rss_mib(p)) for p in _tree(pid))
            for side, pid in pids.items()}  # fmt: skip


def _churn(side: tuple[str, list[str], int | None], body: Path, quick: bool) -> tuple[float, float]:
    """The side's RSS (largest process) before and after CHURN_RUNS runs of CHURN_CLIENTS
    clients, each run on new connections: what connections that come and go leave behind."""
    url, headers, pid = side
    assert pid is not None
    before = max(rss_mib(p) for p in _tree(pid))
    for _ in range(2 if quick else CHURN_RUNS):
        load(url, body, CHURN_CLIENTS, CHURN_SECONDS, headers)
    return before, max(rss_mib(p) for p in _tree(pid))


def _report(report: Report, sides: dict[str, tuple[str, list[str], int | None]],
            results: dict[tuple[str, str, int], list[dict[str, float]]],
            generator_share: list[tuple[str, int, float, float]], concurrencies: tuple[int, ...],
            seconds: float, rounds: int, quick: bool, memory: dict[str, tuple[float, float]],
            churn: dict[str, tuple[float, float]]) -> None:  # fmt: skip
    report.section(
        "Router overhead",
        f"One fast fake upstream (`bench/upstream.py`), called directly, through llmlb, "
        f"through nginx (one worker, keep-alive to the upstream), through SGLang's gateway "
        f"(`sglang-router` {peers.SGLANG_VERSION}, Rust, `--policy round_robin`, a thread per "
        f"core) and through LiteLLM's proxy (one worker, master key set); closed-loop load from "
        f"`bench/loadgen.py` in its own process; {seconds:g} s a point after {WARMUP:g} s of "
        f"warm-up (answers still in flight then get at most {2 * seconds:g} s more), the median "
        f"of {rounds} rounds whose side order rotates. Streams are 34 SSE events; `ttfc` is "
        f"the time to the first chunk. Latencies in ms; `CPU µs/req` is the proxy process's "
        f"CPU time per answer (all it answered, warm-up included)."
        + "".join(f" {peer} was not measured in this run (not installed)."
                  for peer in ("nginx", "SGLang") if peer not in sides)
        + ("" if "LiteLLM" in sides else " LiteLLM was not measured in this run"
           + (" (`--quick` skips it)." if quick else " (its install failed)."))
        + "".join(f" `{side}` is llmlb's router at that git revision (`LLMLB_BENCH_AGAINST`), "
                  f"for a before/after in the same run." for side in sides if "@" in side)
        + "".join(f" `{side}` is llmlb's router with `--workers {side.split('×')[1]}` "
                  f"(`LLMLB_BENCH_WORKERS`; its CPU is all its processes')."
                  for side in sides if "×" in side),
    )  # fmt: skip
    headers = ["mode", "conc", "side", "req/s", "p50", "p99", "ttfc p50", "ttfc p99",
               "CPU µs/req", "errors", "÷ direct", "llmlb ÷ side"]  # fmt: skip
    rows = []
    for mode in ("whole", "stream"):
        for concurrency in concurrencies:
            direct = _median(results[("direct", mode, concurrency)], "rps")
            ours = _median(results[("llmlb", mode, concurrency)], "rps")
            for side in sides:
                runs = results[(side, mode, concurrency)]
                rps = _median(runs, "rps")
                rows.append([mode, concurrency, side, rps, *(_median(runs, k) for k in METRICS[1:]),
                             int(sum(r["errors"] for r in runs)), rps / direct,
                             "" if side == "llmlb" else f"{ours / rps:.2f}"])  # fmt: skip
    report.table(headers, rows)
    added = [
        f"{mode} c={c}: "
        f"{_median(results[('llmlb', mode, c)], 'p50_ms') - _median(results[('direct', mode, c)], 'p50_ms'):.2f}"  # noqa: E501
        for mode in ("whole", "stream")
        for c in concurrencies
    ]
    report.add("Added p50 latency (llmlb − direct), ms: " + ", ".join(added))

    def gap(side: str, mode: str, key: str, c: int) -> float:
        return _median(results[(side, mode, c)], key)

    if "nginx" in sides:
        low, high = concurrencies[0], concurrencies[-1]
        report.add("Against nginx: " + "; ".join(
            f"{mode}: added p50 at c={low} "
            f"{gap('llmlb', mode, 'p50_ms', low) - gap('nginx', mode, 'p50_ms', low):+.2f} ms "
            f"over nginx's, p99 at c={high} "
            f"{gap('llmlb', mode, 'p99_ms', high) / gap('nginx', mode, 'p99_ms', high):.2f}× "
            f"nginx's" for mode in ("whole", "stream")) + ".")  # fmt: skip
    # A closed loop keeps ``c`` requests in flight, so a side's p50 is about c over its
    # requests/s: p99 against another side's is the requests/s ratio times the ratio of the
    # spreads (p99 ÷ p50), which is what a side's own tail adds.
    high = concurrencies[-1] if 64 not in concurrencies else 64
    report.add(f"Tail spread (p99 ÷ p50) at c={high}, whole / stream: " + ", ".join(
        f"{side} " + " / ".join(
            f"{gap(side, mode, 'p99_ms', high) / gap(side, mode, 'p50_ms', high):.2f}"
            for mode in ("whole", "stream")) for side in sides) + ".")  # fmt: skip
    report.add("RSS after the run (peak), of the side's largest process: " + ", ".join(
        f"{s} {now:.0f} MiB ({peak:.0f})" for s, (now, peak) in memory.items()))  # fmt: skip
    churn_runs = 2 if quick else CHURN_RUNS
    report.add(f"RSS across {churn_runs * CHURN_CLIENTS:,} connections that come and go "
               f"({churn_runs} runs "
               f"of {CHURN_CLIENTS} clients, each on new connections, whole answers): " + ", ".join(
        f"{s} {before:.0f} → {after:.0f} MiB" for s, (before, after) in churn.items()))  # fmt: skip
    report.add(
        "The load generator is faster than what it measures: during the direct runs it used "
        + ", ".join(f"{m} c={c} {g:.0%}" for m, c, g, _ in generator_share[:: max(1, rounds)])
        + " of a core while the upstream used "
        + ", ".join(f"{u:.0%}" for _, _, _, u in generator_share[:: max(1, rounds)])
        + "; the upstream, not the generator, is the direct side's limit wherever it is near 100%."
    )
    for mode in ("whole", "stream"):
        report.chart(
            f"router-{mode}", f"Requests/s, {mode} answers", "concurrent clients", "requests/s",
            {side: (concurrencies, [_median(results[(side, mode, c)], "rps")
                                    for c in concurrencies]) for side in sides},
            log_y=True,
        )  # fmt: skip


if __name__ == "__main__":
    from bench.__main__ import main

    main(["router", *sys.argv[1:]])
