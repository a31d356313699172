"""The GPU check: proof, on a real GPU machine, that a node serves on its GPU.

``make gpu-check`` installs the engine for the machine's GPUs (``llmlb engine install
auto``), then runs this suite: ``llmlb doctor``'s view, a node with every layer on the GPU
(``--gpu-layers -1``) and the same node with none (``--gpu-layers 0``), each serving the
bundled model; the GPU memory the model took (NVML, before and after the load), and the
aggregate tokens/s of each at 1, 4 and 16 streams, side by side, order rotating.

On a machine without a GPU the suite stops at once and says so. ``LLMLB_GPU_CHECK_ON_CPU=1``
runs it anyway (both sides on the CPU): a rehearsal of the script itself, not a GPU figure.

    .venv/bin/python -m bench gpu [--quick]
"""

from __future__ import annotations

import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import httpx

from bench.node_throughput import CTX, PARALLEL, aggregate_tps
from bench.procs import ROOT
from bench.report import Report
from llmlb.models.gguf import read_gguf
from llmlb.models.smallmodel import SMALL_MODEL_NAME, install_small_model
from llmlb.models.store import ModelStore
from llmlb.node.gpu import NvidiaMeter, probe_gpus

sys.path.insert(0, str(ROOT))
from tests.support import Process, start_node


def _layers(model: Path) -> int:
    count = read_gguf(model).arch_value("block_count")
    return count if isinstance(count, int) else 0


def _loaded(url: str) -> None:
    """Load the model (one short completion) and wait for the answer."""
    body = {"model": SMALL_MODEL_NAME, "prompt": "Hello", "max_tokens": 2}
    httpx.post(url + "/v1/completions", json=body, timeout=600).raise_for_status()


def run(report: Report, quick: bool) -> None:
    rehearsal = os.environ.get("LLMLB_GPU_CHECK_ON_CPU") == "1"
    gpus = probe_gpus()
    if not gpus and not rehearsal:
        raise RuntimeError("no GPU on this machine: the GPU check needs one "
                           "(LLMLB_GPU_CHECK_ON_CPU=1 rehearses it on the CPU)")  # fmt: skip
    concurrencies = (1, 4) if quick else (1, 4, 16)
    tokens, rounds = (16, 1) if quick else (64, 3)
    doctor = subprocess.run(
        [sys.executable, "-m", "llmlb", "doctor", "--allow-cpu"],
        capture_output=True, text=True, env={**os.environ, "COLUMNS": "200"},
    )  # fmt: skip
    meter = NvidiaMeter([g.uuid for g in gpus if g.kind == "cuda"])
    with tempfile.TemporaryDirectory(prefix="llmlb-gpu-check-") as scratch:
        home = Path(scratch)
        model = install_small_model(ModelStore(home / "models"))
        layers = _layers(model.path)
        common = ("--parallel", str(PARALLEL), "--ctx-size", str(CTX), "--log-level", "warning")
        nodes: dict[str, Process] = {}
        try:
            free_before = meter.sample()[1]
            nodes["all layers on the GPU"] = start_node(home, home, "--gpu-layers", "-1",
                                                        *common, name="gpu-node")  # fmt: skip
            _loaded(nodes["all layers on the GPU"].url)
            free_after = meter.sample()[1]
            nodes["CPU (--gpu-layers 0)"] = start_node(home, home, "--gpu-layers", "0", *common,
                                                       name="cpu-node")  # fmt: skip
            _loaded(nodes["CPU (--gpu-layers 0)"].url)
            health = httpx.get(nodes["all layers on the GPU"].url + "/health").json()
            if not rehearsal and (health.get("engine") or {}).get("backend") == "cpu":
                raise RuntimeError("the node runs on the CPU, not the GPU: "
                                   + str(health["engine"].get("warning")))  # fmt: skip
            names = list(nodes)
            results: dict[tuple[str, int], list[float]] = {}
            for concurrency in concurrencies:
                for index in range(rounds):
                    order = names[index % 2 :] + names[: index % 2]
                    for side in order:
                        tps = asyncio.run(aggregate_tps(nodes[side].url, concurrency, tokens))
                        results.setdefault((side, concurrency), []).append(tps)
        finally:
            for node in nodes.values():
                node.stop()
            meter.close()
    used = [before - after for before, after in zip(free_before, free_after, strict=False)]
    engine = health.get("engine") or {}
    report.section(
        "GPU check" + (" (rehearsal on the CPU: not a GPU figure)" if rehearsal else ""),
        f"The bundled {SMALL_MODEL_NAME} ({model.size_bytes >> 20} MiB, {layers} "
        f"layers), served by one node with every layer on the GPU and one with none; "
        f"{tokens} tokens a stream, {PARALLEL} slots, median of {rounds} rounds. Engine: "
        f"{engine.get('backend', '?')}, {engine.get('build', '?')}. GPU memory the model took: "
        + (", ".join(f"GPU {i}: {u >> 20} MiB" for i, u in enumerate(used)) or "not measured "
           "(no NVIDIA GPU)") + ".",
    )  # fmt: skip
    median = {k: statistics.median(v) for k, v in results.items()}
    rows = []
    for concurrency in concurrencies:
        cpu = median[("CPU (--gpu-layers 0)", concurrency)]
        for side in names:
            rows.append([concurrency, side, median[(side, concurrency)],
                         median[(side, concurrency)] / cpu])  # fmt: skip
    report.table(["streams", "side", "tokens/s", "÷ CPU"], rows)
    report.add("`llmlb doctor` on this machine:\n\n```\n" + doctor.stdout.strip() + "\n```")
