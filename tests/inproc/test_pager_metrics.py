"""The series the alert rules read, from nodes that register and heartbeat through the API:
each node up, each GPU's memory as its last heartbeat said, how many ready nodes hold each
model, and the router's TLS certificate's expiry."""

from __future__ import annotations

from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from llmlb.router.telemetry.metrics import RouterMetrics
from tests.inproc.conftest import InProcessRouter
from tests.inproc.test_router_rules import node_auth

GIB = 1 << 30


def samples(text: str, name: str) -> dict[tuple[tuple[str, str], ...], float]:
    return {tuple(sorted(s.labels.items())): s.value
            for family in text_string_to_metric_families(text) for s in family.samples
            if s.name == name}  # fmt: skip


async def test_nodes_gpus_and_models_as_the_alerts_read_them(router: InProcessRouter) -> None:
    h200 = {"kind": "cuda", "name": "H200", "memory_total": 140 * GIB, "memory_free": 140 * GIB}
    cpu = {"kind": "cpu", "name": "cpu", "memory_total": 64 * GIB, "memory_free": 64 * GIB}
    gpus = [h200, h200, cpu]
    async with router.client() as client:
        ids = {}
        for name, port in (("gpu-a", 9001), ("gpu-b", 9002)):
            made = await client.post("/api/nodes", headers=node_auth(router), json={
                "name": name, "base_url": f"http://10.9.9.9:{port}", "version": "t",
                "devices": gpus})  # fmt: skip
            assert made.status_code == 201, made.text
            ids[name] = made.json()["node_id"]
        beats = {"gpu-a": {"state": "ready", "models_on_disk": ["m1", "m2"],
                           "gpu_free": [2 * GIB, 100 * GIB]},
                 "gpu-b": {"state": "initializing", "models_on_disk": ["m1"]}}  # fmt: skip
        for name, load in beats.items():
            beat = await client.post(f"/api/nodes/{ids[name]}/heartbeat", json=load,
                                     headers=node_auth(router))  # fmt: skip
            assert beat.status_code == 200, beat.text
        text = (await client.get("/metrics")).text
    up = samples(text, "llmlb_node_up")
    assert up == {(("node", "gpu-a"),): 1.0, (("node", "gpu-b"),): 1.0}
    memory = samples(text, "llmlb_node_gpu_memory_bytes")
    assert memory[(("device", "0:H200"), ("kind", "free"), ("node", "gpu-a"))] == 2 * GIB
    assert memory[(("device", "1:H200"), ("kind", "free"), ("node", "gpu-a"))] == 100 * GIB
    assert memory[(("device", "0:H200"), ("kind", "total"), ("node", "gpu-b"))] == 140 * GIB
    assert not any(dict(labels)["device"].endswith("cpu") for labels in memory)  # GPUs only
    # m1 is on both, but only gpu-a is ready; m2 only on gpu-a.
    assert samples(text, "llmlb_model_ready_nodes") == {(("model", "m1"),): 1.0,
                                                        (("model", "m2"),): 1.0}  # fmt: skip


def test_the_certificates_expiry_is_read_at_each_scrape(tmp_path: Path) -> None:
    import trustme

    authority = trustme.CA()
    issued = authority.issue_cert("router.example")
    path = tmp_path / "cert.pem"
    issued.cert_chain_pems[0].write_to_path(str(path))
    from cryptography import x509

    expected = x509.load_pem_x509_certificate(path.read_bytes()).not_valid_after_utc.timestamp()
    metrics = RouterMetrics(lambda: [], 10, tls_cert=path)
    expiry = samples(metrics.render().decode(), "llmlb_tls_certificate_expiry_timestamp_seconds")
    assert expiry == {(): expected}
    path.write_text("not a certificate")  # (a broken renewal: 0, which the alert catches)
    expiry = samples(metrics.render().decode(), "llmlb_tls_certificate_expiry_timestamp_seconds")
    assert expiry == {(): 0.0}
