"""OpenAPI documents made from route tables (``GET /openapi.json`` on the router and the
node): every route with its method, path parameters and the credential it needs, and the
request schemas the app checks bodies against where it has one (other bodies: JSON objects).
Fuzzers (schemathesis, in the tests) generate requests from them."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from pydantic import BaseModel
from starlette.routing import Route

from llmlb import __version__


def _operation(
    method: str, path: str, scope: str | None, body_model: type[BaseModel] | None,
    schemas: dict[str, Any],
) -> dict[str, Any]:  # fmt: skip
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
    if scope is not None:
        operation["security"] = [{"bearer": [scope]}]
    if method in ("post", "patch"):
        if body_model is not None:
            schema = body_model.model_json_schema(ref_template="#/components/schemas/{model}")
            schemas.update(schema.pop("$defs", {}))
            schemas[body_model.__name__] = schema
            body: dict[str, Any] = {"$ref": f"#/components/schemas/{body_model.__name__}"}
        else:
            body = {"type": "object"}
        operation["requestBody"] = {"content": {"application/json": {"schema": body}}}
    return operation


_CONVERTOR = re.compile(r":[a-z]+}")


def routes_of(routes: list[Any]) -> list[tuple[str, str]]:
    """(method, path) of every route in a table (HEAD left out: it mirrors GET), its path
    parameters as OpenAPI writes them (``{model}``, not Starlette's ``{model:path}``)."""
    return [(method.lower(), _CONVERTOR.sub("}", route.path)) for route in routes
            if isinstance(route, Route)
            for method in sorted(route.methods or ()) if method != "HEAD"]  # fmt: skip


def document(
    title: str, operations: list[tuple[str, str]],
    scope_of: Callable[[str, str], str | None],
    bodies: dict[tuple[str, str], type[BaseModel]],
) -> dict[str, Any]:  # fmt: skip
    paths: dict[str, dict[str, Any]] = {}
    schemas: dict[str, Any] = {}
    for method, path in operations:
        paths.setdefault(path, {})[method] = _operation(
            method, path, scope_of(method, path), bodies.get((method, path)), schemas
        )
    return {
        "openapi": "3.1.0",
        "info": {"title": title, "version": __version__},
        "paths": paths,
        "components": {
            "schemas": schemas,
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
    }
