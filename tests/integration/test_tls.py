"""HTTPS: a router and a node serving TLS with certificates from a private CA; the node
verifies the router against that CA (``--tls-ca``) and the router verifies the node, and a
node that does not trust the CA is refused by its own TLS check, not let through."""

from __future__ import annotations

import ssl
from pathlib import Path

import httpx
import trustme

from tests.support import (
    Process,
    ask_capital_of_france,
    llmlb,
    node_token,
    start_router,
    wait_until,
)


def test_router_and_node_speak_https_and_check_each_other(model_home: Path, tmp_path: Path) -> None:
    ca = trustme.CA()
    ca_file = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    files = {}
    for part in ("router", "node"):
        issued = ca.issue_cert("127.0.0.1", "localhost")
        files[part] = (tmp_path / f"{part}.pem", tmp_path / f"{part}.key")
        issued.cert_chain_pems[0].write_to_path(str(files[part][0]))
        issued.private_key_pem.write_to_path(str(files[part][1]))
    tls = {part: ["--tls-cert", str(c), "--tls-key", str(k)] for part, (c, k) in files.items()}
    router_home = tmp_path / "router"
    router = start_router(
        router_home, tmp_path, "--allow-cpu-nodes", "--heartbeat-interval", "1",
        *tls["router"], env={"LLMLB_TLS_CA": str(ca_file), "LLMLB_AUTO_DISTRIBUTE": "none"},
    )  # fmt: skip
    assert router.url.startswith("https://")

    def node(name: str, *extra: str) -> Process:
        return Process(
            ["node", "--host", "127.0.0.1", "--port", "0", "--allow-cpu", "--router",
             router.url, "--name", name, *tls["node"], *extra],
            model_home, tmp_path / f"{name}.log", {"LLMLB_NODE_TOKEN": node_token(router_home)},
        )  # fmt: skip

    trusting = node("trusting", "--tls-ca", str(ca_file))
    doubting = node("doubting")  # the system's CAs do not know ours
    try:
        assert trusting.url.startswith("https://")
        trust = ssl.create_default_context(cafile=str(ca_file))
        with httpx.Client(base_url=router.url, verify=trust, timeout=120) as http:
            wait_until(lambda: [n["name"] for n in http.get("/api/nodes").json()["data"]]
                       == ["trusting"], 30)  # fmt: skip
            node_row = http.get("/api/nodes").json()["data"][0]
            assert node_row["base_url"].startswith("https://")
            ask_capital_of_france(http, "gemma-3-270m")  # router -> node over verified TLS
        # The management CLI: it trusts the router with --tls-ca (or LLMLB_TLS_CA), and says
        # why it cannot without.
        elsewhere = tmp_path / "cli-home"
        listed = llmlb(elsewhere, "nodes", "list", "--router", router.url, "--tls-ca", str(ca_file))
        assert listed.returncode == 0 and "trusting" in listed.stdout, listed.stderr
        status = llmlb(elsewhere, "status", "--router", router.url,
                       env={"LLMLB_TLS_CA": str(ca_file)})  # fmt: skip
        assert status.returncode == 0 and ": ok" in status.stdout, status.stderr
        refused = llmlb(elsewhere, "nodes", "list", "--router", router.url)
        assert refused.returncode == 1 and "CERTIFICATE_VERIFY_FAILED" in refused.stderr
        missing = llmlb(elsewhere, "nodes", "list", "--router", router.url,
                        "--tls-ca", str(tmp_path / "none.pem"))  # fmt: skip
        assert missing.returncode == 2 and "does not exist" in missing.stderr
        not_pem = tmp_path / "not-a-bundle.pem"
        not_pem.write_text("hello\n")
        garbled = llmlb(elsewhere, "nodes", "list", "--router", router.url,
                        "--tls-ca", str(not_pem))  # fmt: skip
        assert garbled.returncode == 1 and "not a PEM bundle" in garbled.stderr, garbled.stderr

        wait_until(lambda: "CERTIFICATE_VERIFY_FAILED" in doubting.log_path.read_text(), 30)
        with httpx.Client(verify=trust) as direct:
            health = direct.get(doubting.url + "/health").json()
            assert health["status"] == "degraded" and not health["router"]["connected"]
    finally:
        doubting.stop()
        trusting.stop()
        router.stop()
