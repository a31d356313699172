"""An alert that really fires: a real Prometheus (Debian's, from the stand-in image, on the
host's network) scrapes a real router and node every second with llmlb's own rules file
(``deploy/prometheus/alerts.yml``, its waits shortened), the node is killed, and the alerts
for it go from quiet to firing, as Prometheus's API reports them."""

from __future__ import annotations

import signal
import socket
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from llmlb.models.smallmodel import SMALL_MODEL_NAME
from tests.deploy import containers
from tests.deploy.containers import podman
from tests.support import Process, start_fleet_node, start_router, wait_until

RULES = Path(__file__).resolve().parents[2] / "deploy" / "prometheus" / "alerts.yml"
SHORTENED = {"LlmlbNodeOffline": "2s", "LlmlbModelUnavailable": "2s", "LlmlbNoReadyNode": "2s"}


def free_port() -> int:
    with socket.socket() as sock:  # (Prometheus binds it itself: a port free a moment ago)
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def port_of(process: Process) -> str:
    return process.url.rsplit(":", 1)[1]


@dataclass
class Prometheus:
    folder: Path  # its configuration, mounted at /etc/llmlb
    image: str
    name: str  # its container's
    port: int

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        self.folder.chmod(0o755)
        podman("run", "-d", "--rm", "--name", self.name, "--network", "host",
               "-v", f"{self.folder}:/etc/llmlb:ro", self.image,
               "--config.file=/etc/llmlb/prometheus.yml", "--storage.tsdb.path=/prometheus",
               f"--web.listen-address=127.0.0.1:{self.port}")  # fmt: skip


@pytest.fixture
def prometheus(tmp_path: Path) -> Iterator[Prometheus]:
    """Prometheus to start once its configuration is written; removed after."""
    assert not containers.missing_tools(), "make test installs them (make container-tools)"
    server = Prometheus(tmp_path, containers.build_helper_image("prometheus"),
                        f"llmlb-test-prometheus-{uuid.uuid4().hex[:8]}", free_port())  # fmt: skip
    yield server
    podman("rm", "-f", server.name, check=False)


def alerts(url: str) -> dict[str, list[dict[str, Any]]]:
    """Prometheus's alerts by name (pending and firing)."""
    found: dict[str, list[dict[str, Any]]] = {}
    try:
        answer = httpx.get(f"{url}/api/v1/alerts", timeout=5).json()["data"]["alerts"]
    except (httpx.HTTPError, ValueError, KeyError):
        return found
    for alert in answer:
        found.setdefault(alert["labels"]["alertname"], []).append(alert)
    return found


def firing(url: str, name: str, **labels: str) -> bool:
    return any(a["state"] == "firing" and labels.items() <= a["labels"].items()
               for a in alerts(url).get(name, []))  # fmt: skip


def test_killing_a_node_fires_its_alerts_in_a_real_prometheus(
    model_home: Path, tmp_path_factory: pytest.TempPathFactory,
    prometheus: Prometheus,
) -> None:  # fmt: skip
    folder, url = prometheus.folder, prometheus.url
    home = tmp_path_factory.mktemp("firing")
    router = start_router(home, home, "--allow-cpu-nodes", "--heartbeat-interval", "1",
                          env={"LLMLB_AUTO_DISTRIBUTE": "none"})  # fmt: skip
    node = start_fleet_node(model_home, home, router, home, "doomed", "--parallel", "1")
    try:
        with router.client() as http:
            wait_until(lambda: any(n["status"] == "ready"
                                   for n in http.get("/api/nodes").json()["data"]), 60)  # fmt: skip
        rules = yaml.safe_load(RULES.read_text())
        for rule in rules["groups"][0]["rules"]:
            rule["for"] = SHORTENED.get(rule["alert"], rule["for"])
        (folder / "alerts.yml").write_text(yaml.safe_dump(rules))
        (folder / "prometheus.yml").write_text(yaml.safe_dump({
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "rule_files": ["/etc/llmlb/alerts.yml"],
            "scrape_configs": [
                {"job_name": "llmlb-router",
                 "static_configs": [{"targets": [f"127.0.0.1:{port_of(router)}"]}]},
                {"job_name": "llmlb-node",
                 "static_configs": [{"targets": [f"127.0.0.1:{port_of(node)}"]}]},
            ],
        }))  # fmt: skip
        prometheus.start()

        def both_up() -> bool:
            try:
                targets = httpx.get(f"{url}/api/v1/targets", timeout=5).json()["data"]
            except (httpx.HTTPError, ValueError, KeyError):
                return False
            return [t["health"] for t in targets["activeTargets"]] == ["up", "up"]

        wait_until(both_up, timeout=60)
        with router.client() as http:  # a request, so that there are latency series too
            ask = {"model": SMALL_MODEL_NAME, "max_tokens": 2,
                   "messages": [{"role": "user", "content": "hi"}]}  # fmt: skip
            assert http.post("/v1/chat/completions", json=ask).status_code == 200
        wait_until(lambda: "LlmlbNodeOffline" not in alerts(url) and bool(
            httpx.get(f"{url}/api/v1/rules", timeout=5).json()["data"]["groups"]), 30)  # fmt: skip
        assert not any(a["state"] == "firing" for group in alerts(url).values() for a in group)

        killed_at = time.monotonic()
        node.stop(signal.SIGKILL)
        wait_until(lambda: firing(url, "LlmlbNodeOffline", node="doomed"), timeout=60)
        took = time.monotonic() - killed_at
        wait_until(lambda: firing(url, "LlmlbModelUnavailable", model=SMALL_MODEL_NAME), 30)
        wait_until(lambda: firing(url, "LlmlbNoReadyNode"), 30)
        print(f"LlmlbNodeOffline firing {took:.1f} s after the node was killed")
        assert took < 60
    finally:
        node.stop()
        router.stop()
