"""The wheel, as someone installs it without the repository: built from this checkout,
installed into a fresh virtualenv in a temporary folder, and ``llmlb up`` run from another
folder serves the small model (its dashboard, catalog, migrations and model package come
with the wheel)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_the_wheel_installs_and_serves_outside_the_checkout(tmp_path: Path) -> None:
    wheels = tmp_path / "dist"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", str(ROOT),
                    "-w", str(wheels)], check=True, timeout=600)  # fmt: skip
    (wheel,) = wheels.glob("llmlb-*.whl")
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    subprocess.run([str(venv / "bin" / "pip"), "install", "--quiet", str(wheel)], check=True,
                   timeout=900)  # fmt: skip
    llmlb = str(venv / "bin" / "llmlb")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LLMLB_", "PYTHON"))}
    env["LLMLB_HOME"] = str(tmp_path / "home")

    commit = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short=12", "HEAD"],
                            capture_output=True, text=True, check=True).stdout.strip()  # fmt: skip
    shown = subprocess.run([llmlb, "--version"], cwd=elsewhere, env=env, capture_output=True,
                           text=True, check=True).stdout  # fmt: skip
    assert shown.strip() == f"llmlb 0.1.0 (commit {commit})"  # from the wheel, not a checkout

    up = subprocess.Popen([llmlb, "up", "--port", "0", "--node-port", "0"], cwd=elsewhere,
                          env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)  # fmt: skip
    try:
        assert up.stdout is not None
        url = ""
        while not url:
            line = up.stdout.readline().decode()
            assert line, "llmlb up ended before it was up"
            if "llmlb is up: " in line:
                url = line.split("llmlb is up: ", 1)[1].split()[0]
        question = [{"role": "user", "content": "What is the capital of France?"}]
        body = {"model": "gemma-3-270m", "max_tokens": 8, "temperature": 0, "messages": question}
        reply = httpx.post(url + "/v1/chat/completions", json=body, timeout=120)
        assert "Paris" in reply.json()["choices"][0]["message"]["content"]
        assert httpx.get(url + "/dashboard", timeout=30).status_code == 200
    finally:
        up.send_signal(signal.SIGTERM)
        try:
            up.wait(60)
        except subprocess.TimeoutExpired:
            up.kill()
