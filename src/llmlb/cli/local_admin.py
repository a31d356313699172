"""Management operations for the CLI: on the router host's state, or remotely over HTTP.

``LocalAdmin`` works on the database directly (same ``LLMLB_HOME`` or ``LLMLB_DATABASE_URL``);
a running router sees the changes within a few seconds. ``RemoteAdmin`` calls a router's
admin API with the admin password or an admin key.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import quote

import httpx
from pydantic import ValidationError

from llmlb.common.errors import LlmlbError, NotFound
from llmlb.common.serving import trusting
from llmlb.common.settings import RouterSettings
from llmlb.common.wire import EndpointSpec
from llmlb.models.catalog import Catalog
from llmlb.router.access import (
    Accounts,
    KeyLimits,
    KeyStore,
    User,
    check_role,
    with_resolved_models,
)
from llmlb.router.fleet import Registry
from llmlb.router.fleet.endpoints import key_of
from llmlb.router.fleet.node_record import EndpointConfig
from llmlb.router.storage import open_database

T = TypeVar("T")


class LocalAdmin:
    def __init__(self, settings: RouterSettings) -> None:
        self._settings = settings

    async def _open(self) -> tuple[Any, Registry, KeyStore]:
        engine = await open_database(self._settings.db_url)
        registry = Registry(
            engine,
            heartbeat_interval=self._settings.heartbeat_interval,
            allow_cpu_nodes=True,
            require_approval=False,
            node_max_concurrency=None,
            started_at=0.0,  # judge nodes by their last heartbeat alone
        )
        await registry.load()
        return engine, registry, KeyStore(engine)

    async def nodes(self) -> list[dict[str, Any]]:
        engine, registry, _ = await self._open()
        try:
            interval = self._settings.heartbeat_interval
            return [n.to_dict(interval) for n in registry.all()]
        finally:
            await engine.dispose()

    async def node_action(self, node_id: str, action: str) -> dict[str, Any] | None:
        engine, registry, _ = await self._open()
        try:
            if action == "remove":
                await registry.remove(node_id)
                return None
            flags = {"drain": {"draining": True}, "undrain": {"draining": False},
                     "approve": {"approved": True}}[action]  # fmt: skip
            node = await registry.set_flags(node_id, **flags)
            return node.to_dict(self._settings.heartbeat_interval)
        finally:
            await engine.dispose()

    async def add_endpoint(self, spec: EndpointSpec) -> dict[str, Any]:
        """Written to the database: a running router takes it in at its next sync and polls
        it from then on."""
        engine, registry, _ = await self._open()
        try:
            config = EndpointConfig(spec.models, spec.max_concurrency)
            node = await registry.add_endpoint(
                spec.display_name(), spec.url, spec.kind, key_of(spec), config
            )
            return node.to_dict(self._settings.heartbeat_interval)
        finally:
            await engine.dispose()

    async def remove_endpoint(self, node_id: str) -> None:
        engine, registry, _ = await self._open()
        try:
            if not registry.get(node_id).is_endpoint:
                raise NotFound(f"no endpoint with id {node_id!r}", code="endpoint_not_found")
            await registry.remove(node_id)
        finally:
            await engine.dispose()

    async def keys(self) -> list[dict[str, Any]]:
        engine, _, keys = await self._open()
        try:
            return [k.to_dict() for k in await keys.list()]
        finally:
            await engine.dispose()

    async def create_key(
        self, name: str, scopes: list[str], expires_at: float | None,
        limits: dict[str, Any] | None = None,
    ) -> dict[str, Any]:  # fmt: skip
        try:
            checked = KeyLimits.model_validate(limits or {})
        except ValidationError as exc:
            raise RemoteError(f"bad limits: {exc.errors()[0]['msg']}") from exc
        catalog = Catalog.load(self._settings.home)
        try:
            checked = with_resolved_models(checked, catalog.resolve)
        except LlmlbError as exc:
            raise RemoteError(exc.message) from exc
        engine, _, keys = await self._open()
        try:
            key, secret = await keys.create(name, scopes, expires_at, checked)
            return {**key.to_dict(), "secret": secret}
        finally:
            await engine.dispose()

    async def revoke_key(self, key_id: str) -> dict[str, Any]:
        engine, _, keys = await self._open()
        try:
            return (await keys.revoke(key_id)).to_dict()
        finally:
            await engine.dispose()

    async def users(self) -> list[dict[str, Any]]:
        return [u.to_dict() for u in await self._on_accounts(lambda a: a.list())]

    async def create_user(self, username: str, password: str, role: str) -> dict[str, Any]:
        user = await self._on_accounts(lambda a: a.create(username, password, check_role(role)))
        return user.to_dict()

    async def update_user(
        self, username: str, *, role: str | None = None, password: str | None = None
    ) -> dict[str, Any]:
        async def change(accounts: Accounts) -> User:
            user = await accounts.get(username)
            if password is not None:
                user = await accounts.set_password(username, password)
            if role is not None:
                user = await accounts.set_role(username, check_role(role))
            return user

        return (await self._on_accounts(change)).to_dict()

    async def delete_user(self, username: str) -> None:
        await self._on_accounts(lambda a: a.delete(username))

    async def _on_accounts(self, call: Callable[[Accounts], Awaitable[T]]) -> T:
        engine = await open_database(self._settings.db_url)
        try:
            return await call(Accounts(engine))
        finally:
            await engine.dispose()

    async def close(self) -> None:
        return None


class RemoteError(LlmlbError):
    pass


class RemoteAdmin:
    def __init__(
        self, url: str, password: str | None, api_key: str | None, tls_ca: Path | None = None
    ) -> None:
        headers = {}
        if api_key or password:
            headers["authorization"] = f"Bearer {api_key or password}"
        self._client = httpx.AsyncClient(
            base_url=url.rstrip("/"), headers=headers, timeout=30, verify=trusting(tls_ca)
        )

    async def call(self, method: str, path: str, **kwargs: Any) -> Any:
        """Any admin API call: its JSON answer (RemoteError naming the router's message)."""
        return await self._call(method, path, **kwargs)

    async def _call(self, method: str, path: str, **kwargs: Any) -> Any:
        try:
            response = await self._client.request(method, path, **kwargs)
        except httpx.TransportError as exc:
            raise RemoteError(f"cannot reach the router at {self._client.base_url}: {exc}") from exc
        if response.status_code >= 400:
            try:
                message = response.json()["error"]["message"]
            except (ValueError, KeyError, TypeError):
                message = response.text[:200]
            raise RemoteError(f"router answered {response.status_code}: {message}")
        return response.json() if response.content else None

    async def nodes(self) -> list[dict[str, Any]]:
        return list((await self._call("GET", "/api/nodes"))["data"])

    async def node_action(self, node_id: str, action: str) -> dict[str, Any] | None:
        if action == "remove":
            await self._call("DELETE", f"/api/nodes/{node_id}")
            return None
        return dict(await self._call("POST", f"/api/nodes/{node_id}/{action}"))

    async def add_endpoint(self, spec: EndpointSpec) -> dict[str, Any]:
        body = spec.model_dump(exclude_none=True)
        return dict(await self._call("POST", "/api/endpoints", json=body))

    async def remove_endpoint(self, node_id: str) -> None:
        await self._call("DELETE", f"/api/endpoints/{quote(node_id, safe='')}")

    async def keys(self) -> list[dict[str, Any]]:
        return list((await self._call("GET", "/api/keys"))["data"])

    async def create_key(
        self, name: str, scopes: list[str], expires_at: float | None,
        limits: dict[str, Any] | None = None,
    ) -> dict[str, Any]:  # fmt: skip
        body = {"name": name, "scopes": scopes, "expires_at": expires_at, "limits": limits}
        return dict(await self._call("POST", "/api/keys", json=body))

    async def revoke_key(self, key_id: str) -> dict[str, Any]:
        return dict(await self._call("DELETE", f"/api/keys/{key_id}"))

    async def distribute(
        self, model: str, target: str, node_ids: list[str] | None
    ) -> dict[str, Any]:
        """The router's answer: ``task_ids``, and ``skipped`` nodes (offline or pending)."""
        body = {"model": model, "target": target, "node_ids": node_ids}
        return dict(await self._call("POST", "/api/models/distribute", json=body))

    async def task(self, task_id: str) -> dict[str, Any]:
        return dict(await self._call("GET", f"/api/tasks/{task_id}"))

    async def health(self) -> dict[str, Any]:
        return dict(await self._call("GET", "/health"))

    async def models(self) -> list[dict[str, Any]]:
        return list((await self._call("GET", "/v1/models"))["data"])

    async def users(self) -> list[dict[str, Any]]:
        return list((await self._call("GET", "/api/users"))["data"])

    async def create_user(self, username: str, password: str, role: str) -> dict[str, Any]:
        body = {"username": username, "password": password, "role": role}
        return dict(await self._call("POST", "/api/users", json=body))

    async def update_user(
        self, username: str, *, role: str | None = None, password: str | None = None
    ) -> dict[str, Any]:
        body = {k: v for k, v in (("role", role), ("password", password)) if v is not None}
        return dict(await self._call("PATCH", f"/api/users/{quote(username, safe='')}", json=body))

    async def delete_user(self, username: str) -> None:
        await self._call("DELETE", f"/api/users/{quote(username, safe='')}")

    async def close(self) -> None:
        await self._client.aclose()
