"""Messages between nodes and the router (register, heartbeat), validated on both sides."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any, Literal
from urllib.parse import urlsplit

import orjson
from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from llmlb.common.errors import InvalidJSON
from llmlb.common.names import is_model_name

if TYPE_CHECKING:
    import aiohttp

# Deeper JSON than this is refused: orjson reads 1024 levels but writes only 254, and no
# OpenAI request needs more than a few (a tool's JSON schema a dozen or so).
MAX_JSON_DEPTH = 64


def parse_object(raw: bytes) -> dict[str, Any]:
    """A request body that must be a JSON object; InvalidJSON (400) otherwise."""
    if not raw:
        raise InvalidJSON("the request body is empty; send a JSON object")
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise InvalidJSON(f"the request body is not valid JSON: {exc}") from exc
    if not isinstance(body, dict):
        raise InvalidJSON("the request body must be a JSON object")
    if _too_deep(body, MAX_JSON_DEPTH):
        raise InvalidJSON(f"the request body nests deeper than {MAX_JSON_DEPTH} levels")
    return body


def _too_deep(value: Any, limit: int) -> bool:
    """Whether containers nest more than ``limit`` levels (iterative: no recursion limit)."""
    level: list[Any] = [value]
    for _ in range(limit):
        level = [
            child
            for container in level
            for child in (container.values() if isinstance(container, dict) else container)
            if isinstance(child, dict | list)
        ]
        if not level:
            return False
    return True


def error_message(body: bytes, limit: int = 200) -> str:
    """The message of an OpenAI-shaped error body, else the body's first characters."""
    try:
        return str(orjson.loads(body)["error"]["message"])
    except (orjson.JSONDecodeError, KeyError, TypeError):
        return body[:limit].decode(errors="replace")


# What a node says it is doing (the router adds pending and offline: see Registry).
NodeState = Literal["initializing", "ready", "draining"]


class Device(BaseModel):
    """A compute device as a node probes it and reports it to the router."""

    model_config = ConfigDict(frozen=True)

    kind: Literal["cuda", "rocm", "metal", "cpu"]
    name: str = Field(max_length=200)
    memory_total: int = Field(ge=0)
    memory_free: int = Field(ge=0)  # at registration; heartbeats carry fresh figures
    uuid: str = Field(default="", max_length=100)  # the vendor's id (NVML, amdsmi); "" if none

    @property
    def is_gpu(self) -> bool:
        return self.kind != "cpu"


class EngineInfo(BaseModel):
    """What the node's inference engine (llama.cpp, through xllamacpp) runs on."""

    backend: str = Field(default="", max_length=40)  # cpu, cuda, rocm, vulkan, metal
    build: str = Field(default="", max_length=200)  # xllamacpp's version, the CPU features
    warning: str = Field(default="", max_length=1000)  # e.g. a GPU the engine cannot drive


def _model_name(value: str) -> str:
    if not is_model_name(value):
        raise ValueError(f"not a model name: {value[:80]!r}")
    return value


ModelName = Annotated[str, AfterValidator(_model_name)]
# Bounds on what one node may report: a heartbeat is read on every one and must stay small.
MAX_REPORTED_MODELS = 1000
MAX_REPORTED_DOWNLOADS = 100
MAX_DEVICES = 64
Models = Annotated[list[ModelName], Field(max_length=MAX_REPORTED_MODELS)]


class SyncState(BaseModel):
    """How far a node is from holding every model the router assigned it."""

    state: Literal["in_sync", "syncing", "failed"] = "in_sync"
    missing: Models = Field(default_factory=list)  # assigned and not on disk yet
    bytes_done: int = Field(default=0, ge=0)  # of the missing models' downloads
    bytes_total: int = Field(default=0, ge=0)
    error: str | None = Field(default=None, max_length=2000)  # why the last fetch failed


class NodeLoad(BaseModel):
    """What a node says about itself in every heartbeat."""

    state: NodeState = "ready"
    models_loaded: Models = Field(default_factory=list)
    models_on_disk: Models = Field(default_factory=list)
    models_seeing: Models = Field(default_factory=list)  # those with a projector (vision)
    active_requests: int = Field(default=0, ge=0)
    queued_requests: int = Field(default=0, ge=0)
    # Client requests the node holds at any stage (downloading, loading, generating); None
    # from a node too old to say.
    requests_in_flight: int | None = Field(default=None, ge=0)
    slots_busy: int = Field(default=0, ge=0)
    slots_total: int = Field(default=0, ge=0)  # slots of the loaded generation engines
    slots_per_model: int = Field(default=0, ge=0)  # slots a model gets when it loads
    ctx_size: int = Field(default=0, ge=0)  # context tokens a model gets (0: not said)
    # Seconds the node's last load of each model took (the balancer weighs them against waits).
    load_seconds: Annotated[dict[ModelName, float], Field(max_length=MAX_REPORTED_MODELS)] = Field(
        default_factory=dict
    )
    request_seconds: float = Field(default=0.0, ge=0)  # recent mean request duration
    tokens_per_second: float = Field(default=0.0, ge=0)
    # Prompt tokens computed a second, recently (0: not measured yet).
    prompt_tokens_per_second: float = Field(default=0.0, ge=0)
    cpu_percent: float = Field(default=0.0, ge=0)
    ram_percent: float = Field(default=0.0, ge=0)
    gpu_percent: float = Field(default=0.0, ge=0)
    # Free bytes of each reported GPU, in the order of the registration's devices, as of this
    # heartbeat: the router plans with these, not with the figures of the registration.
    gpu_free: list[int] = Field(default_factory=list, max_length=MAX_DEVICES)
    engine: EngineInfo = Field(default_factory=EngineInfo)
    downloads: Annotated[
        dict[ModelName, dict[str, Any]], Field(max_length=MAX_REPORTED_DOWNLOADS)
    ] = Field(default_factory=dict)
    sync: SyncState = Field(default_factory=SyncState)


def node_base_url(value: str) -> str:
    """``http(s)://host:port`` with an optional path prefix, and nothing else: no user or
    password, no query or fragment, no spaces or control characters, a real port."""
    if any(ord(c) < 33 or ord(c) == 127 for c in value):
        raise ValueError("must not contain spaces or control characters")
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError("must be http(s)://host:port")
    if parts.username is not None or parts.password is not None:
        raise ValueError("must not carry a user or password")
    if parts.query or parts.fragment or value.endswith(("?", "#")):
        raise ValueError("must not have a query or a fragment")
    try:
        port = parts.port
    except ValueError:
        raise ValueError("has an invalid port") from None
    if port is None or not 1 <= port <= 65535:
        raise ValueError("must name its port (1-65535)")
    if ".." in parts.path.split("/"):
        raise ValueError("must not have '..' in its path")
    return value.rstrip("/")


NodeName = Annotated[str, Field(min_length=1, max_length=200, pattern=r"^[\w .@:+-]+$")]


class RegisterRequest(BaseModel):
    name: NodeName
    base_url: Annotated[str, Field(max_length=500), AfterValidator(node_base_url)]
    version: str = Field(default="", max_length=100)
    devices: list[Device] = Field(default_factory=list, max_length=MAX_DEVICES)
    load: NodeLoad = Field(default_factory=NodeLoad)


# Kinds of server an endpoint may be: where the kind changes what the router does (where it
# lists models, which metrics give its load) router.fleet.endpoints says; "openai" is any
# other server that speaks OpenAI's API.
EndpointKind = Literal[
    "openai", "vllm", "sglang", "llama-server", "ollama", "lmstudio", "tgi", "llmlb"
]
MAX_ENDPOINT_CONCURRENCY = 10_000
DEFAULT_ENDPOINT_CONCURRENCY = 16


def endpoint_url(value: str) -> str:
    """An endpoint's base URL as operators copy it (``http://host:8000/v1``,
    ``https://api.example.com/v1``): with its port (the scheme's when not given), without the
    ``/v1`` the router's paths already start with."""
    parts = urlsplit(value)
    try:
        port = parts.port
    except ValueError:
        port = 0  # (node_base_url says what is wrong with it)
    if port is None and parts.scheme in ("http", "https") and parts.hostname:
        default = 443 if parts.scheme == "https" else 80
        value = parts._replace(netloc=f"{parts.netloc}:{default}").geturl()
    value = node_base_url(value)
    return value.removesuffix("/v1") if value.endswith("/v1") else value


class EndpointSpec(BaseModel):
    """An OpenAI-compatible server the operator adds to the fleet (admin API, CLI, the
    settings file's ``endpoints``). Its key is either given (``key``: API and CLI) or named
    (``key_env``: the settings file, so that no secret sits in it)."""

    model_config = ConfigDict(extra="forbid")

    url: Annotated[str, Field(max_length=500), AfterValidator(endpoint_url)]
    kind: EndpointKind = "openai"
    name: NodeName | None = None  # default: the URL's host and port
    key: str | None = Field(default=None, min_length=1, max_length=1000, repr=False)
    key_env: str | None = Field(default=None, pattern=r"^[A-Za-z_][A-Za-z0-9_]{0,127}$")
    # The endpoint's own model ids to serve (default: every one it lists).
    models: list[Annotated[str, Field(min_length=1, max_length=200)]] = Field(
        default_factory=list, max_length=MAX_REPORTED_MODELS
    )
    max_concurrency: int = Field(
        default=DEFAULT_ENDPOINT_CONCURRENCY, ge=1, le=MAX_ENDPOINT_CONCURRENCY
    )

    def display_name(self) -> str:
        if self.name:
            return self.name
        parts = urlsplit(self.url)
        return f"{parts.hostname}:{parts.port}"


class RegisterResponse(BaseModel):
    node_id: str
    heartbeat_interval: float
    status: str
    # Everything the router wants on the node (the node fetches what it lacks).
    assigned_models: list[str] = Field(default_factory=list)


class HeartbeatResponse(BaseModel):
    status: str
    assigned_models: list[str] = Field(default_factory=list)


async def read_limited(response: aiohttp.ClientResponse, limit: int) -> tuple[bytes, bool]:
    """The body, or its first ``limit`` bytes: (bytes, whether that was all of it)."""
    parts: list[bytes] = []
    size = 0
    async for chunk in response.content.iter_any():
        parts.append(chunk)
        size += len(chunk)
        if size > limit:
            return b"".join(parts)[:limit], False
    return b"".join(parts), True
