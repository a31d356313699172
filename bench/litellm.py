"""LiteLLM's proxy as a baseline: installed from PyPI into a virtualenv of its own, once.

The virtualenv lives in the bench cache (``~/.cache/llmlb-bench/litellm-venv``), never in the
repository, so that LiteLLM's many dependencies cannot touch llmlb's. The proxy runs one
worker with a master key set (as a deployment would) in front of the same upstream.
"""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import httpx

from bench.procs import CACHE, install_venv

VENV = CACHE / "litellm-venv"
MASTER_KEY = "sk-bench-master"


def install(log: Path) -> Path | None:
    """The proxy's executable, installing it when missing; None when that fails."""
    return VENV / "bin" / "litellm" if install_venv(VENV, "litellm[proxy]", log) else None


def start(executable: Path, upstream_port: int, port: int, folder: Path) -> subprocess.Popen[bytes]:
    config = folder / "litellm.yaml"
    config.write_text(
        "model_list:\n"
        "  - model_name: fake-model\n"
        "    litellm_params:\n"
        "      model: openai/fake-model\n"
        f"      api_base: http://127.0.0.1:{upstream_port}/v1\n"
        "      api_key: sk-upstream\n"
        "general_settings:\n"
        f"  master_key: {MASTER_KEY}\n"
        "litellm_settings:\n"
        "  telemetry: false\n"
    )
    process = subprocess.Popen(
        [str(executable), "--config", str(config), "--host", "127.0.0.1", "--port", str(port),
         "--num_workers", "1"],
        stdout=(folder / "litellm.log").open("ab"), stderr=subprocess.STDOUT,
    )  # fmt: skip
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError("LiteLLM's proxy exited; see " + str(folder / "litellm.log"))
        try:
            if (
                httpx.get(f"http://127.0.0.1:{port}/health/liveliness", timeout=2).status_code
                == 200
            ):
                return process
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    process.kill()
    raise RuntimeError("LiteLLM's proxy did not start in 180 s")
