"""The chart's router pod, run: its rendered Deployment, ConfigMap and Secrets played with
`podman kube play` (no Kubernetes cluster here), on a network with a PostgreSQL stand-in
(tests/deploy/images). It starts under the chart's security context (user 10001, read-only
root, capabilities dropped), reads the rendered config.toml, reaches its database, and
answers its probes. podman 4.3 cannot read Secrets in kube play (it stores the Secret as
YAML and reads it back as JSON), so their values are put in the environment directly."""

from __future__ import annotations

import base64
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.deploy import containers
from tests.deploy.containers import podman
from tests.deploy.test_helm import render
from tests.support import wait_until


def inline_secrets(manifests: list[dict[str, Any]]) -> list[dict[str, Any]]:
    secrets = {m["metadata"]["name"]: {k: base64.b64decode(v).decode() for k, v in
                                       m["data"].items()}
               for m in manifests if m["kind"] == "Secret"}  # fmt: skip
    for manifest in manifests:
        for container in manifest.get("spec", {}).get("template", {}).get("spec", {}).get(
                "containers", []):  # fmt: skip
            for variable in container.get("env", []):
                ref = variable.get("valueFrom", {}).get("secretKeyRef")
                if ref:
                    del variable["valueFrom"]
                    variable["value"] = secrets[ref["name"]][ref["key"]]
    return [m for m in manifests if m["kind"] != "Secret"]


@pytest.fixture
def network() -> Iterator[str]:
    name = f"llmlb-play-{uuid.uuid4().hex[:6]}"
    podman("network", "create", name)
    yield name
    podman("network", "rm", "-f", name, check=False)


def test_the_rendered_router_pod_runs_under_the_charts_security_context(
    image: str, network: str, tmp_path: Path
) -> None:
    database = f"pg-{network}"
    podman("run", "-d", "--name", database, "--network", network, "-e", "POSTGRES_USER=llmlb",
           "-e", "POSTGRES_PASSWORD=played", "-e", "POSTGRES_DB=llmlb",
           containers.build_helper_image("postgres"))  # fmt: skip
    repository, tag = image.rsplit(":", 1)
    url = f"postgresql+asyncpg://llmlb:played@{database}:5432/llmlb"
    manifests = render(
        {
            "image": {"repository": repository, "tag": tag, "pullPolicy": "Never"},
            "database": {"existingSecret": "db"},
            "router": {"replicas": 1},
        }
    )
    manifests.append({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "db"},
                      "data": {"url": base64.b64encode(url.encode()).decode()}})  # fmt: skip
    played = [m for m in inline_secrets(manifests) if m["kind"] in ("ConfigMap", "Deployment")]
    kube = tmp_path / "router.yaml"
    kube.write_text(yaml.safe_dump_all(sorted(played, key=lambda m: m["kind"] != "ConfigMap")))
    router = "demo-llmlb-router-pod-0-router"
    try:
        podman("kube", "play", "--network", network, str(kube), timeout=180)

        def healthy() -> bool:
            return podman("exec", router, "llmlb", "health", check=False).returncode == 0

        wait_until(healthy, timeout=120, step=0.5)
        for probe in ("/startup", "/ready"):  # as the kubelet asks them, from outside the pod
            asked = podman("exec", database, "python3", "-c", "import sys, urllib.request; "
                           "print(urllib.request.urlopen(sys.argv[1]).status)",
                           f"http://demo-llmlb-router-pod-0:32768{probe}")  # fmt: skip
            assert asked.stdout.strip() == "200", probe
        assert podman("exec", router, "id", "-u").stdout.strip() == "10001"
        assert podman("exec", router, "touch", "/opt/llmlb/x", check=False).returncode != 0
        logs = podman("logs", router).stderr + podman("logs", router).stdout
        assert '"msg":"Application startup complete."' in logs  # log_format json: config.toml
    finally:
        podman("kube", "down", str(kube), check=False, timeout=120)
        podman("rm", "-f", "-t", "0", database, check=False)
