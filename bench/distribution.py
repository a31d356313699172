"""Moving a model from the router's store to a node: llmlb's own path vs plain curl.

A 1 GiB model file sits in a real router's store; a real node (empty store) pulls it by
llmlb's path (``POST {node}/api/pull`` -> resumable, sha256-verified download of the router's
blob -> atomic rename), side by side with ``curl`` fetching the same blob URL into a file on
the same disk. Rounds alternate (ABBA). Prints median seconds, MB/s and the ratio
llmlb/curl speed, plus the peak resident memory of the router and the node during llmlb's
transfers.

    .venv/bin/python -m bench distribution [--quick]
"""

from __future__ import annotations

import hashlib
import json
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import psutil

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.support import (  # noqa: E402
    node_token,
    start_fleet_node,
    start_router,
    wait_until,
    write_tiny_gguf,
)

from bench.report import Report  # noqa: E402
from llmlb.models.store import ModelStore  # noqa: E402

MODEL = "bench-blob"


def make_model(path: Path, size: int) -> str:
    """A whole GGUF file of about ``size`` bytes (one tensor of random data), which passes the
    node's checks (a complete GGUF header and tensor data, sha256); its sha256."""
    write_tiny_gguf(path, megabytes=max(1, size >> 20))
    digest = hashlib.sha256()
    with path.open("rb") as stream:
        while block := stream.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


class PeakMemory:
    """Samples the resident memory of some processes every 20 ms."""

    def __init__(self, pids: dict[str, int]) -> None:
        self._procs = {name: psutil.Process(pid) for name, pid in pids.items()}
        self.peak = dict.fromkeys(pids, 0)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            for name, proc in self._procs.items():
                self.peak[name] = max(self.peak[name], proc.memory_info().rss)
            time.sleep(0.02)

    def __enter__(self) -> PeakMemory:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def llmlb_transfer(node_url: str, token: str) -> float:
    auth = {"authorization": f"Bearer {token}"}  # what the router sends to its nodes
    with httpx.Client(base_url=node_url, timeout=600, headers=auth) as http:
        started = time.perf_counter()
        assert http.post("/api/pull", json={"model": MODEL}).status_code == 202
        while True:
            state = http.get(f"/api/downloads/{MODEL}").json()
            if state["state"] in ("completed", "failed"):
                break
            time.sleep(0.025)
        elapsed = time.perf_counter() - started
        assert state["state"] == "completed", state
        assert http.delete(f"/api/models/{MODEL}").status_code == 204
    return elapsed


def curl_transfer(blob_url: str, token: str, target: Path) -> float:
    started = time.perf_counter()
    subprocess.run(
        ["curl", "-sf", "-o", str(target), "-H", f"authorization: Bearer {token}", blob_url],
        check=True,
    )
    elapsed = time.perf_counter() - started
    target.unlink()
    return elapsed


def run(report: Report, quick: bool) -> None:
    size_mib, rounds = (128, 1) if quick else (1024, 2)
    size = size_mib << 20
    with tempfile.TemporaryDirectory(prefix="llmlb-bench-", dir=ROOT) as scratch:
        base = Path(scratch)
        router_home, node_home = base / "router", base / "node"
        router_home.mkdir()
        source = base / "model.bin"
        sha = make_model(source, size)
        size = source.stat().st_size
        ModelStore(router_home / "models").add(MODEL, source, sha256=sha)
        catalog = [{"name": MODEL, "origin": {"url": "https://example.invalid/m.gguf"},
                    "size_bytes": size, "sha256": sha}]  # fmt: skip
        (router_home / "supported_models.json").write_text(json.dumps(catalog))
        router = start_router(router_home, base, "--allow-cpu-nodes", "--log-level", "warning",
                              env={"LLMLB_AUTO_DISTRIBUTE": "none"})  # fmt: skip
        try:
            node = start_fleet_node(node_home, base, router, router_home, "bench-node",
                                    "--log-level", "warning")  # fmt: skip
        except BaseException:
            router.stop()
            raise
        token = node_token(router_home)
        try:
            with httpx.Client(base_url=router.url) as http:
                wait_until(lambda: bool(http.get("/api/nodes").json()["data"]))
            blob_url = f"{router.url}/v0/models/blob/{MODEL}"
            times: dict[str, list[float]] = {"llmlb": [], "curl": []}
            pids = {"router": router.proc.pid, "node": node.proc.pid}
            idle = {name: psutil.Process(pid).memory_info().rss for name, pid in pids.items()}
            with PeakMemory(pids) as memory:
                for index in range(rounds * 2):
                    order = ["llmlb", "curl"] if index % 2 == 0 else ["curl", "llmlb"]
                    for side in order:
                        if side == "llmlb":
                            times["llmlb"].append(llmlb_transfer(node.url, token))
                        else:
                            times["curl"].append(curl_transfer(blob_url, token, base / "c.bin"))
            llmlb_s, curl_s = statistics.median(times["llmlb"]), statistics.median(times["curl"])
            mib = size / (1 << 20)
            report.section(
                "Distribution",
                f"A {mib:.0f} MiB model in the router's store, moved to a node by llmlb's path "
                f"(pull request → resumable, sha256-checked download → file in place) and by "
                f"plain `curl` of the same blob URL to the same disk; median of "
                f"{len(times['curl'])} alternating runs each.",
            )
            report.table(
                ["path", "seconds", "MiB/s", "÷ curl (speed)"],
                [["curl", curl_s, mib / curl_s, 1.0],
                 ["llmlb", llmlb_s, mib / llmlb_s, curl_s / llmlb_s]],
            )  # fmt: skip
            report.add("Peak RSS during llmlb's transfers: " + ", ".join(
                f"{name} {memory.peak[name] / 2**20:.0f} MiB (idle {idle[name] / 2**20:.0f} MiB)"
                for name in pids))  # fmt: skip
        finally:
            node.stop()
            router.stop()


if __name__ == "__main__":
    from bench.__main__ import main

    main(["distribution", *sys.argv[1:]])
