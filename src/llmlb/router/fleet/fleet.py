"""The fleet as the API sees it, its one door: nodes joining and reporting, the operator's
changes to them, what they can serve, and the names clients may use for it."""

from __future__ import annotations

import time
from typing import Any, get_args
from urllib.parse import urlsplit

from llmlb.common.errors import BadRequest
from llmlb.common.names import canonical_name
from llmlb.common.settings import RouterSettings
from llmlb.common.wire import EndpointSpec, NodeLoad, RegisterRequest, RegisterResponse
from llmlb.models.catalog import Capability, Catalog
from llmlb.router.cloud.clouds import prefix_of
from llmlb.router.distribution.distributor import Distributor
from llmlb.router.fleet.endpoints import Endpoints
from llmlb.router.fleet.node_record import NodeRecord
from llmlb.router.fleet.registry import Registry

CLOUD_CAPABILITIES = frozenset(get_args(Capability))


class Fleet:
    def __init__(
        self,
        settings: RouterSettings,
        registry: Registry,
        distributor: Distributor,
        catalog: Catalog,
        endpoints: Endpoints,
    ) -> None:
        self.settings = settings
        self.registry = registry
        self.distributor = distributor
        self.catalog = catalog
        self.endpoints = endpoints
        self.own_ports: frozenset[int] = frozenset()  # the router's listening ports, once open

    def _refuse_own_address(self, base_url: str) -> None:
        """A node URL that points at this router would make it forward requests to itself."""
        parts = urlsplit(base_url)
        if parts.port not in self.own_ports:
            return
        own_hosts = {self.settings.host, "localhost", "127.0.0.1", "::1", "0.0.0.0", "::"}
        if parts.hostname in own_hosts or (parts.hostname or "").startswith("127."):
            raise BadRequest(f"base_url {base_url} is this router's own address", param="base_url")

    def resolve(self, model: str) -> str:
        """The name the nodes know for a model as a client typed it (``gpt-oss:20b`` ->
        ``gpt-oss-20b``); cloud names (``openai:...``) as they are."""
        if prefix_of(model) is not None:
            return model
        # An endpoint's own id for a model (``Qwen/Qwen2.5-0.5B-Instruct``): the fleet's name.
        if (named := self.registry.endpoint_model(model)) is not None:
            return named
        # A name some node or endpoint serves as it is (an Ollama endpoint's ``llama3.2:1b``)
        # is that model, even where the catalog has an alias of that name for another.
        canonical = canonical_name(model)
        if canonical in self.registry.fleet_models():
            return canonical
        return self.catalog.resolve(model)

    def capabilities(self, model: str) -> frozenset[str] | None:
        """What the catalog says a model can do (every capability for a cloud model, or one
        only endpoints serve: their servers decide); None for a local model the catalog does
        not list."""
        if prefix_of(model) is not None:
            return CLOUD_CAPABILITIES
        entry = self.catalog.get(model)
        if entry is not None:
            return frozenset(entry.capabilities)
        holders = [self.registry.get(i) for i in self.registry.holders(model)]
        if holders and all(node.is_endpoint for node in holders):
            return CLOUD_CAPABILITIES  # its server decides (a vLLM serving a vision model)
        if any(model in node.load.models_seeing for node in holders):
            return CLOUD_CAPABILITIES  # a node holds it with its projector: images are its
        return None

    def knows(self, model: str) -> bool:
        """Whether the catalog lists the model or some node holds it."""
        return model in self.catalog or model in self.registry.fleet_models()

    async def register_node(self, request: RegisterRequest, token: str | None) -> RegisterResponse:
        self._refuse_own_address(request.base_url)
        node = await self.registry.register(request, token)
        assigned = await self.distributor.assign_on_registration(node)
        return RegisterResponse(
            node_id=node.id,
            heartbeat_interval=self.settings.heartbeat_interval,
            status=node.status(self.settings.heartbeat_interval),
            assigned_models=assigned,
        )

    async def add_endpoint(self, spec: EndpointSpec) -> dict[str, Any]:
        """An endpoint the operator adds (polled at once: its models are listed when it was
        reachable)."""
        self._refuse_own_address(spec.url)
        node = await self.endpoints.add(spec)
        return self._view(node)

    def endpoint_list(self) -> list[dict[str, Any]]:
        now = time.monotonic()
        return [self._view(n, now) for n in self.registry.all() if n.is_endpoint]

    async def heartbeat(self, node_id: str, load: NodeLoad, token: str | None) -> dict[str, Any]:
        node = await self.registry.heartbeat(node_id, load, token)
        return {
            "status": node.status(self.settings.heartbeat_interval),
            "assigned_models": node.assigned,
        }

    def nodes(self) -> list[dict[str, Any]]:
        now = time.monotonic()
        return [self._view(n, now) for n in self.registry.all()]

    def node(self, node_id: str) -> dict[str, Any]:
        return self._view(self.registry.get(node_id))

    def _view(self, node: NodeRecord, now: float | None = None) -> dict[str, Any]:
        return node.to_dict(self.settings.heartbeat_interval, now, self.registry.in_flight(node))

    def record(self, node_id: str) -> NodeRecord:
        """The node's record (NotFound for an id the fleet does not hold)."""
        return self.registry.get(node_id)

    async def set_flags(self, node_id: str, **flags: bool) -> NodeRecord:
        """The operator's switches: ``approved``, ``disabled``, ``draining``."""
        return await self.registry.set_flags(node_id, **flags)

    async def set_label(self, node_id: str, label: str | None, tags: list[str]) -> NodeRecord:
        return await self.registry.set_label(node_id, label, tags)

    async def remove(self, node_id: str) -> None:
        await self.registry.remove(node_id)

    async def sync(self) -> None:
        """Take in the operator's changes made by the CLI or by other routers on the same
        database, and forget nodes offline past ``offline_node_expiry``."""
        await self.registry.load()
        await self.registry.purge_offline(self.settings.offline_node_expiry)

    def model_list(self) -> list[dict[str, Any]]:
        """What the fleet can serve: models on nodes, and catalog models (fetched on demand)."""
        loaded: dict[str, list[str]] = {}
        for node in self.registry.all():
            for model in node.load.models_loaded:
                loaded.setdefault(model, []).append(node.id)
        held = self.registry.fleet_models()
        serving = {s.id for s in self.registry.snapshots() if s.serving}
        rows = [
            {
                "id": model,
                "object": "model",
                "created": 0,
                "owned_by": "llmlb",
                # Whether a ready node holds it: it answers now. Otherwise (a catalog model no
                # node holds) the first request waits for a node to download it.
                "available": any(node in serving for node in held.get(model, [])),
                "nodes": sorted(held.get(model, [])),
                "loaded_on": sorted(loaded.get(model, [])),
                "in_catalog": model in self.catalog,
                "aliases": self.catalog.aliases_of(model),
            }
            for model in sorted(set(held) | set(self.catalog.names()))
        ]
        return sorted(rows, key=lambda row: not row["available"])  # those that answer first
