"""``llmlb up`` and the management commands, run as a user runs them."""

from __future__ import annotations

import json
import shlex
import signal
import subprocess
from pathlib import Path

import httpx
import psutil

from tests.support import Process, llmlb, wait_until


def test_up_serves_the_small_model_and_management_commands_work(tmp_path: Path) -> None:
    home = tmp_path / "home"
    up = Process(["up", "--port", "0", "--node-port", "0"], home, tmp_path / "up.log",
                 {"LLMLB_ADMIN_PASSWORD": "s3cret"})  # fmt: skip
    try:
        assert up.proc.stdout is not None
        lines: list[str] = []
        while not any("try:" in line for line in lines):
            line = up.proc.stdout.readline().decode()
            assert line, up.log_tail()
            lines.append(line)
        curl = up.proc.stdout.readline().decode().strip()
        assert any(f"llmlb is up: {up.url}" in line for line in lines)
        assert any(f"dashboard: {up.url}/dashboard" in line for line in lines)
        assert curl.startswith(f"curl -s {up.url}/v1/chat/completions")
        # The printed curl line works as printed (run it through a shell, as a user pastes it).
        answer = subprocess.run(curl, shell=True, capture_output=True, text=True, timeout=60)
        assert "choices" in json.loads(answer.stdout)

        with httpx.Client(base_url=up.url, timeout=60) as http:
            question = [{"role": "user", "content": "What is the capital of France?"}]
            body = {
                "model": "gemma-3-270m",
                "max_tokens": 8,
                "temperature": 0,
                "messages": question,
            }
            reply = http.post("/v1/chat/completions", json=body)
            assert "Paris" in reply.json()["choices"][0]["message"]["content"]

        remote = ["--router", up.url]
        status = json.loads(
            llmlb(home, "status", *remote, "--json", env={"LLMLB_ADMIN_PASSWORD": "s3cret"}).stdout
        )
        assert status["health"]["status"] == "ok"
        [node] = status["nodes"]
        assert node["status"] == "ready" and node["name"] == "local"
        assert "gemma-3-270m" in node["models_on_disk"]

        denied = llmlb(home, "nodes", "list", *remote)  # no admin password
        assert denied.returncode == 1 and "401" in denied.stderr

        # Local management works on the router's state; the running router sees it.
        drained = llmlb(home, "nodes", "drain", node["id"])
        assert drained.returncode == 0, drained.stderr
        with httpx.Client(base_url=up.url, auth=("admin", "s3cret")) as http:
            wait_until(
                lambda: http.get(f"/api/nodes/{node['id']}").json()["status"] == "draining", 10
            )
        llmlb(home, "nodes", "undrain", node["id"])

        created = llmlb(home, "keys", "create", "ci", "--scope", "api")
        assert created.returncode == 0, created.stderr
        secret = created.stdout.strip()
        assert secret.startswith("llmlb_")
        listed = json.loads(llmlb(home, "keys", "list", "--json").stdout)
        assert {"ci", "default node token"} <= {k["name"] for k in listed}
        assert secret not in json.dumps(listed)
        with httpx.Client(base_url=up.url, timeout=60) as http:
            wait_until(lambda: http.get("/v1/models").status_code == 401, 10)
            ok = http.get("/v1/models", headers={"authorization": f"Bearer {secret}"})
            assert ok.status_code == 200
        key_id = next(k["id"] for k in listed if k["name"] == "ci")
        assert llmlb(home, "keys", "revoke", key_id).returncode == 0

        children = psutil.Process(up.proc.pid).children(recursive=True)
        assert children, "llmlb up runs its node as a child process"
    finally:
        code = up.stop(signal.SIGTERM)
    assert code == 0
    left = [c.pid for c in children if c.is_running() and c.status() != psutil.STATUS_ZOMBIE]
    assert not left, f"up exited leaving {left} running:\n{up.log_tail()}"
    assert shlex.split(curl)[0] == "curl"


def test_up_killed_outright_takes_its_node_along(tmp_path: Path) -> None:
    up = Process(
        ["up", "--port", "0", "--node-port", "0"], tmp_path / "home", tmp_path / "up.log", {}
    )
    assert up.proc.stdout is not None
    while "llmlb is up" not in (line := up.proc.stdout.readline().decode()):
        assert line, up.log_tail()
    [node] = psutil.Process(up.proc.pid).children()
    up.stop(signal.SIGKILL)
    node.wait(10)
    assert not node.is_running()
