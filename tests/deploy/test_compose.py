"""The compose stack (deploy/compose) brought up here with podman-compose, unmodified: two
routers on PostgreSQL behind nginx, a node, Prometheus. The registry images it names
(postgres, nginx, prom/prometheus) are replaced by stand-ins made from Debian's packages
with the same interface (tests/deploy/images), through the variables the compose file reads.
Grafana has no Debian package and no registry answers here: its provisioning is checked
against the stack instead (the datasource is the stack's Prometheus, the dashboard's
metrics are the ones the routers export)."""

from __future__ import annotations

import json
import random
import re
import secrets
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from tests.deploy import containers
from tests.deploy.containers import podman
from tests.support import free_port, wait_until

REPO = Path(__file__).resolve().parents[2]
STACK = REPO / "deploy" / "compose"
# Grafana is the one service not started (see above).
SERVICES = ("postgres", "router-a", "router-b", "proxy", "node", "prometheus")
QUESTION = {
    "model": "gemma-3-270m", "temperature": 0, "max_tokens": 12,
    "messages": [{"role": "user", "content": "What is the capital of France?"}],
}  # fmt: skip


@dataclass
class Stack:
    project: str
    env_file: Path
    environment: dict[str, str]
    url: str
    prometheus: str
    key: str = ""

    def compose(self, *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
        command = [str(Path(sys.executable).parent / "podman-compose"), "--env-file",
                   str(self.env_file), "-p", self.project, "-f", str(STACK / "compose.yaml"),
                   *args]  # fmt: skip
        done = subprocess.run(command, capture_output=True, text=True, cwd=STACK,
                              env=self.environment, timeout=timeout)  # fmt: skip
        assert done.returncode == 0, done.stdout + done.stderr
        return done

    def container(self, service: str) -> str:
        return f"{self.project}_{service}_1"

    def logs(self, service: str) -> str:
        done = podman("logs", self.container(service), check=False)
        return done.stdout + done.stderr

    def ask(self) -> httpx.Response:
        return httpx.post(f"{self.url}/v1/chat/completions", json=QUESTION, timeout=120,
                          headers={"authorization": f"Bearer {self.key}"})  # fmt: skip

    def query(self, promql: str) -> list[dict[str, Any]]:
        answer = httpx.get(f"{self.prometheus}/api/v1/query", params={"query": promql})
        return list(answer.json()["data"]["result"])


@pytest.fixture(scope="module")
def stack(image: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    stand_ins = {name: containers.build_helper_image(name)
                 for name in ("postgres", "prometheus", "nginx")}  # fmt: skip
    port, prometheus_port = free_port(), free_port()
    subnet = random.randrange(100, 250)
    env_file = tmp_path_factory.mktemp("compose") / ".env"
    env_file.write_text(
        f"POSTGRES_PASSWORD={secrets.token_hex(16)}\nLLMLB_ADMIN_PASSWORD={secrets.token_hex(16)}\n"
        f"LLMLB_NODE_TOKEN={secrets.token_hex(32)}\nGRAFANA_ADMIN_PASSWORD=unused\n"
        f"LLMLB_PORT={port}\nPROMETHEUS_PORT={prometheus_port}\nGRAFANA_PORT={free_port()}\n"
        f"LLMLB_SUBNET=10.89.{subnet}.0/24\nLLMLB_PROXY_ADDRESS=10.89.{subnet}.10\n"
    )
    environment = {**containers.env(), "LLMLB_IMAGE": image,
                   "POSTGRES_IMAGE": stand_ins["postgres"], "NGINX_IMAGE": stand_ins["nginx"],
                   "PROMETHEUS_IMAGE": stand_ins["prometheus"]}  # fmt: skip
    stack = Stack(f"llmlbtest{uuid.uuid4().hex[:6]}", env_file, environment,
                  f"http://127.0.0.1:{port}", f"http://127.0.0.1:{prometheus_port}")  # fmt: skip
    try:
        stack.compose("up", "-d", *SERVICES)
        # An API key, made as the compose file's header says, on one router's command line.
        wait_until(lambda: "Application startup complete" in stack.logs("router-a"), 120, 0.5)
        made = podman("exec", stack.container("router-a"), "llmlb", "keys", "create", "test")
        stack.key = re.findall(r"llmlb_[\w-]+", made.stdout + made.stderr)[-1]
        wait_until(lambda: _answers(stack), timeout=240, step=1)
        yield stack
    finally:
        subprocess.run([str(Path(sys.executable).parent / "podman-compose"), "--env-file",
                        str(env_file), "-p", stack.project, "-f", str(STACK / "compose.yaml"),
                        "down", "-v", "-t", "10"], capture_output=True, cwd=STACK,
                       env=environment, timeout=300)  # fmt: skip


def _answers(stack: Stack) -> bool:
    try:
        return stack.ask().status_code == 200
    except httpx.HTTPError:
        return False


def test_a_chat_through_the_stack_is_answered_by_both_routers(stack: Stack) -> None:
    for _ in range(6):
        answer = stack.ask()
        assert answer.status_code == 200, answer.text
        assert "Paris" in answer.json()["choices"][0]["message"]["content"]
        assert answer.headers["x-llmlb-node"] == "node-1"
    for router in ("router-a", "router-b"):  # nginx spread them; each router called the node
        assert "POST /v1/chat/completions 200" in stack.logs(router), router


def test_prometheus_scrapes_the_routers_and_the_node(stack: Stack) -> None:
    def targets_up() -> set[str]:
        active = httpx.get(f"{stack.prometheus}/api/v1/targets").json()["data"]["activeTargets"]
        return {t["labels"]["instance"] for t in active if t["health"] == "up"}

    wait_until(lambda: targets_up() == {"router-a:32768", "router-b:32768", "node:32769"},
               timeout=90, step=1)  # fmt: skip
    stack.ask()
    wait_until(lambda: {r["metric"]["instance"] for r in stack.query(
        "sum by (instance) (llmlb_requests_total)")} == {"router-a:32768", "router-b:32768"},
        timeout=90, step=1)  # fmt: skip


def test_grafana_is_provisioned_with_the_stacks_prometheus_and_llmlbs_dashboard(
    stack: Stack,
) -> None:
    compose = yaml.safe_load((STACK / "compose.yaml").read_text())
    grafana = compose["services"]["grafana"]
    mounts = dict(volume.rsplit(":", 2)[:2] for volume in grafana["volumes"])
    provisioning = STACK / mounts["./grafana/provisioning"].replace(
        "/etc/grafana/provisioning", "grafana/provisioning"
    )
    source = yaml.safe_load((provisioning / "datasources/prometheus.yaml").read_text())
    assert source["datasources"][0]["url"] == "http://prometheus:9090"
    assert source["datasources"][0]["isDefault"] is True
    provider = yaml.safe_load((provisioning / "dashboards/llmlb.yaml").read_text())
    dashboards = provider["providers"][0]["options"]["path"]
    assert mounts["../../docs/grafana"] == dashboards  # the folder compose mounts there
    dashboard = json.loads((REPO / "docs/grafana/llmlb.json").read_text())
    exported = httpx.get(f"{stack.url}/metrics", timeout=10).text  # a router's, through nginx
    node_metrics = podman(
        "exec",
        stack.container("node"),
        "python3",
        "-c",
        "import urllib.request; print(urllib.request.urlopen("
        "'http://127.0.0.1:32769/metrics').read().decode())",
    ).stdout
    queried = {name for panel in dashboard["panels"] for target in panel.get("targets", [])
               for name in re.findall(r"\bllmlb_\w+", target["expr"])}  # fmt: skip
    assert queried
    for name in queried:  # declared, even a labelled counter nothing has counted yet
        family = re.sub(r"_(bucket|sum|count)$", "", name)
        assert f"# HELP {family} " in exported + node_metrics, name


def test_the_stack_keeps_answering_while_a_router_is_stopped(stack: Stack) -> None:
    podman("stop", "-t", "45", stack.container("router-a"), timeout=90)
    try:
        for _ in range(4):  # nginx skips the stopped router before sending it anything
            answer = stack.ask()
            assert answer.status_code == 200, answer.text
            assert "Paris" in answer.json()["choices"][0]["message"]["content"]
    finally:
        podman("start", stack.container("router-a"), timeout=90)


def compose_config(env_file: Path, *files: str) -> subprocess.CompletedProcess[str]:
    command = [str(Path(sys.executable).parent / "podman-compose"), "--env-file", str(env_file)]
    for name in files:
        command += ["-f", str(STACK / name)]
    return subprocess.run([*command, "config"], capture_output=True, text=True, cwd=STACK,
                          env=containers.env(), timeout=60)  # fmt: skip


def test_the_gpu_override_puts_the_node_on_nvidia_gpus_without_a_cpu_fallback(
    tmp_path: Path,
) -> None:
    env_file = tmp_path / ".env"
    filled = re.sub(r"^(\w+(?:PASSWORD|TOKEN))=$", lambda m: m.group(1) + "=" + "x" * 40,
                    (STACK / ".env.example").read_text(), flags=re.M)  # fmt: skip
    env_file.write_text(filled)
    merged = yaml.safe_load(compose_config(env_file, "compose.yaml", "compose.gpu.yaml").stdout)
    node = merged["services"]["node"]
    assert node["build"]["args"] == ["BASE=nvidia/cuda:12.6.3-runtime-ubuntu24.04", "ENGINE=cuda"]
    assert node["deploy"]["resources"]["reservations"]["devices"][0]["driver"] == "nvidia"
    assert "--allow-cpu" not in node["command"]
    for router in ("router-a", "router-b"):
        assert merged["services"][router]["environment"]["LLMLB_ALLOW_CPU_NODES"] == "false"


def test_the_example_env_file_must_be_filled_in_before_the_stack_starts(tmp_path: Path) -> None:
    env_file = tmp_path / ".env"
    env_file.write_text((STACK / ".env.example").read_text())
    refused = compose_config(env_file, "compose.yaml")
    assert refused.returncode != 0
    assert "set it in .env" in refused.stdout + refused.stderr
