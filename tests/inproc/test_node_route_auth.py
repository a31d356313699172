"""Every route of a node that has a router, enumerated from its app: without the node key
(or with another key) nothing but its probes answers."""

from __future__ import annotations

import re
from pathlib import Path

import httpx
from starlette.routing import Route

from llmlb.common.settings import NodeSettings
from llmlb.node.app import create_app
from llmlb.node.service import NodeService

PUBLIC = {"/health", "/startup", "/metrics", "/openapi.json"}
NODE_KEY = "llmlb_the-node-key"


async def test_a_fleet_node_answers_only_its_router(tmp_path: Path) -> None:
    settings = NodeSettings(home=tmp_path, allow_cpu=True, node_token=NODE_KEY)
    app = create_app(NodeService(settings, [], 8 << 30))
    routes = [(method, route.path) for route in app.routes if isinstance(route, Route)
              for method in sorted(route.methods or ()) if method != "HEAD"]  # fmt: skip
    assert ("POST", "/api/pull") in routes and ("POST", "/v1/chat/completions") in routes
    transport = httpx.ASGITransport(app=app, client=("127.0.0.1", 40000))
    async with httpx.AsyncClient(transport=transport, base_url="http://node") as client:
        for method, path in routes:
            url = re.sub(r"\{[^}]+\}", "x1", path)
            for headers in ({}, {"authorization": "Bearer llmlb_some-other-key"}):
                reply = await client.request(method, url, json={}, headers=headers)
                if path in PUBLIC:  # /startup says 503 until the node has started
                    assert reply.status_code < 500 or path == "/startup"
                    continue
                assert reply.status_code == 401, (method, path, reply.status_code)
                assert reply.json()["error"]["code"]
