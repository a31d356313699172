"""Endpoints: servers that speak OpenAI's API but are not llmlb nodes (vLLM, SGLang,
llama.cpp's ``llama-server``, Ollama, LM Studio, TGI, or an llmlb node run without a
router), in the fleet beside the nodes.

An endpoint does not register or heartbeat. The operator adds it (admin API, CLI, dashboard,
the settings file's ``endpoints``), and every router polls it once a heartbeat interval
(``Endpoints.poll_all``): its model list is what it holds, and where its kind exports them,
its running and waiting requests from ``/metrics`` are its load. A poll is its heartbeat: the
endpoint is a record in the registry like any node, so balancing, failover, the wait queue,
keys, limits, history and metrics treat both alike. What differs:

- Its load is the router's own requests in flight to it against the concurrency the operator
  declared (``max_concurrency``: its slots and its limit), plus the queue its metrics show.
- It never fetches a model: the router distributes nothing to it and sends it only requests
  for models it lists (``NodeSnapshot.fetches``).
- Its models keep their own names upstream. In the fleet each is known by a valid model name
  (``Qwen/Qwen2.5-0.5B-Instruct`` is ``Qwen2.5-0.5B-Instruct``, Ollama's ``llama3.2:1b`` is
  ``llama3.2-1b`` as llmlb spells tags), and the proxy puts the endpoint's own id back into the
  request it sends (``router.proxy.failover.renamed``); clients may use either name.
- Its API key is presented as a bearer token on every call, stored in the node row's
  ``secret`` column (the router must present it, so it cannot be hashed), and never shown,
  returned or logged.
- Its answers pass through as bytes; it does not echo the router's request ids, so HTTP/1.1
  framing alone tells its answers apart (``router.proxy.nodelink``).
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
from typing import TYPE_CHECKING

import orjson
from prometheus_client.parser import text_string_to_metric_families

from llmlb.common.errors import BadRequest, Conflict, NotFound
from llmlb.common.names import canonical_name, is_model_name
from llmlb.common.wire import MAX_REPORTED_MODELS, EndpointSpec, NodeLoad
from llmlb.router.fleet.control import NodeControl, NodeUnreached
from llmlb.router.fleet.node_record import EndpointConfig, NodeRecord

if TYPE_CHECKING:  # (the registry's prober asks this module where a kind lists its models)
    from llmlb.router.fleet.registry import Registry

log = logging.getLogger(__name__)

# A model list or a metrics page larger than this is not read (a poll must stay cheap).
LISTING_MAX_BYTES = 4 * 1024 * 1024
METRICS_MAX_BYTES = 4 * 1024 * 1024

# Which of a kind's Prometheus series count requests running and waiting on it.
LOAD_SERIES: dict[str, tuple[str, str]] = {
    "vllm": ("vllm:num_requests_running", "vllm:num_requests_waiting"),
    "sglang": ("sglang:num_running_reqs", "sglang:num_queue_reqs"),
    "llama-server": ("llamacpp:requests_processing", "llamacpp:requests_deferred"),
    "tgi": ("tgi_batch_current_size", "tgi_queue_size"),
}


def listing_path(kind: str) -> str:
    """Where a kind lists its models (also what a probe of it asks)."""
    return "/api/tags" if kind == "ollama" else "/v1/models"


def fleet_name(upstream: str) -> str | None:
    """The fleet's name for an endpoint's model id: its last path segment, without
    ``.gguf``, a ``:tag`` spelled as llmlb spells it, other characters as ``-``; None when
    nothing usable is left."""
    name = canonical_name(upstream.rsplit("/", 1)[-1].removesuffix(".gguf"))
    name = re.sub(r"[^A-Za-z0-9._-]", "-", name).lstrip("._-")[:128]
    while ".." in name:
        name = name.replace("..", ".")
    return name if is_model_name(name) else None


def listed_models(kind: str, body: bytes) -> list[str]:
    """The model ids in a model list: OpenAI's ``{"data": [{"id"}]}``, or Ollama's
    ``{"models": [{"name"}]}`` for its ``/api/tags``. ValueError if it is neither."""
    try:
        parsed = orjson.loads(body)
        if kind == "ollama":
            ids = [m["name"] for m in parsed["models"]]
        else:
            ids = [m["id"] for m in parsed["data"]]
    except (orjson.JSONDecodeError, KeyError, TypeError) as exc:
        raise ValueError(f"not a model list ({type(exc).__name__})") from exc
    return [i for i in ids if isinstance(i, str) and 0 < len(i) <= 200][:MAX_REPORTED_MODELS]


def load_from_metrics(kind: str, text: str) -> tuple[int, int] | None:
    """(requests running, requests waiting) summed over a kind's series; None when the page
    has neither."""
    names = LOAD_SERIES.get(kind)
    if names is None:
        return None
    totals = [0.0, 0.0]
    found = False
    try:
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name in names:
                    totals[names.index(sample.name)] += sample.value
                    found = True
    except ValueError:
        return None
    if not found:
        return None
    return max(int(totals[0]), 0), max(int(totals[1]), 0)


def served(kind: str, ids: list[str], wanted: list[str]) -> dict[str, str]:
    """The fleet's name -> the endpoint's id of each model it lists (only ``wanted`` ones
    when the operator named some; the first of two ids with one name wins)."""
    chosen = [i for i in ids if i in wanted] if wanted else ids
    names: dict[str, str] = {}
    for upstream in chosen:
        name = fleet_name(upstream)
        if name is not None:
            names.setdefault(name, upstream)
    return names


def key_of(spec: EndpointSpec) -> str | None:
    """The endpoint's key: given, or read from the environment variable it names."""
    if spec.key_env is None:
        return spec.key
    key = os.environ.get(spec.key_env)
    if not key:
        raise BadRequest(f"endpoint {spec.url}: the environment variable {spec.key_env} that "
                         "should hold its key is not set", param="key_env")  # fmt: skip
    return key


class Endpoints:
    """Adding endpoints, and polling them for what they serve and how busy they are."""

    def __init__(self, registry: Registry, control: NodeControl, router: str = "") -> None:
        self._registry = registry
        self._control = control
        self._router = router  # this router's id (the owner of its settings' endpoints)

    async def add(self, spec: EndpointSpec, static: bool = False) -> NodeRecord:
        """A new endpoint, polled at once: it answers with its models listed when it was
        reachable (``status`` says whether it is)."""
        config = EndpointConfig(spec.models, spec.max_concurrency, static,
                                self._router if static else None)  # fmt: skip
        node = await self._registry.add_endpoint(
            spec.display_name(), spec.url, spec.kind, key_of(spec), config
        )
        await self.poll(node)
        return node

    async def apply_settings(self, specs: list[EndpointSpec]) -> None:
        """The settings file's endpoints, at the router's start: each added or brought up
        to date, and those it no longer names that this router's file added removed (not
        another router's: routers on one database may have different files)."""
        present = {(n.name, n.base_url): n for n in self._registry.all() if n.is_endpoint}
        named = set()
        for spec in specs:
            address = (spec.display_name(), spec.url)
            named.add(address)
            config = EndpointConfig(spec.models, spec.max_concurrency, True, self._router)
            node = present.get(address)
            if node is None:
                try:
                    await self.add(spec, static=True)
                except Conflict:  # another router starting on this database added it
                    log.info("endpoint %s was added by another router", spec.display_name())
            elif (node.kind, node.token, node.endpoint) != (spec.kind, key_of(spec), config):
                assert node.endpoint is not None
                config.owner = node.endpoint.owner or self._router  # (who added it stays)
                await self._registry.update_endpoint(node, spec.kind, key_of(spec), config)
        for address, node in present.items():
            config_of = node.endpoint
            if (config_of is not None and config_of.static and config_of.owner == self._router
                    and address not in named):  # fmt: skip
                log.info("endpoint %s is no longer in the settings: removed", node.name)
                await self._registry.remove(node.id)

    def get(self, node_id: str) -> NodeRecord:
        node = self._registry.get(node_id)
        if not node.is_endpoint:
            raise NotFound(f"no endpoint with id {node_id!r}", code="endpoint_not_found")
        return node

    async def poll_all(self) -> None:
        endpoints = [n for n in self._registry.all() if n.is_endpoint]
        if endpoints:
            await asyncio.gather(*(self.poll(n) for n in endpoints))

    async def poll(self, node: NodeRecord) -> None:
        """Ask the endpoint what it serves (and, where its kind says, how busy it is): what
        a heartbeat would have said. An endpoint that does not answer gets no traffic until
        it does."""
        assert node.endpoint is not None
        try:
            status, body = await self._control.fetch(node, listing_path(node.kind),
                                                     LISTING_MAX_BYTES)  # fmt: skip
            if status != 200 and not (status == 404 and node.endpoint.models):
                raise NodeUnreached(f"{node.name} answered {status} for its model list")
            # (A server without a model list serves the models the operator named.)
            ids = listed_models(node.kind, body) if status == 200 else node.endpoint.models
            load = await self._load(node)
        except (NodeUnreached, ValueError) as exc:
            if not node.unreachable:
                log.warning("endpoint %s: %s; no traffic until it answers", node.name, exc)
            self._registry.mark_unreachable(node.id)
            return
        upstream = served(node.kind, ids, node.endpoint.models)
        slots = node.endpoint.max_concurrency
        running, waiting = load or (0, 0)
        report = NodeLoad(
            state="ready", models_loaded=sorted(upstream), slots_total=slots,
            slots_per_model=slots, active_requests=running, queued_requests=waiting,
            slots_busy=min(running, slots),
        )  # fmt: skip
        self._registry.endpoint_polled(node.id, report, upstream)

    async def _load(self, node: NodeRecord) -> tuple[int, int] | None:
        """Running and waiting requests from its ``/metrics`` (vLLM, SGLang, llama-server,
        TGI); None where it exports none or does not let the router read them."""
        if node.kind not in LOAD_SERIES:
            return None
        try:
            status, body = await self._control.fetch(node, "/metrics", METRICS_MAX_BYTES)
        except NodeUnreached:
            return None
        if status != 200:
            return None
        return load_from_metrics(node.kind, body.decode(errors="replace"))
