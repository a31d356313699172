"""What an operator reads in the logs of a running fleet, changed without a restart: the
router's access log (a JSON line per client request with its request id, key, model, node,
status, latency and tokens; no body), turned on by the settings or at runtime, and any
logger's level on the router or one of its nodes through the admin API and ``llmlb
log-level``; a logger whose debug lines carry secrets stays at info."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from llmlb.models.smallmodel import SMALL_MODEL_NAME
from tests.support import Process, start_fleet_node, start_router, wait_until

SECRET_QUESTION = "What is the capital of France? (a question no log may show)"


@pytest.fixture(scope="module")
def fleet(model_home: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[
    tuple[Process, Process]]:  # fmt: skip
    home = tmp_path_factory.mktemp("runtime-logs")
    router = start_router(home, home, "--allow-cpu-nodes", "--heartbeat-interval", "1",
                          "--log-format", "json",
                          env={"LLMLB_AUTO_DISTRIBUTE": "none"})  # fmt: skip
    node = start_fleet_node(model_home, home, router, home, "logs-node", "--parallel", "1")
    with router.client() as http:
        wait_until(lambda: any(n["status"] == "ready"
                               for n in http.get("/api/nodes").json()["data"]), 60)  # fmt: skip
    yield router, node
    node.stop()
    router.stop()


def access_lines(router: Process) -> list[dict[str, Any]]:
    lines = []
    for line in router.log_path.read_text(errors="replace").splitlines():
        if line.startswith("{") and '"llmlb.access"' in line:
            lines.append(orjson.loads(line))
    return lines


def ask(router: Process) -> str:
    with router.client() as http:
        answer = http.post("/v1/chat/completions", json={
            "model": SMALL_MODEL_NAME, "max_tokens": 3,
            "messages": [{"role": "user", "content": SECRET_QUESTION}]})  # fmt: skip
    assert answer.status_code == 200, answer.text
    return answer.headers["x-request-id"]


def log_level(router: Process, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "llmlb", "log-level", *args,
                           "--router", router.url], capture_output=True, text=True,
                          timeout=60)  # fmt: skip


def test_the_access_log_is_turned_on_and_off_while_the_router_runs(
    fleet: tuple[Process, Process],
) -> None:
    router, _ = fleet
    quiet = ask(router)
    turned_on = log_level(router, "llmlb.access", "info")
    assert turned_on.returncode == 0, turned_on.stderr
    assert "llmlb.access: info" in turned_on.stdout
    logged = ask(router)
    wait_until(lambda: any(line["request_id"] == logged for line in access_lines(router)))
    [line] = [line for line in access_lines(router) if line["request_id"] == logged]
    assert line["level"] == "info" and line["endpoint"] == "chat"
    assert line["model"] == SMALL_MODEL_NAME and line["status"] == 200
    assert line["node"] and line["provider"] == "local" and line["latency_ms"] > 0
    assert line["tokens_in"] > 0 and 0 < line["tokens_out"] <= 3
    assert not any(line["request_id"] == quiet for line in access_lines(router))
    assert SECRET_QUESTION not in router.log_path.read_text(errors="replace")  # no bodies
    assert log_level(router, "llmlb.access", "warning").returncode == 0
    after = ask(router)
    ask(router)  # (a second request: had the first been logged, it would be by now)
    assert not any(line["request_id"] == after for line in access_lines(router))


def test_levels_on_the_router_and_a_node_and_what_is_refused(
    fleet: tuple[Process, Process],
) -> None:
    router, _ = fleet
    shown = log_level(router)
    assert shown.returncode == 0 and shown.stdout.startswith("root: info"), shown.stdout
    with router.client() as http:
        node_id = http.get("/api/nodes").json()["data"][0]["id"]
        on_node = http.put(f"/api/nodes/{node_id}/logs/levels",
                           json={"logger": "llmlb.node", "level": "debug"})  # fmt: skip
        assert on_node.status_code == 200, on_node.text
        assert on_node.json()["data"]["llmlb.node"] == "debug"
        back = log_level(router, "--node", node_id, "llmlb.node", "inherit")
        assert back.returncode == 0 and "llmlb.node" not in back.stdout, back.stdout
        assert "llmlb.node: debug" not in log_level(router).stdout  # (the router's unchanged)
        secret = http.put("/api/logs/levels", json={"logger": "aiosqlite", "level": "debug"})
        assert secret.status_code == 400 and "secrets" in secret.json()["error"]["message"]
        made_up = http.put("/api/logs/levels", json={"logger": "no.such.logger", "level": "info"})
        assert made_up.status_code == 400 and made_up.json()["error"]["param"] == "logger"
        bad = http.put("/api/logs/levels", json={"logger": "llmlb", "level": "loud"})
        assert bad.status_code == 400 and bad.json()["error"]["param"] == "level"
        on_node = http.put(f"/api/nodes/{node_id}/logs/levels",
                           json={"logger": "aiosqlite", "level": "debug"})  # fmt: skip
        assert on_node.status_code == 400  # the node's refusal, passed on
    refused = log_level(router, "aiosqlite", "debug")
    assert refused.returncode == 1 and "secrets" in refused.stderr + refused.stdout
