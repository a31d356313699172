"""The Helm chart (deploy/helm/llmlb), rendered and linted by Helm's own code (helm-python-sdk:
Helm 4 as a library; no helm binary is installable here) and every manifest validated
strictly against Kubernetes' schemas (kubernetes-validate) at the oldest version the chart
supports and the newest known. Then the chart's logic: routers highly available, secrets
that exist, probes on real routes, a config llmlb accepts, nodes on the GPUs, monitoring.
No cluster runs here: nothing is applied."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import helm_python as helm
import kubernetes_validate
import pytest
import yaml
from helm_python import _native
from kubernetes_validate.utils import SchemaNotFoundError, ValidationError

import llmlb
from llmlb.common.settings import CommonSettings, NodeSettings, RouterSettings, load_settings
from llmlb.node.app import create_app as node_app
from llmlb.node.metrics import NodeMetrics
from llmlb.node.service import NodeService
from llmlb.router.app import ROUTES
from llmlb.router.telemetry.metrics import RouterMetrics

CHART = Path(__file__).resolve().parents[2] / "deploy" / "helm" / "llmlb"
KUBERNETES = ("1.25.0", "1.37.0")  # the chart's kubeVersion floor, and the newest known
MONITORING = "monitoring.coreos.com/v1"
CRDS = {"ServiceMonitor", "PrometheusRule"}  # the Prometheus Operator's: no schema here
# Secrets go in Secrets (extraEnv with secretKeyRef), never in the config's ConfigMap.
SECRET_SETTINGS = {"admin_password", "node_token", "database_url", "openai_api_key",
                   "anthropic_api_key", "google_api_key"}  # fmt: skip
DATABASE = {"database": {"existingSecret": "llmlb-database"}}
VARIANTS: dict[str, dict[str, Any]] = {
    "defaults": DATABASE,
    "bundled-postgresql": {"postgresql": {"bundled": True}},
    "amd-statefulset-pvc": {**DATABASE, "node": {"kind": "StatefulSet", "replicas": 3,
                            "gpu": {"vendor": "amd", "count": 2},
                            "store": {"type": "pvc", "size": "500Gi"}}},
    "cpu-everything-on": {**DATABASE, "router": {"replicas": 3, "allowCpuNodes": True},
                          "node": {"gpu": {"vendor": "none"}, "store": {"type": "emptyDir"}},
                          "ingress": {"enabled": True, "className": "nginx",
                                      "tls": [{"hosts": ["llmlb.example.com"],
                                               "secretName": "llmlb-tls"}]},
                          "metrics": {"serviceMonitor": {"enabled": True},
                                      "prometheusRule": {"enabled": True}},
                          "secrets": {"existingSecret": "my-llmlb-secrets"}},
}  # fmt: skip


def render_files(values: dict[str, Any], kube: str = KUBERNETES[-1],
                 apis: tuple[str, ...] = (MONITORING,)) -> dict[str, str]:  # fmt: skip
    """``helm template`` through Helm's library: its render call takes the Kubernetes
    version and the cluster's APIs (the SDK's public render does not; pinned 0.2.2)."""
    with helm.Chart.load(str(CHART)) as chart:
        options = {"name": "demo", "namespace": "llm", "kube_version": f"v{kube}",
                   "api_versions": list(apis), "strict": True}  # fmt: skip
        raw = _native.call_string("helm_render", chart._raw(), json.dumps(values),
                                  json.dumps(options))  # fmt: skip
    return {name: text for name, text in json.loads(raw).items() if text.strip()}


def render(values: dict[str, Any], **how: Any) -> list[dict[str, Any]]:
    files = render_files(values, **how)
    return [doc for name, text in sorted(files.items()) if not name.endswith("NOTES.txt")
            for doc in yaml.safe_load_all(text) if doc]  # fmt: skip


def one(manifests: list[dict[str, Any]], kind: str, name: str | None = None) -> dict[str, Any]:
    found = [m for m in manifests if m["kind"] == kind
             and (name is None or m["metadata"]["name"] == name)]  # fmt: skip
    assert len(found) == 1, f"{kind} {name}: {len(found)} found"
    return found[0]


def pods(manifests: list[dict[str, Any]]) -> list[dict[str, Any]]:
    specs = [m["spec"]["template"]["spec"] for m in manifests
             if m["kind"] in ("Deployment", "DaemonSet", "StatefulSet")]  # fmt: skip
    return specs + [m["spec"] for m in manifests if m["kind"] == "Pod"]


def container(manifests: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    spec = one(manifests, kind, f"demo-llmlb-{name}")["spec"]["template"]["spec"]
    return dict(spec["containers"][0])


def env_of(container: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container["env"]}


def test_helm_lints_the_chart_clean() -> None:
    found = helm.lint(str(CHART), DATABASE, strict=True, kube_version="v1.25.0",
                      skip_schema_validation=False)  # fmt: skip
    assert found["errors"] == [] and [m for m in found["messages"] if m["severity"] >= 2] == []


@pytest.mark.parametrize("kube", KUBERNETES)
@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_every_manifest_is_valid_kubernetes(variant: str, kube: str) -> None:
    manifests = render(VARIANTS[variant], kube=kube)
    problems = []
    for manifest in manifests:
        what = f"{manifest['kind']}/{manifest['metadata']['name']}"
        try:
            kubernetes_validate.validate(manifest, kube, strict=True)
        except ValidationError as exc:
            problems.append(f"{what}: {'.'.join(map(str, exc.path))}: {exc.message}")
        except SchemaNotFoundError:
            if manifest["kind"] not in CRDS:  # a removed API is "not found" too
                problems.append(f"{what}: no schema for {manifest['apiVersion']}")
    assert problems == []


def test_routers_run_highly_available_and_roll_without_a_gap() -> None:
    manifests = render(DATABASE)
    router = one(manifests, "Deployment")
    assert router["spec"]["replicas"] == 2
    assert router["spec"]["strategy"]["rollingUpdate"] == {"maxUnavailable": 0, "maxSurge": 1}
    assert one(manifests, "PodDisruptionBudget")["spec"]["minAvailable"] == 1
    pod = router["spec"]["template"]["spec"]
    assert pod["terminationGracePeriodSeconds"] > RouterSettings.model_fields[
        "shutdown_grace_seconds"].default  # a stop lets the drain finish  # fmt: skip
    assert (
        one(render({**DATABASE, "router": {"replicas": 5}}), "Deployment")["spec"]["replicas"] == 5
    )
    single = render({**DATABASE, "router": {"replicas": 1}})
    assert not [m for m in single if m["kind"] == "PodDisruptionBudget"]  # would block drains


def test_without_a_database_the_chart_refuses_with_the_reason() -> None:
    with pytest.raises(helm.HelmError, match="need PostgreSQL"):
        render({})


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_every_secret_a_pod_reads_is_made_by_the_chart_or_named_by_the_operator(
    variant: str,
) -> None:
    values = VARIANTS[variant]
    manifests = render(values)
    made = {m["metadata"]["name"]: set(m["data"]) for m in manifests if m["kind"] == "Secret"}
    named = {values.get("database", {}).get("existingSecret"),
             values.get("secrets", {}).get("existingSecret")} - {None}  # fmt: skip
    read = [e["valueFrom"]["secretKeyRef"] for pod in pods(manifests)
            for c in pod["containers"] for e in c.get("env", [])
            if "secretKeyRef" in e.get("valueFrom", {})]  # fmt: skip
    assert read
    for ref in read:
        assert ref["name"] in named or ref["key"] in made.get(ref["name"], set()), ref
    for secret in (m for m in manifests if m["kind"] == "Secret"):  # kept on uninstall
        assert secret["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"


def test_the_probes_ask_routes_the_router_and_the_node_serve(tmp_path: Path) -> None:
    manifests = render(DATABASE)
    router_paths = {route.path for route in ROUTES if "GET" in (route.methods or ())}
    app = node_app(NodeService(NodeSettings(home=tmp_path, allow_cpu=True), [], 8 << 30))
    node_paths = {route.path for route in app.routes}  # type: ignore[attr-defined]
    for kind, name, served in (("Deployment", "router", router_paths),
                               ("DaemonSet", "node", node_paths)):  # fmt: skip
        probes = container(manifests, kind, name)
        paths = {probes[p]["httpGet"]["path"] for p in ("startupProbe", "livenessProbe",
                                                        "readinessProbe")}  # fmt: skip
        assert paths <= served, (name, paths - served)
        assert probes["startupProbe"]["httpGet"]["path"] == "/startup"
    assert container(manifests, "Deployment", "router")["readinessProbe"]["httpGet"][
        "path"] == "/ready"  # a router whose database is away takes no traffic  # fmt: skip


def test_the_rendered_config_is_one_llmlb_accepts(tmp_path: Path) -> None:
    values = {**DATABASE, "config": {
        "shared": {"log_level": "debug"},
        "router": {"queue_size": 10, "balancer": "prefix_affinity",
                   "viewer_limits": {"requests_per_minute": 5, "models": ["a", "b"]}},
        "node": {"parallel": 2, "ctx_size": 2048}}}  # fmt: skip
    config = one(render(values), "ConfigMap")["data"]["config.toml"]
    (tmp_path / "config.toml").write_text(config)
    router = load_settings(RouterSettings, {}, tmp_path / "config.toml")
    node = load_settings(NodeSettings, {}, tmp_path / "config.toml")
    assert (router.queue_size, router.balancer, router.log_level) == (
        10,
        "prefix_affinity",
        "debug",
    )
    assert router.viewer_limits.requests_per_minute == 5
    assert router.viewer_limits.models == ["a", "b"]
    assert (node.parallel, node.ctx_size, node.log_level) == (2, 2048, "debug")


def test_the_schema_knows_every_llmlb_setting_and_refuses_anything_else() -> None:
    schema = json.loads((CHART / "values.schema.json").read_text())["properties"]["config"]
    allowed = {part: set(schema["properties"][part]["propertyNames"]["enum"])
               for part in ("shared", "router", "node")}  # fmt: skip
    assert allowed == {"shared": set(CommonSettings.model_fields) - SECRET_SETTINGS,
                       "router": set(RouterSettings.model_fields) - SECRET_SETTINGS,
                       "node": set(NodeSettings.model_fields) - SECRET_SETTINGS}  # fmt: skip
    wrong: dict[str, Any]
    for wrong in ({"config": {"router": {"queue_sise": 10}}}, {"router": {"replicas": "two"}},
                  {"node": {"gpu": {"vendor": "intel"}}}, {"routers": {}},
                  {"config": {"router": {"admin_password": "in a ConfigMap"}}}):  # fmt: skip
        with pytest.raises(helm.HelmValuesError):
            render({**DATABASE, **wrong})


def test_gpu_nodes_ask_for_their_vendors_gpus_and_cpu_nodes_for_none() -> None:
    for vendor, resource, suffix, label in (
        ("nvidia", "nvidia.com/gpu", "-cuda", "nvidia.com/gpu.present"),  # GPU feature discovery
        ("amd", "amd.com/gpu", "-rocm", "feature.node.kubernetes.io/amd-gpu"),  # AMD's operator
    ):
        manifests = render({**DATABASE, "node": {"gpu": {"vendor": vendor, "count": 2}}})
        node = container(manifests, "DaemonSet", "node")
        assert node["resources"]["limits"] == {resource: 2}
        assert node["image"].endswith(f":{llmlb.__version__}{suffix}")
        spec = one(manifests, "DaemonSet")["spec"]["template"]["spec"]
        assert spec["nodeSelector"] == {label: "true"}
        assert spec["tolerations"][0]["key"] == resource
        assert "--allow-cpu" not in node["args"]
    cpu = render({**DATABASE, "node": {"gpu": {"vendor": "none"}}})
    node = container(cpu, "DaemonSet", "node")
    assert "limits" not in node["resources"] and "--allow-cpu" in node["args"]
    assert "nodeSelector" not in one(cpu, "DaemonSet")["spec"]["template"]["spec"]


def test_a_statefulset_of_nodes_gets_a_volume_each() -> None:
    manifests = render(VARIANTS["amd-statefulset-pvc"])
    nodes = one(manifests, "StatefulSet", "demo-llmlb-node")
    assert nodes["spec"]["replicas"] == 3
    claim = nodes["spec"]["volumeClaimTemplates"][0]
    assert claim["spec"]["resources"]["requests"]["storage"] == "500Gi"
    assert env_of(nodes["spec"]["template"]["spec"]["containers"][0])["LLMLB_NODE_NAME"] == {
        "fieldRef": {"fieldPath": "metadata.name"}}  # fmt: skip
    shared_machine = render({**DATABASE, "node": {"kind": "StatefulSet", "replicas": 2}})
    pod = one(shared_machine, "StatefulSet", "demo-llmlb-node")["spec"]["template"]["spec"]
    for part in (pod["containers"][0], pod["initContainers"][0]):  # a folder each on the host
        store = next(m for m in part["volumeMounts"] if m["name"] == "store")
        assert store["subPathExpr"] == "$(POD_NAME)"
        assert env_of(part)["POD_NAME"] == {"fieldRef": {"fieldPath": "metadata.name"}}
    with pytest.raises(helm.HelmError, match=r"needs node\.kind=StatefulSet"):
        render({**DATABASE, "node": {"store": {"type": "pvc"}}})


def test_nodes_join_every_ready_router_through_the_headless_service() -> None:
    manifests = render(DATABASE)
    router = env_of(container(manifests, "DaemonSet", "node"))["LLMLB_ROUTER"]
    match = re.fullmatch(r"dns\+http://([\w-]+)\.llm\.svc:32768", router)
    assert match, router
    headless = one(manifests, "Service", match.group(1))
    assert headless["spec"]["clusterIP"] == "None"
    pod_labels = one(manifests, "Deployment")["spec"]["template"]["metadata"]["labels"]
    assert headless["spec"]["selector"].items() <= pod_labels.items()
    settings = NodeSettings(router=router)
    assert settings.router_groups == [router.removeprefix("dns+")]


def test_monitoring_scrapes_each_router_and_node_once_and_alerts_on_real_metrics() -> None:
    manifests = render(VARIANTS["cpu-everything-on"])
    monitor = one(manifests, "ServiceMonitor")
    wanted = monitor["spec"]["selector"]["matchLabels"]
    scraped = [m for m in manifests if m["kind"] == "Service"
               and wanted.items() <= m["metadata"]["labels"].items()]  # fmt: skip
    components = sorted(s["spec"]["selector"]["app.kubernetes.io/component"] for s in scraped)
    assert components == ["node", "router"]  # once each: not also through the router Service
    # (a router with TLS declares its certificate's expiry too)
    router = RouterMetrics(lambda: [], 10, tls_cert=Path("/no/such/cert.pem"))
    declared = set(re.findall(r"^# HELP (\S+)", router.render().decode()
                              + NodeMetrics(idle_pool).render().decode(), re.M))  # fmt: skip
    groups = one(manifests, "PrometheusRule")["spec"]["groups"]
    rules = [rule for group in groups for rule in group["rules"]]
    # The fleet's group is deploy/prometheus/alerts.yml's, as it is.
    standalone = yaml.safe_load((CHART.parent.parent / "prometheus" / "alerts.yml").read_text())
    assert groups[0] == standalone["groups"][0]
    for rule in rules:
        for name in re.findall(r"\b(llmlb_\w+)", rule["expr"]):
            assert re.sub(r"_(bucket|sum|count)$", "", name) in declared, (rule["alert"], name)
    without = render(VARIANTS["cpu-everything-on"], apis=())  # a cluster without the operator
    assert not [m for m in without if m["kind"] in CRDS]


def idle_pool() -> dict[str, Any]:
    return {"models": [], "memory_used": 0, "memory_budget": 0}


def test_the_notes_give_the_endpoint_and_the_first_admin_steps() -> None:
    notes = render_files(DATABASE)["llmlb/templates/NOTES.txt"]
    assert "http://demo-llmlb-router.llm.svc:32768" in notes
    assert "port-forward svc/demo-llmlb-router" in notes
    assert "get secret demo-llmlb-secrets -o jsonpath='{.data.admin-password}'" in notes
    assert "exec deploy/demo-llmlb-router -- llmlb keys create" in notes


def test_the_chart_deploys_this_llmlb() -> None:
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    assert chart["appVersion"] == llmlb.__version__
