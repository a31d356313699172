"""The ``llmlb`` command as a user runs it: a subprocess."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import httpx
import pytest

from llmlb.node.gpu import probe_gpus
from tests.support import Process, free_port, start_node, wait_until


def llmlb(*args: str, home: Path, check: bool = False) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "LLMLB_HOME": str(home)}
    env.pop("LLMLB_ALLOW_CPU", None)
    return subprocess.run(
        [sys.executable, "-m", "llmlb", *args],
        capture_output=True, text=True, env=env, timeout=120, check=check,
    )  # fmt: skip


def test_help_shows_defaults(tmp_path: Path) -> None:
    out = llmlb("node", "--help", home=tmp_path, check=True).stdout
    assert "32769" in out
    assert "--allow-cpu" in out
    assert "default: 4" in out


@pytest.mark.skipif(bool(probe_gpus()), reason="this machine has a GPU, so the node would start")
def test_node_without_gpu_refuses_to_start_without_allow_cpu(tmp_path: Path) -> None:
    result = llmlb("node", "--port", "0", home=tmp_path)
    assert result.returncode == 1
    assert "no GPU found" in result.stderr
    assert "--allow-cpu" in result.stderr


def test_models_add_and_list(tmp_path: Path, small_model_path: Path) -> None:
    home = tmp_path / "home"
    added = llmlb("models", "add", "my-model", str(small_model_path), home=home, check=True)
    assert "my-model" in added.stderr
    listed = json.loads(llmlb("models", "list", "--json", home=home, check=True).stdout)
    assert [m["name"] for m in listed] == ["my-model"]
    assert listed[0]["size_bytes"] == small_model_path.stat().st_size
    assert len(listed[0]["sha256"]) == 64


def test_models_add_refuses_a_file_that_is_not_gguf(tmp_path: Path) -> None:
    bogus = tmp_path / "bogus.gguf"
    bogus.write_text("hello")
    result = llmlb("models", "add", "bogus", str(bogus), home=tmp_path)
    assert result.returncode == 1
    assert "not a GGUF file" in result.stderr
    assert not (tmp_path / "models" / "bogus").exists()


def test_models_add_refuses_a_bad_name(tmp_path: Path, small_model_path: Path) -> None:
    result = llmlb("models", "add", "../evil", str(small_model_path), home=tmp_path)
    assert result.returncode == 1
    assert "invalid model name" in result.stderr


def test_sigterm_finishes_in_flight_requests_then_exits(model_home: Path, tmp_path: Path) -> None:
    node = start_node(model_home, tmp_path, "--log-format", "json")
    body = {"model": "gemma-3-270m", "prompt": "Once upon a time", "max_tokens": 40,
            "ignore_eos": True, "temperature": 0}  # fmt: skip
    result: dict[str, httpx.Response] = {}

    def request() -> None:
        with httpx.Client(base_url=node.url, timeout=60) as http:
            result["response"] = http.post("/v1/completions", json=body)

    worker = threading.Thread(target=request)
    worker.start()
    with httpx.Client(base_url=node.url, timeout=30) as probe:  # model loaded, generating
        wait_until(lambda: any(m["slots_busy"] for m in probe.get("/health").json()["models"]))
    node.proc.send_signal(signal.SIGTERM)
    worker.join()
    assert node.stop() == 0
    response = result["response"]
    assert response.status_code == 200
    assert response.json()["usage"]["completion_tokens"] == 40
    # JSON log lines carry the request id.
    lines = [
        json.loads(line) for line in node.log_path.read_text().splitlines() if line.startswith("{")
    ]
    served = [line for line in lines if "/v1/completions 200" in line["msg"]]
    assert served and served[0]["request_id"] != "-"
    assert any("unloaded model" in line["msg"] for line in lines)


def test_serve_refuses_a_broken_catalog_naming_the_entry(tmp_path: Path) -> None:
    (tmp_path / "supported_models.json").write_text(
        '[{"name": "ok", "origin": {"url": "https://a/b.gguf"}}, {"name": "bad one", "origin": {}}]'
    )
    result = llmlb("serve", "--port", "0", home=tmp_path)
    assert result.returncode == 1
    assert "model #1 ('bad one')" in result.stderr
    assert "Traceback" not in result.stderr


def test_models_pull_from_a_hub_with_progress(tmp_path: Path) -> None:
    from tests.fakehub import FakeHub
    from tests.support import write_tiny_gguf

    data = write_tiny_gguf(tmp_path / "t.gguf", 4).read_bytes()
    hub = FakeHub().start()
    try:
        hub.add("org/tiny", "tiny.gguf", data)
        home = tmp_path / "home"
        home.mkdir()
        (home / "supported_models.json").write_text(
            json.dumps(
                [{"name": "tiny", "origin": {"hub": {"repo": "org/tiny", "file": "tiny.gguf"}}}]
            )
        )
        env = {**os.environ, "LLMLB_HOME": str(home), "HF_ENDPOINT": hub.url}
        # As an Ollama user types it: ``tiny:latest`` is ``tiny``.
        result = subprocess.run([sys.executable, "-m", "llmlb", "models", "pull", "tiny:latest"],
                                capture_output=True, text=True, env=env, timeout=60)  # fmt: skip
    finally:
        hub.stop()
    assert result.returncode == 0, result.stderr
    assert "tiny is in the store" in result.stderr
    assert (home / "models" / "tiny" / "model.gguf").read_bytes() == data
    listed = json.loads(llmlb("models", "list", "--json", home=home).stdout)
    assert listed[0]["sha256"] == hashlib.sha256(data).hexdigest()


def test_health_checks_the_part_running_here_and_fails_when_none_is(
    tmp_path: Path, node: Process
) -> None:
    """The container's HEALTHCHECK: the node answers on its port, no router on the other."""
    port = str(httpx.URL(node.url).port)
    nothing = str(free_port())
    env = {**os.environ, "LLMLB_HOME": str(tmp_path), "LLMLB_NODE_PORT": port,
           "LLMLB_ROUTER_PORT": nothing}  # fmt: skip
    run = [sys.executable, "-m", "llmlb", "health"]
    found = subprocess.run(run, capture_output=True, text=True, env=env, timeout=60)
    assert found.returncode == 0, found.stderr
    assert found.stdout.strip() == "node ok"
    env["LLMLB_NODE_PORT"] = nothing
    absent = subprocess.run(run, capture_output=True, text=True, env=env, timeout=60)
    assert absent.returncode == 1
    assert "neither a router nor a node answers" in absent.stdout + absent.stderr
