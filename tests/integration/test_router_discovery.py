"""A real node that finds its router by DNS (``--router dns+http://localhost:PORT``, as the
Helm chart points nodes at the routers' headless Service): it registers with the address the
name resolves to and shows that router in /health."""

from __future__ import annotations

from pathlib import Path

import httpx

from tests.support import node_token, start_node, start_router, wait_until


def test_a_node_joins_the_router_it_finds_by_dns(tmp_path: Path) -> None:
    router_home, node_home = tmp_path / "router", tmp_path / "node"
    router = start_router(router_home, tmp_path, "--allow-cpu-nodes")
    node = None
    try:
        port = httpx.URL(router.url).port
        node = start_node(node_home, tmp_path, "--router", f"dns+http://localhost:{port}",
                          "--name", "found-by-dns",
                          env={"LLMLB_NODE_TOKEN": node_token(router_home)})  # fmt: skip

        def joined() -> bool:
            links = httpx.get(node.url + "/health", timeout=10).json().get("routers", [])
            return any(link["url"] == f"http://127.0.0.1:{port}" and link["connected"]
                       for link in links)  # fmt: skip

        wait_until(joined, timeout=60, step=0.2)
        with router.client() as http:
            names = [n["name"] for n in http.get("/api/nodes").json()["data"]]
        assert names == ["found-by-dns"]
    finally:
        if node is not None:
            node.stop()
        router.stop()
