"""Every route of the router, enumerated from its route table: anonymous callers and keys of
the wrong scope are refused before anything else happens (a 401 or 403, never a 404 that
tells what exists, never a 5xx), and only the routes meant to be public answer them."""

from __future__ import annotations

import re

import pytest

from llmlb.router.api.client import ENDPOINTS
from llmlb.router.api.ollama import CLIENT_PATHS as OLLAMA_PATHS
from llmlb.router.app import ROUTES
from tests.inproc.conftest import REMOTE, InProcessRouter

# Open to anyone: probes, the dashboard's page and files (its data comes from the admin
# API), and the login form's own endpoints, which check credentials themselves.
PUBLIC = {
    ("GET", "/health"), ("GET", "/ready"), ("GET", "/startup"), ("GET", "/metrics"),
    ("GET", "/openapi.json"),
    ("GET", "/"), ("HEAD", "/"),  # (Ollama's clients probe it)
    ("GET", "/dashboard"), ("GET", "/dashboard/"),
    ("GET", "/dashboard/assets/{name}"), ("HEAD", "/dashboard/assets/{name}"),
    ("POST", "/api/auth/login"), ("POST", "/api/auth/logout"), ("GET", "/api/auth/methods"),
    ("GET", "/api/auth/oidc/login"), ("GET", "/api/auth/oidc/callback"),  # (browser redirects)
}  # fmt: skip
SCOPE_OF_PREFIX = [("/v1/", "api"), ("/v0/", "node"), ("/api/", "admin")]


def every_route() -> list[tuple[str, str]]:
    found = [(method, route.path) for route in ROUTES for method in sorted(route.methods or ())
             if method != "HEAD" or (method, route.path) in PUBLIC]  # fmt: skip
    found += [("POST", path) for path in ENDPOINTS]  # in front of the route table
    found.append(("POST", "/api/nodes/{node_id}/heartbeat"))
    return found


def scope_of(method: str, path: str) -> str:
    if (method, path) in (("POST", "/api/nodes"), ("POST", "/api/nodes/{node_id}/heartbeat")):
        return "node"
    if path.startswith("/api/auth/"):
        return "session"
    if path in OLLAMA_PATHS:  # Ollama's API: a client's
        return "api"
    return next(scope for prefix, scope in SCOPE_OF_PREFIX if path.startswith(prefix))


def concrete(path: str) -> str:
    return re.sub(r"\{[^}]+\}", "x1", path)


async def test_the_enumeration_covers_the_whole_route_table() -> None:
    paths = {path for _, path in every_route()}
    assert {"/api/keys", "/v0/models/blob/{name}", "/v1/chat/completions"} <= paths
    assert len(every_route()) == len({*every_route()}) >= 50


@pytest.mark.parametrize(("method", "path"), every_route())
async def test_anonymous_and_wrong_scope_callers_are_refused(
    router: InProcessRouter, method: str, path: str
) -> None:
    keys = router.service.keys
    secrets = {scope: (await keys.create(scope, [scope]))[1] for scope in ("api", "node", "admin")}
    async with router.client(REMOTE) as client:
        anonymous = await client.request(method, concrete(path), json={})
        if (method, path) in PUBLIC:
            assert anonymous.status_code < 500, anonymous.text
            return
        assert anonymous.status_code in (401, 403), (anonymous.status_code, anonymous.text)
        scope = scope_of(method, path)
        # An admin key works for every scope (router.access.auth); the others only for their own.
        wrong = [s for s in ("api", "node") if s != scope and scope != "session"]
        for other in wrong:
            reply = await client.request(
                method, concrete(path), json={},
                headers={"authorization": f"Bearer {secrets[other]}"},
            )  # fmt: skip
            assert reply.status_code in (401, 403), (other, reply.status_code, reply.text)
            assert "error" in reply.json()
