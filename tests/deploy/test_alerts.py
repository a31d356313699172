"""The chart's alerts fire when they should and stay quiet otherwise: its PrometheusRule,
rendered, checked and unit-tested by promtool (Debian's Prometheus, run from the stand-in
image the compose test builds) over series shaped as the routers export them: two routers
each reporting every node."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from tests.deploy import containers
from tests.deploy.containers import podman
from tests.deploy.test_helm import DATABASE, one, render

GPU_MEMORY = "llmlb_node_gpu_memory_bytes"
ROUTER_PODS = {"namespace": "llm", "service": "demo-llmlb-router-pods"}


def series(name: str, values: str, **labels: str) -> dict[str, str]:
    inside = ", ".join(f'{key}="{value}"' for key, value in labels.items())
    return {"series": f"{name}{{{inside}}}", "values": values}


def alert(name: str, at: str, *fired: dict[str, str]) -> dict[str, Any]:
    return {"eval_time": at, "alertname": name,
            "exp_alerts": [{"exp_labels": {"severity": labels.pop("severity"), **labels}}
                           for labels in map(dict, fired)]}  # fmt: skip


CASES: list[dict[str, Any]] = [
    {
        "interval": "1m",
        "input_series": [  # a node offline on both routers for 15 minutes
            series("llmlb_node_state", "1x20", node="gpu-1", state="offline", instance="r1"),
            series("llmlb_node_state", "1x20", node="gpu-1", state="offline", instance="r2"),
            series("llmlb_node_state", "1x20", node="gpu-2", state="ready", instance="r1"),
            series("llmlb_node_state", "0x20", node="gpu-2", state="offline", instance="r1"),
        ],
        "alert_rule_test": [
            alert("LlmlbNodeOffline", "5m"),  # not yet: 10 minutes
            alert("LlmlbNodeOffline", "15m", {"severity": "warning", "node": "gpu-1"}),  # once
            alert("LlmlbNoReadyNode", "15m"),  # gpu-2 is ready
        ],
    },
    {
        "interval": "1m",
        "input_series": [  # every node gone from ready
            series("llmlb_node_state", "1 1 0x20", node="gpu-1", state="ready", instance="r1"),
        ],
        "alert_rule_test": [
            alert("LlmlbNoReadyNode", "3m"),
            alert("LlmlbNoReadyNode", "10m", {"severity": "critical"}),
        ],
    },
    {
        "interval": "1m",
        "input_series": [  # 10 % of requests fail, then 1 %
            series("llmlb_requests_total", "0+100x40", endpoint="chat", status="200"),
            series("llmlb_errors_total", "0+10x20 200+1x20", type="node_unreachable"),
        ],
        "alert_rule_test": [
            alert("LlmlbErrorRate", "8m"),
            alert("LlmlbErrorRate", "19m", {"severity": "warning"}),
            alert("LlmlbErrorRate", "40m"),
        ],
    },
    {
        "interval": "1m",
        "input_series": [  # 80 of 100 places taken, then 3
            series("llmlb_queue_depth", "80x10 3x10", instance="r1"),
            series("llmlb_queue_capacity", "100x20", instance="r1"),
        ],
        "alert_rule_test": [
            alert("LlmlbQueueBacklog", "8m", {"severity": "warning"}),
            alert("LlmlbQueueBacklog", "20m"),
        ],
    },
    {
        "interval": "1m",
        "input_series": [  # the only ready node holding m1 goes; m2 keeps one
            series("llmlb_model_ready_nodes", "1 1 0x20", model="m1", instance="r1"),
            series("llmlb_model_ready_nodes", "1x22", model="m2", instance="r1"),
        ],
        "alert_rule_test": [
            alert("LlmlbModelUnavailable", "4m"),
            alert("LlmlbModelUnavailable", "10m", {"severity": "critical", "model": "m1"}),
        ],
    },
    {
        "interval": "1m",
        "input_series": [  # every first byte between 10 and 30 s for half an hour, then fast
            series(
                "llmlb_time_to_first_byte_seconds_bucket",
                "0+0x30 0+10x30",
                le="1",
                provider="local",
                endpoint="chat",
                node="gpu-1",
            ),
            series(
                "llmlb_time_to_first_byte_seconds_bucket",
                "0+0x30 0+10x30",
                le="10",
                provider="local",
                endpoint="chat",
                node="gpu-1",
            ),
            series(
                "llmlb_time_to_first_byte_seconds_bucket",
                "0+10x30 300+10x30",
                le="30",
                provider="local",
                endpoint="chat",
                node="gpu-1",
            ),
            series(
                "llmlb_time_to_first_byte_seconds_bucket",
                "0+10x30 300+10x30",
                le="+Inf",
                provider="local",
                endpoint="chat",
                node="gpu-1",
            ),
        ],
        "alert_rule_test": [
            alert("LlmlbSlowFirstByte", "8m"),
            alert("LlmlbSlowFirstByte", "20m", {"severity": "warning"}),
            alert("LlmlbSlowFirstByte", "58m"),
        ],
    },
    {
        "interval": "1m",
        "input_series": [  # one GPU 1 % free for 20 minutes, the other half free
            series(GPU_MEMORY, "1x20", kind="free", node="gpu-1", device="0:H200"),
            series(GPU_MEMORY, "100x20", kind="total", node="gpu-1", device="0:H200"),
            series(GPU_MEMORY, "50x20", kind="free", node="gpu-1", device="1:H200"),
            series(GPU_MEMORY, "100x20", kind="total", node="gpu-1", device="1:H200"),
        ],
        "alert_rule_test": [
            alert("LlmlbGpuMemoryFull", "10m"),
            alert(
                "LlmlbGpuMemoryFull",
                "18m",
                {"severity": "warning", "node": "gpu-1", "device": "0:H200"},
            ),
        ],
    },
    {
        "interval": "1m",
        "input_series": [  # a certificate good for 10 more days; another for a year
            series("llmlb_tls_certificate_expiry_timestamp_seconds", "864000x150", instance="r1"),
        ],
        "alert_rule_test": [
            alert("LlmlbCertificateExpiry", "30m"),
            alert("LlmlbCertificateExpiry", "2h", {"severity": "warning"}),
        ],
    },
    {
        "interval": "1m",
        "input_series": [
            series("llmlb_tls_certificate_expiry_timestamp_seconds", "31536000x150", instance="r1"),
        ],
        "alert_rule_test": [alert("LlmlbCertificateExpiry", "2h")],
    },
    {
        "interval": "1m",
        "input_series": [  # one of the chart's two routers stops answering
            series("up", "1x20", instance="10.0.0.1:32768", **ROUTER_PODS),
            series("up", "1 1 0x20", instance="10.0.0.2:32768", **ROUTER_PODS),
        ],
        "alert_rule_test": [
            alert("LlmlbRouterDown", "4m"),
            alert("LlmlbRouterDown", "10m", {"severity": "warning"}),
        ],
    },
    {
        "interval": "1m",
        "input_series": [  # both up: quiet
            series("up", "1x20", instance="10.0.0.1:32768", **ROUTER_PODS),
            series("up", "1x20", instance="10.0.0.2:32768", **ROUTER_PODS),
        ],
        "alert_rule_test": [alert("LlmlbRouterDown", "15m")],
    },
]


def test_promtool_accepts_the_charts_rules_and_each_alert_fires_as_intended(
    tmp_path: Path,
) -> None:
    assert not containers.missing_tools(), "make test installs them (make container-tools)"
    values = {**DATABASE, "metrics": {"prometheusRule": {"enabled": True}}}
    rule = one(render(values), "PrometheusRule")
    (tmp_path / "rules.yml").write_text(yaml.safe_dump({"groups": rule["spec"]["groups"]}))
    summaries = {r["alert"]: r["annotations"]["summary"]
                 for group in rule["spec"]["groups"] for r in group["rules"]}  # fmt: skip
    for case in CASES:  # what each alert says, its labels filled in as Prometheus does
        for test in case["alert_rule_test"]:
            for fired in test["exp_alerts"]:
                summary = summaries[test["alertname"]]
                for name, value in fired["exp_labels"].items():
                    summary = summary.replace("{{ $labels." + name + " }}", value)
                fired["exp_annotations"] = {"summary": summary}
    (tmp_path / "tests.yml").write_text(yaml.safe_dump(
        {"rule_files": ["rules.yml"], "evaluation_interval": "1m", "tests": CASES}))  # fmt: skip
    promtool = ("run", "--rm", "--user", "0", "-v", f"{tmp_path}:/rules:ro", "-w", "/rules",
                "--entrypoint",
                "promtool", containers.build_helper_image("prometheus"))  # fmt: skip
    checked = podman(*promtool, "check", "rules", "rules.yml", check=False)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    tested = podman(*promtool, "test", "rules", "tests.yml", check=False)
    assert tested.returncode == 0, tested.stdout + tested.stderr
    alerts = {r["alert"] for group in rule["spec"]["groups"] for r in group["rules"]}
    assert alerts == {test["alertname"] for case in CASES for test in case["alert_rule_test"]}
