"""The router's OpenAPI document (``GET /openapi.json``), made from its route table.

Every route is listed with its method, path parameters and the credential it needs (the
scope of an API key; admin routes also take a session or the admin password). Request
bodies carry the schemas the router checks them against where it has one (the typed chat
request for the client API, registrations and heartbeats for nodes, key limits); the rest
are JSON objects. Fuzzers (schemathesis, in the tests) generate requests from it.
"""

from __future__ import annotations

import re
from typing import Any

from pydantic import BaseModel
from starlette.routing import Route

from llmlb import __version__
from llmlb.common.wire import NodeLoad, RegisterRequest
from llmlb.router.api.client import ENDPOINTS
from llmlb.router.keys import KeyLimits
from llmlb.translate.chat import ChatRequest

_PUBLIC = {"/health", "/ready", "/metrics", "/openapi.json", "/", "/dashboard", "/dashboard/",
           "/dashboard/assets/{name}", "/api/auth/login", "/api/auth/logout"}  # fmt: skip
_NODE_PATHS = {"/api/nodes": {"post"}, "/api/nodes/{node_id}/heartbeat": {"post"}}
_BODIES: dict[tuple[str, str], type[BaseModel]] = {
    ("post", "/v1/chat/completions"): ChatRequest,
    ("post", "/api/nodes"): RegisterRequest,
    ("post", "/api/nodes/{node_id}/heartbeat"): NodeLoad,
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
    if path.startswith("/v1/"):
        return "api"
    return "admin"


def _operation(method: str, path: str, schemas: dict[str, Any]) -> dict[str, Any]:
    operation: dict[str, Any] = {
        "operationId": f"{method}_{re.sub(r'[^a-z0-9]+', '_', path.lower()).strip('_') or 'root'}",
        "responses": {"default": {"description": "an answer, or an error in OpenAI's shape"}},
    }
    params = re.findall(r"\{([^}]+)\}", path)
    if params:
        operation["parameters"] = [
            {"name": name, "in": "path", "required": True, "schema": {"type": "string"}}
            for name in params
        ]
    scope = _scope(method, path)
    if scope is not None:
        operation["security"] = [{"bearer": [scope]}]
    if method in ("post", "patch"):
        model = _BODIES.get((method, path))
        if model is not None:
            schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
            schemas.update(schema.pop("$defs", {}))
            schemas[model.__name__] = schema
            body: dict[str, Any] = {"$ref": f"#/components/schemas/{model.__name__}"}
        else:
            body = {"type": "object"}
        operation["requestBody"] = {"content": {"application/json": {"schema": body}}}
    return operation


def openapi_document(routes: list[Route]) -> dict[str, Any]:
    paths: dict[str, dict[str, Any]] = {}
    schemas: dict[str, Any] = {}
    found = [(method.lower(), route.path) for route in routes
             for method in sorted(route.methods or ()) if method != "HEAD"]  # fmt: skip
    found += [("post", path) for path in ENDPOINTS]
    found.append(("post", "/api/nodes/{node_id}/heartbeat"))
    for method, path in found:
        paths.setdefault(path, {})[method] = _operation(method, path, schemas)
    return {
        "openapi": "3.1.0",
        "info": {"title": "llmlb router", "version": __version__},
        "paths": paths,
        "components": {
            "schemas": schemas,
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
    }
