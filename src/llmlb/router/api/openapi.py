"""The router's OpenAPI document (``GET /openapi.json``, common.openapi): the credential each
route needs (an API key's scope; admin routes also take a session or the admin password),
and the typed chat request, registrations, heartbeats and key limits as request schemas."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel
from starlette.routing import Route

from llmlb.common.openapi import document, routes_of
from llmlb.common.wire import EndpointSpec, NodeLoad, RegisterRequest
from llmlb.router.access import KeyLimits
from llmlb.router.api.client import ENDPOINTS
from llmlb.router.api.ollama import CLIENT_PATHS as OLLAMA_PATHS
from llmlb.translate.chat import ChatRequest

_PUBLIC = {"/health", "/ready", "/startup", "/metrics", "/openapi.json", "/", "/dashboard",
           "/dashboard/", "/dashboard/assets/{name}", "/api/auth/login",
           "/api/auth/logout", "/api/auth/methods", "/api/auth/oidc/login",
           "/api/auth/oidc/callback"}  # fmt: skip
_NODE_PATHS = {"/api/nodes": {"post"}, "/api/nodes/{node_id}/heartbeat": {"post"}}
_BODIES: dict[tuple[str, str], type[BaseModel]] = {
    ("post", "/v1/chat/completions"): ChatRequest,
    ("post", "/api/nodes"): RegisterRequest,
    ("post", "/api/nodes/{node_id}/heartbeat"): NodeLoad,
    ("post", "/api/endpoints"): EndpointSpec,
}


class _KeyRequest(BaseModel):
    name: str | None = None
    scopes: list[str] | None = None
    expires_at: float | None = None
    limits: KeyLimits | None = None


_BODIES[("post", "/api/keys")] = _KeyRequest


def _scope(method: str, path: str) -> str | None:
    if path in _PUBLIC:
        return None
    if method in _NODE_PATHS.get(path, ()) or path.startswith("/v0/"):
        return "node"
    if path.startswith("/v1/") or path in OLLAMA_PATHS:
        return "api"
    return "admin"


def openapi_document(routes: list[Route]) -> dict[str, Any]:
    """The router's document."""
    operations = routes_of(routes) + [("post", path) for path in ENDPOINTS]
    operations.append(("post", "/api/nodes/{node_id}/heartbeat"))
    return document("llmlb router", operations, _scope, _BODIES)
