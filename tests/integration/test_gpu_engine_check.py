"""A node on a GPU machine whose engine cannot drive the GPU (here: NVML answers for an
H100 through tests/fake_gpus, and the engine is the CPU build this machine has): it refuses
to start and says what to install; with --allow-cpu it serves as a CPU node, and the reason
reaches the router, the CLI and the dashboard's API."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx

from tests.support import llmlb, start_fleet_node, start_router, wait_until

FAKE_NVML = str(Path(__file__).resolve().parents[1] / "fake_gpus")
H100 = {"name": "NVIDIA H100 80GB HBM3", "total": 80 << 30, "free": 79 << 30,
        "uuid": "GPU-5f1c0e2a-0b64-4c2f-9d0a-3c1e2f4a5b6c", "util": 0}  # fmt: skip
ON_AN_H100 = {
    "PYTHONPATH": FAKE_NVML,
    "LLMLB_FAKE_NVML": json.dumps({"driver": 12080, "gpus": [H100]}),
}


def test_a_gpu_the_engine_cannot_drive_stops_the_node_with_what_to_install(
    tmp_path: Path,
) -> None:
    done = llmlb(tmp_path, "node", "--host", "127.0.0.1", "--port", "0", env=ON_AN_H100)
    assert done.returncode != 0
    said = " ".join(done.stderr.split())  # rich wraps long lines
    assert "found NVIDIA H100 80GB HBM3 (cuda)" in said
    assert "no GPU backend (its backends: cpu)" in said
    assert "--index-url https://xorbitsai.github.io/xllamacpp/whl/cu128" in said  # driver 12.8
    assert "--allow-cpu" in said


def test_allow_cpu_serves_as_a_cpu_node_and_says_why_everywhere(tmp_path: Path) -> None:
    router_home, node_home = tmp_path / "router", tmp_path / "node"
    router_home.mkdir()
    node_home.mkdir()
    router = start_router(router_home, tmp_path, "--allow-cpu-nodes")
    node = start_fleet_node(node_home, tmp_path, router, router_home, "h100", env=ON_AN_H100)
    try:
        with httpx.Client(base_url=router.url, timeout=30) as http:

            def listed() -> list[dict[str, Any]]:
                return list(http.get("/api/nodes").json()["data"])

            wait_until(lambda: any(n["status"] == "ready" for n in listed()), 60)
            (seen,) = listed()
        assert [d["kind"] for d in seen["devices"]] == ["cpu"]
        engine = seen["engine"]
        assert engine["backend"] == "cpu" and "AVX2" in engine["build"]
        assert "NVIDIA H100 80GB HBM3" in engine["warning"]
        assert "serving on the CPU as --allow-cpu asks" in engine["warning"]
        shown = llmlb(router_home, "nodes", "list", "--router", router.url, env={"COLUMNS": "250"})
        assert shown.returncode == 0, shown.stderr
        printed = " ".join(shown.stdout.split())
        assert "GPU unused" in printed and "h100: found NVIDIA H100 80GB HBM3" in printed
        assert "serving on the CPU" in node.log_path.read_text()  # and in the node's log
    finally:
        node.stop()
        router.stop()
