"""The router's HTTP app (Starlette): the route table and the service's lifecycle.

Handlers live in ``router.api``, one module per audience.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import orjson
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.gzip import GZipMiddleware
from starlette.routing import Route

from llmlb.common import tracing
from llmlb.common.asgi import EXCEPTION_HANDLERS, RequestIdMiddleware
from llmlb.common.compression import MIN_COMPRESSED
from llmlb.common.logs import ACCESS_LOGGER, LogRing
from llmlb.common.tracing import TracedRequests
from llmlb.router.api import (
    accounts,
    admin as a,
    audit,
    client,
    console,
    dashboard,
    nodes,
    ollama,
    ollama_store,
    ops,
    sso,
)
from llmlb.router.api.browsers import BrowserAccess
from llmlb.router.api.common import admin
from llmlb.router.api.openapi import openapi_document
from llmlb.router.service import RouterService

POST, GET, DELETE, PATCH = ["POST"], ["GET"], ["DELETE"], ["PATCH"]

ROUTES = [
    # clients (scope api); the POST endpoints are client.ClientRoutes, in front of these
    Route("/v1/models", client.models, methods=GET),
    Route("/v1/models/{model:path}", client.model, methods=GET),
    # Ollama's clients (scope api; /api/chat, /api/generate, /api/embed(dings): ClientRoutes)
    Route("/api/version", ollama.ollama_errors(ollama.version), methods=["GET", "HEAD"]),
    Route("/api/tags", ollama.ollama_errors(ollama.tags), methods=GET),
    Route("/api/show", ollama.ollama_errors(ollama.show), methods=POST),
    Route("/api/ps", ollama.ollama_errors(ollama.ps), methods=GET),
    # (and the operator's, in Ollama's shape: admins only)
    Route("/api/pull", ollama.ollama_errors(admin(ollama_store.pull)), methods=POST),
    Route("/api/delete", ollama.ollama_errors(admin(ollama_store.delete)), methods=DELETE),
    # nodes (scope node)
    Route("/api/nodes", nodes.register, methods=POST),
    # (heartbeats: nodes.HeartbeatRoute, in front of these)
    Route("/v0/models", nodes.catalog, methods=GET),
    Route("/v0/models/blob/{name}", nodes.blob, methods=["GET", "HEAD"]),
    # operators (scope admin)
    Route("/api/nodes", admin(a.list_nodes), methods=GET),
    Route("/api/nodes/{node_id}", admin(a.show_node), methods=GET),
    Route("/api/nodes/{node_id}", admin(a.remove_node), methods=DELETE),
    Route("/api/nodes/{node_id}", admin(console.label_node), methods=PATCH),
    Route("/api/nodes/{node_id}/trends", admin(console.node_trends), methods=GET),
    Route("/api/nodes/{node_id}/logs", admin(console.node_logs), methods=GET),
    Route("/api/nodes/{node_id}/models", admin(console.node_models), methods=GET),
    Route("/api/nodes/{node_id}/drain", admin(a.node_flag(draining=True)), methods=POST),
    Route("/api/nodes/{node_id}/undrain", admin(a.node_flag(draining=False)), methods=POST),
    Route("/api/nodes/{node_id}/approve", admin(a.node_flag(approved=True)), methods=POST),
    Route("/api/nodes/{node_id}/models/pull", admin(a.pull_to_node), methods=POST),
    Route("/api/nodes/{node_id}/models/{name}", admin(a.remove_model_from_node), methods=DELETE),
    Route("/api/endpoints", admin(a.list_endpoints), methods=GET),
    Route("/api/endpoints", admin(a.add_endpoint), methods=POST),
    Route("/api/endpoints/{node_id}", admin(a.remove_endpoint), methods=DELETE),
    Route("/api/keys", admin(a.list_keys), methods=GET),
    Route("/api/keys", admin(a.create_key), methods=POST),
    Route("/api/keys/{key_id}", admin(a.revoke_key), methods=DELETE),
    Route("/api/requests", admin(a.list_requests), methods=GET),
    Route("/api/requests/export", admin(console.export_requests), methods=GET),
    Route("/api/requests/{row_id}", admin(console.show_request), methods=GET),
    Route("/api/stats/overview", admin(console.overview), methods=GET),
    Route("/api/stats/series", admin(console.series), methods=GET),
    Route("/api/audit", admin(audit.list_audit), methods=GET),
    Route("/api/audit/export", admin(audit.export_audit), methods=GET),
    Route("/api/logs", admin(console.router_logs), methods=GET),
    Route("/api/logs/levels", admin(console.log_levels), methods=GET),
    Route("/api/logs/levels", admin(console.set_log_level), methods=["PUT"]),
    Route("/api/nodes/{node_id}/logs/levels", admin(console.set_node_log_level), methods=["PUT"]),
    Route("/api/users", admin(accounts.list_users), methods=GET),
    Route("/api/users", admin(accounts.create_user), methods=POST),
    Route("/api/users/{username}", admin(accounts.update_user), methods=PATCH),
    Route("/api/users/{username}", admin(accounts.delete_user), methods=DELETE),
    # dashboard sessions (the handlers check credentials themselves)
    Route("/api/auth/login", accounts.login, methods=POST),
    Route("/api/auth/logout", accounts.logout, methods=POST),
    Route("/api/auth/me", accounts.me, methods=GET),
    Route("/api/auth/password", accounts.change_password, methods=POST),
    Route("/api/auth/methods", sso.methods, methods=GET),
    Route("/api/auth/oidc/login", sso.login, methods=GET),
    Route("/api/auth/oidc/callback", sso.callback, methods=GET),
    # the dashboard's page and files (public: what they show comes from the API above)
    Route("/", ollama.root, methods=["GET", "HEAD"]),  # (a browser goes to the dashboard)
    Route("/dashboard", dashboard.page, methods=GET),
    Route("/dashboard/", dashboard.page, methods=GET),
    Route("/dashboard/assets/{name}", dashboard.asset, methods=["GET", "HEAD"]),
    Route("/api/models/available", admin(a.available), methods=GET),
    Route("/api/models/distribute", admin(a.distribute), methods=POST),
    Route("/api/models/register", admin(a.register_model), methods=POST),
    Route("/api/models/registered", admin(a.list_registered), methods=GET),
    Route("/api/models/registered/{name}", admin(a.update_registered), methods=PATCH),
    Route("/api/models/registered/{name}", admin(a.unregister_model), methods=DELETE),
    Route("/api/models/{name}/pull", admin(a.pull_to_router), methods=POST),
    Route("/api/tasks", admin(a.list_tasks), methods=GET),
    Route("/api/tasks/{task_id}", admin(a.show_task), methods=GET),
    Route("/api/events", admin(a.events), methods=GET),
    # probes
    Route("/health", ops.health, methods=GET),
    Route("/ready", ops.ready, methods=GET),
    Route("/startup", ops.startup, methods=GET),
    Route("/metrics", ops.metrics, methods=GET),
]
ROUTES.append(Route("/openapi.json", ops.openapi_json, methods=GET))


def create_app(service: RouterService) -> Starlette:
    """The app over ``service``; its lifespan starts and closes the service."""

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        await service.start()
        try:
            yield
        finally:
            await service.close()

    # A client request's span (common.tracing), around everything else, when tracing is on.
    traced = [Middleware(TracedRequests, paths=frozenset(client.ENDPOINTS), prefix="llmlb")]
    app = Starlette(
        routes=ROUTES,
        middleware=[
            *(traced if tracing.ENABLED else []),
            Middleware(BrowserAccess, origins=service.settings.cors_origins),
            Middleware(client.ClientRoutes),
            # The rest (model lists, the admin API, the dashboard's files): Starlette's, which
            # leaves event streams alone. The client routes compress their own whole answers.
            Middleware(GZipMiddleware, minimum_size=MIN_COMPRESSED, compresslevel=5),
            Middleware(nodes.HeartbeatRoute),
            Middleware(RequestIdMiddleware),
        ],
        exception_handlers=EXCEPTION_HANDLERS,
        lifespan=lifespan,
    )
    # A path with a slash too many is an unknown route (404), not a redirect to the known one:
    # a 307 told an anonymous caller which routes exist before it was asked for credentials.
    app.router.redirect_slashes = False
    app.state.service = service
    LogRing.of_process()  # the log page's lines, however the process set up its logging
    logging.getLogger(ACCESS_LOGGER).setLevel(
        logging.INFO if service.settings.access_log else logging.WARNING
    )
    app.state.body_timeout = service.settings.body_timeout
    app.state.send_timeout = service.settings.send_timeout
    app.state.openapi = orjson.dumps(openapi_document(ROUTES))
    return app
