"""Settings: one source of truth with one precedence.

CLI flags > ``LLMLB_*`` environment > TOML file > defaults.

The TOML file is ``--config``, else ``$LLMLB_CONFIG``, else ``<home>/config.toml``. Its top
level holds keys shared by every part; a ``[node]`` (or ``[router]``) table overrides them for
that part. A key that no part knows is an error naming it (a typo must not pass silently).
Sizes accept plain bytes or units: ``"8GiB"``, ``"512MB"``.

Where router and node differ (``host``, ``port``), each has its own environment variables,
``LLMLB_ROUTER_PORT`` and ``LLMLB_NODE_PORT``: one ``LLMLB_PORT`` would give both the same.

Longer than most modules on purpose: it is the one table of every setting (name, default,
bound, description), which the CLI's flags, the docs and the TOML check all read; split, a
setting's parts would live in two places.
"""

from __future__ import annotations

import ipaddress
import os
import re
import tomllib
import urllib.parse
from contextvars import ContextVar
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal, TypeVar

from pydantic import (
    AliasChoices,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    SecretStr,
    model_validator,
)
from pydantic_settings import (
    BaseSettings,
    EnvSettingsSource,
    InitSettingsSource,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

from llmlb.common.wire import EndpointSpec

DEFAULT_ROUTER_PORT = 32768
DEFAULT_NODE_PORT = 32769
# A running router writes its URL here (in its home) so that the CLI on the same host finds it.
ROUTER_URL_FILE = "router_url"

_UNITS = {
    "": 1, "b": 1, "k": 1000, "kb": 1000, "m": 1000**2, "mb": 1000**2, "g": 1000**3,
    "gb": 1000**3, "t": 1000**4, "tb": 1000**4, "kib": 1024, "mib": 1024**2,
    "gib": 1024**3, "tib": 1024**4,
}  # fmt: skip


def parse_size(value: object) -> object:
    """``"8GiB"`` -> 8589934592; other types pass through to pydantic."""
    if not isinstance(value, str):
        return value
    match = re.fullmatch(r"\s*([0-9]+(?:\.[0-9]+)?)\s*([a-zA-Z]*)\s*", value)
    if not match or match.group(2).lower() not in _UNITS:
        raise ValueError(f"not a size: {value!r} (use bytes or e.g. 512MiB, 8GiB)")
    return int(float(match.group(1)) * _UNITS[match.group(2).lower()])


ByteSize = Annotated[int, BeforeValidator(parse_size)]


def default_home() -> Path:
    return Path(os.environ.get("LLMLB_HOME") or Path.home() / ".llmlb").expanduser()


def _provider_env(name: str, default: Any) -> Any:
    """A cloud setting that also reads the provider's usual variable (``OPENAI_API_KEY``)
    besides ``LLMLB_OPENAI_API_KEY``; in TOML it is ``openai_api_key``."""
    return Field(
        default=default, validation_alias=AliasChoices(name, f"llmlb_{name}"),
        description=f"also ${name.upper()}",
    )  # fmt: skip


# ``--router dns+http://routers:32768``: every address of the name is a router.
DNS_PREFIX = "dns+"

# Keys whose value differs between router and node: only LLMLB_ROUTER_* / LLMLB_NODE_* set them.
PART_SPECIFIC = frozenset({"host", "port"})


class _SharedEnv(EnvSettingsSource):
    """``LLMLB_*`` variables, except the part-specific keys."""

    def __call__(self) -> dict[str, Any]:
        return {k: v for k, v in super().__call__().items() if k not in PART_SPECIFIC}


class _PartEnv(EnvSettingsSource):
    """``LLMLB_NODE_*`` or ``LLMLB_ROUTER_*`` variables, for the part-specific keys only."""

    def __call__(self) -> dict[str, Any]:
        return {k: v for k, v in super().__call__().items() if k in PART_SPECIFIC}


class UnknownSetting(ValueError):
    """A TOML key that no part of llmlb reads."""


# The TOML values of the settings object being built right now (see load_settings).
_toml_values: ContextVar[dict[str, Any] | None] = ContextVar("llmlb_toml_values", default=None)


class CommonSettings(BaseSettings):
    """Keys every llmlb process understands."""

    model_config = SettingsConfigDict(env_prefix="LLMLB_", extra="ignore")
    section: ClassVar[str] = ""

    home: Path = Field(default_factory=default_home, description="State and model store folder")
    log_format: Literal["text", "json"] = "text"
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    otlp_endpoint: str | None = Field(
        default=None, max_length=500,
        description="Send traces over OTLP/HTTP to this collector (e.g. http://otel:4318); "
        "OpenTelemetry's OTEL_EXPORTER_OTLP_ENDPOINT works too (default: no tracing)",
    )  # fmt: skip
    # The HTTP server: no client may hold a connection it does not use.
    shutdown_grace_seconds: float = Field(default=30.0, description="In-flight requests' grace")
    header_timeout: float = Field(
        default=10.0, gt=0, description="Seconds to send a request's headers"
    )
    max_header_bytes: int = Field(
        default=65536, ge=4096, description="Bytes a request's line and headers may take"
    )
    body_timeout: float = Field(default=60.0, gt=0, description="Seconds to send a request's body")
    send_timeout: float = Field(
        default=60.0, gt=0, description="Seconds a client may take to take in more of a stream"
    )
    idle_timeout: int = Field(
        default=30, ge=1, description="Seconds a keep-alive connection may idle"
    )
    max_connections: int = Field(
        default=4096, ge=16, description="Connections and requests at once (503 beyond)"
    )
    # TLS: serve HTTPS with this certificate and key; trust this CA bundle (PEM) for the
    # routers and nodes this process calls (default: the system's trusted CAs).
    tls_cert: Path | None = Field(default=None, description="Serve HTTPS with this certificate")
    tls_key: Path | None = Field(default=None, description="The certificate's private key")
    tls_ca: Path | None = Field(
        default=None, description="CA bundle to verify the routers and nodes this process calls"
    )
    # Whose X-Forwarded-For names the client: a reverse proxy's in front of this process.
    # Nobody's by default: any caller could otherwise choose the address that login lockouts
    # and logs see.
    trusted_proxies: list[str] = Field(
        default_factory=list,
        description="Addresses or networks of reverse proxies whose X-Forwarded-For is believed",
    )

    @model_validator(mode="after")
    def _tls_pair(self) -> CommonSettings:
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("tls_cert and tls_key go together")
        return self

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        toml = InitSettingsSource(settings_cls, init_kwargs=_toml_values.get() or {})
        shared = _SharedEnv(settings_cls, env_prefix="LLMLB_")
        if not cls.section:
            return (init_settings, shared, toml)
        part = _PartEnv(settings_cls, env_prefix=f"LLMLB_{cls.section.upper()}_")
        return (init_settings, part, shared, toml)

    @property
    def models_dir(self) -> Path:
        return self.home / "models"


class NodeSettings(CommonSettings):
    section: ClassVar[str] = "node"

    host: str = "127.0.0.1"
    port: int = DEFAULT_NODE_PORT
    allow_cpu: bool = False
    gpus: str | None = Field(
        default=None, description="GPUs to serve on, by index or UUID: 0,2 (default: every visible)"
    )
    memory_budget: ByteSize | None = Field(
        default=None, description="Bytes of model memory; default: GPU memory, else 80% of RAM"
    )
    parallel: int = Field(default=4, ge=1, le=256, description="Slots per model")
    ctx_size: int = Field(default=4096, ge=64, description="Context tokens per model (shared)")
    threads: int | None = Field(default=None, ge=1, description="CPU threads per model")
    gpu_layers: int = Field(default=-1, description="Layers to offload to the GPU (-1 = all)")
    gpu_split: bool = Field(
        default=True, description="Split a model over several GPUs when no single one holds it"
    )
    gpu_overflow: Literal["refuse", "partial"] = Field(
        default="refuse",
        description="A model the GPUs cannot hold: refused with the figures, or partly on the CPU",
    )
    prompt_cache_mib: int = Field(
        default=512, ge=0, le=1 << 20,
        description="Host memory per generating model for llama.cpp's prompt cache (0: off)",
    )  # fmt: skip
    # llama.cpp's own choice (similarity) gives a request the idle slot whose prompt shares
    # most of it and saves what that slot held only when the request keeps less than half of
    # it; and as each request starts it saves idle slots and empties them. Behind one long
    # shared system prompt no conversation resumed its own turns: each request computed them
    # again (tests/integration/test_node_slot_choice.py; bench/routing_quality.py's agents
    # workload, prefix_affinity 2.3x slower than round robin). cache: the least recently used
    # slot, what it held saved, and the request's best match restored from the prompt cache;
    # idle slots keep their prompts. The cost is a copy of a slot's KV to host memory a
    # request: nothing beside a prompt on a CPU, more on a GPU with long contexts.
    slot_choice: Literal["cache", "similarity"] = Field(
        default="cache",
        description="How a request gets a slot: cache (its best match in the prompt cache "
        "restored) or similarity (llama.cpp's: the slot whose prompt shares most)",
    )
    max_body_bytes: ByteSize = 8 * 1024 * 1024
    load_wait_seconds: float = Field(
        default=120.0, description="How long a request waits for memory held by busy models"
    )
    # Joining a router (issue: the fleet). Without ``router`` the node serves on its own.
    router: str | None = Field(
        default=None,
        description="Router URL to register with (several: URL1,URL2; dns+URL: every address "
        "of its name)",
    )
    node_token: str | None = Field(default=None, description="Router key of scope 'node'")
    node_name: str | None = Field(default=None, description="Name in the fleet (default: hostname)")
    advertise_url: str | None = Field(
        default=None, description="URL the router uses to reach this node (default: bound address)"
    )
    shared_models_dir: Path | None = Field(
        default=None, description="Read-only folder of models used in place (<name>/model.gguf)"
    )
    origin_access: bool | None = Field(
        default=None,
        description="May download from model origins (default: alone yes, in a fleet no)",
    )
    origin_first: bool = Field(
        default=False, description="Try the origin before the router's copy (fleet nodes)"
    )
    prune: bool = Field(
        default=False,
        description="Delete unassigned, idle models when an assigned one needs the space",
    )
    store_limit: ByteSize | None = Field(
        default=None, description="Most bytes the model store may hold (default: the disk)"
    )
    download_wait_seconds: float = Field(
        default=600.0, ge=0, description="How long a request waits for its model to download"
    )
    download_bandwidth: ByteSize | None = Field(default=None, description="Bytes/s cap")
    # Bounds on what one client request may ask of the node.
    default_max_tokens: int = Field(
        default=1024, ge=1, description="Output limit of requests that set none"
    )
    max_embedding_inputs: int = Field(default=256, ge=1, description="Items per embedding request")
    max_embedding_bytes: ByteSize = Field(
        default=1024 * 1024, description="Input bytes per embedding request"
    )

    @property
    def routers(self) -> list[str]:
        """Every router the node joins: each hears its heartbeats and may call it. A URL given
        as ``dns+URL`` is the URL (any of its routers answers for all); ``router_groups``."""
        return [url.removeprefix(DNS_PREFIX) for url in self._router_urls()]

    @property
    def router_groups(self) -> list[str]:
        """The routers given as ``dns+URL``: every address the URL's name resolves to is a
        router of its own (a Kubernetes headless Service's pods; node/router_links.py)."""
        urls = self._router_urls()
        return [url.removeprefix(DNS_PREFIX) for url in urls if url.startswith(DNS_PREFIX)]

    def _router_urls(self) -> list[str]:
        return [url.strip().rstrip("/") for url in (self.router or "").split(",") if url.strip()]

    @property
    def uses_origin(self) -> bool:
        """Whether the node may fetch from a model's origin: a standalone node has nowhere
        else to go; a fleet node goes through its router (so the fleet downloads each model
        from the internet once) unless told otherwise."""
        if self.origin_access is not None:  # said outright: --no-origin-access wins
            return self.origin_access
        return self.router is None or self.origin_first


class RoleLimits(BaseModel):
    """What a signed-in user of one role may ask of the client API (``/v1/*``): the
    dashboard's playground, or a script with basic auth. API keys carry limits of their own."""

    model_config = ConfigDict(extra="forbid")

    requests_per_minute: int | None = Field(default=None, ge=1, le=2**31 - 1)
    tokens_per_minute: int | None = Field(default=None, ge=1, le=2**31 - 1)
    models: list[str] | None = Field(default=None, min_length=1, max_length=100)
    cloud: bool = Field(default=False, description="May use openai:, anthropic:, google: models")


class OidcSettings(BaseModel):
    """Single sign-on for the dashboard with an OpenID Connect provider (router.access.sso).

    The client secret is read from the environment variable ``client_secret_env`` names, so
    that no secret sits in the settings; a provider's public client (PKCE alone) needs none."""

    model_config = ConfigDict(extra="forbid")

    issuer: str = Field(description="The provider's issuer URL (https; http on loopback only)")
    client_id: str = Field(min_length=1, max_length=500)
    client_secret: str | None = Field(default=None, exclude=True)  # refused: see below
    client_secret_env: str = Field(
        default="LLMLB_OIDC_CLIENT_SECRET",
        description="The environment variable that holds the client secret",
    )
    scopes: list[str] = Field(default_factory=lambda: ["openid", "profile", "email"])
    role_claim: str = Field(
        default="groups",
        description="The claim that carries groups or roles; a dotted path reaches into "
        "objects (Keycloak: realm_access.roles)",
    )
    admin_values: list[str] = Field(
        default_factory=list, description="Values of the role claim that make an admin"
    )
    viewer_values: list[str] = Field(
        default_factory=list, description="Values of the role claim that make a viewer"
    )
    default_role: Literal["none", "viewer"] = Field(
        default="none", description="The role of a user with none of those values (none: refused)"
    )
    username_claim: str = Field(
        default="preferred_username",
        description="The claim that names the user here (else email, else sub)",
    )
    label: str = Field(default="single sign-on", max_length=60,
                       description="What the login button says: Sign in with <label>")  # fmt: skip
    redirect_url: str | None = Field(
        default=None,
        description="The callback URL registered with the provider, when the router is reached "
        "through a proxy (default: <the router's URL>/api/auth/oidc/callback)",
    )

    @model_validator(mode="after")
    def _checked(self) -> OidcSettings:
        if self.client_secret is not None:
            raise ValueError(
                "oidc: name the environment variable that holds the client secret "
                "(client_secret_env), so that no secret sits in the settings"
            )
        for url in (self.issuer, self.redirect_url):
            if url is not None and not _secure_url(url):
                raise ValueError(f"oidc: {url!r} must be https (http only on a loopback address)")
        if "openid" not in self.scopes:
            raise ValueError("oidc: scopes must include 'openid'")
        return self


def _secure_url(url: str) -> bool:
    parts = urllib.parse.urlsplit(url)
    if parts.scheme == "https" and parts.hostname:
        return True
    if parts.scheme != "http" or not parts.hostname:
        return False
    if parts.hostname == "localhost":
        return True
    try:
        return ipaddress.ip_address(parts.hostname).is_loopback
    except ValueError:
        return False


BalancerStrategy = Literal["load", "round_robin", "least_busy", "prefix_affinity"]
AutoDistribute = Literal["none", "recommended", "all-that-fit"]


class RouterSettings(CommonSettings):
    section: ClassVar[str] = "router"

    host: str = "127.0.0.1"
    port: int = DEFAULT_ROUTER_PORT
    ollama_port: int | None = Field(
        default=None, ge=0, le=65535,
        description="Also listen on this port (Ollama's is 11434), on the same host, so that "
        "clients set up for an Ollama server need no change (default: off)",
    )  # fmt: skip
    # A router process uses one core (Python's); more cores answer more requests through
    # several processes on the same ports and database (router.workers).
    workers: int = Field(
        default=1, ge=1, le=64,
        description="Router processes sharing its ports and database, one core each (llmlb serve)",
    )  # fmt: skip
    database_url: str | None = Field(
        default=None, description="SQLAlchemy URL (default: SQLite file <home>/llmlb.db)"
    )
    database_wait_seconds: float = Field(
        default=60.0, ge=0, description="How long a starting router waits for its database server"
    )
    allow_cpu_nodes: bool = False
    gpu_split: bool = Field(
        default=True,
        description="Plan a model over several GPUs of a node when no single one holds it",
    )
    require_node_approval: bool = False
    no_auth: bool = False
    admin_password: str | None = Field(
        default=None, description="The first admin's password; an admin credential while set"
    )
    node_token: SecretStr | None = Field(
        default=None,
        description="The nodes' token, e.g. from a secret store (default: made on first start, "
        "kept in <home>/node_token)",
    )
    session_hours: float = Field(default=12.0, gt=0, description="Dashboard login lifetime")
    viewer_limits: RoleLimits = Field(
        default_factory=lambda: RoleLimits(requests_per_minute=60, tokens_per_minute=60_000),
        description="What a viewer's session may use of /v1/* (no cloud models by default)",
    )
    admin_limits: RoleLimits = Field(
        default_factory=lambda: RoleLimits(cloud=True),
        description="What an admin's session may use of /v1/*",
    )
    cors_origins: list[str] = Field(
        default_factory=list,
        description="Web origins whose pages may call /v1/* from a browser (* for any)",
    )
    oidc: OidcSettings | None = Field(
        default=None, description="Single sign-on for the dashboard with an OpenID Connect provider"
    )
    key_sync_seconds: float = Field(
        default=0.5, gt=0, le=60,
        description="How soon a key made or revoked elsewhere counts here (routers, the CLI)",
    )  # fmt: skip
    heartbeat_interval: float = Field(default=10.0, gt=0)
    endpoints: list[EndpointSpec] = Field(
        default_factory=list, max_length=1000,
        description="OpenAI-compatible servers in the fleet beside the nodes (a key by key_env)",
    )  # fmt: skip
    balancer: BalancerStrategy = "load"
    request_timeout: float = Field(default=600.0, gt=0, description="Seconds per proxied request")
    connect_timeout: float = Field(default=5.0, gt=0)
    max_attempts: int = Field(default=3, ge=1, description="Nodes tried per request")
    node_max_concurrency: int | None = Field(
        default=None, ge=1, description="Requests in flight per node (default: its slots x 2)"
    )
    queue_size: int = Field(default=256, ge=0, description="Requests that may wait for a node")
    queue_timeout: float = Field(default=60.0, gt=0)
    history_days: float = Field(default=7.0, gt=0)
    log_bodies: bool = False
    access_log: bool = Field(
        default=False,
        description="A line per client request on the logger llmlb.access (request id, key, "
        "model, node, status, latency, tokens; no bodies); JSON fields with --log-format json",
    )
    max_body_bytes: ByteSize = Field(
        default=8 * 1024 * 1024, description="Largest client request body"
    )
    max_node_report_bytes: ByteSize = Field(
        default=1024 * 1024, description="Largest node registration or heartbeat"
    )
    max_buffered_answer: ByteSize = Field(
        default=16 * 1024 * 1024, description="Largest whole answer held; larger ones stream"
    )
    max_admin_body_bytes: ByteSize = Field(
        default=64 * 1024, description="Largest admin API request body"
    )
    auto_distribute: AutoDistribute = "recommended"
    model_tiers: dict[ByteSize, str] | None = Field(
        default=None,
        description="GPU memory -> model for auto_distribute=recommended, e.g. "
        '{"16GiB": "gpt-oss:20b", "0": "gemma3:270m"} (default: the catalog\'s tiers)',
    )
    recommended_models: list[str] = Field(
        default_factory=list, description="Models every node gets besides its tier's"
    )
    max_concurrent_downloads: int = Field(default=10, ge=1)
    task_lease_seconds: float = Field(
        default=15.0, gt=0, description="How long a dead router's tasks wait for a taker"
    )
    limit_share_seconds: float = Field(
        default=1.0, gt=0, description="How often routers on one database share per-key usage"
    )
    offline_node_expiry: float = Field(
        default=24 * 3600.0, gt=0, description="Seconds after which an offline node is forgotten"
    )
    # Cloud providers, for model names prefixed ``openai:``, ``anthropic:``, ``google:``.
    openai_api_key: SecretStr | None = _provider_env("openai_api_key", None)
    openai_base_url: str = _provider_env("openai_base_url", "https://api.openai.com/v1")
    anthropic_api_key: SecretStr | None = _provider_env("anthropic_api_key", None)
    anthropic_base_url: str = _provider_env("anthropic_base_url", "https://api.anthropic.com")
    google_api_key: SecretStr | None = _provider_env("google_api_key", None)
    google_base_url: str = _provider_env(
        "google_base_url", "https://generativelanguage.googleapis.com"
    )
    cloud_max_concurrency: int = Field(
        default=32, ge=1, description="Requests in flight per cloud provider (others queue)"
    )
    cloud_max_retries: int = Field(
        default=2, ge=0, le=10, description="Retries of a provider's 429 or 5xx answer"
    )
    cloud_max_retry_wait: float = Field(
        default=30.0, ge=0, description="Longest Retry-After a retry waits out (seconds)"
    )
    max_image_bytes: ByteSize = Field(
        default=20 * 1024 * 1024,
        description="Largest image in a request: sent to a cloud, or fetched by URL for a node",
    )
    image_fetch_private: bool = Field(
        default=False,
        description="Fetch images by URL from private and local addresses too (for nodes)",
    )

    @model_validator(mode="after")
    def _node_token_strong(self) -> RouterSettings:
        if self.node_token is not None and len(self.node_token.get_secret_value()) < 32:
            raise ValueError("node_token must be at least 32 characters (openssl rand -hex 32)")
        return self

    @model_validator(mode="after")
    def _endpoint_keys_named(self) -> RouterSettings:
        for spec in self.endpoints:
            if spec.key is not None:
                raise ValueError(
                    f"endpoint {spec.url}: name the environment variable that holds its key "
                    "(key_env), so that no secret sits in the settings"
                )
        return self

    @property
    def db_url(self) -> str:
        return self.database_url or f"sqlite+aiosqlite:///{self.home / 'llmlb.db'}"


S = TypeVar("S", bound=CommonSettings)


def config_path(cli_config: Path | None) -> Path:
    if cli_config is not None:
        return cli_config
    env = os.environ.get("LLMLB_CONFIG")
    return Path(env) if env else default_home() / "config.toml"


def _known_keys() -> dict[str, frozenset[str]]:
    """Keys each TOML table may hold: a part's own table, or the top level (shared)."""
    node, router = frozenset(NodeSettings.model_fields), frozenset(RouterSettings.model_fields)
    return {"node": node, "router": router, "": (node | router) - PART_SPECIFIC}


def read_toml(path: Path, section: str) -> dict[str, Any]:
    """The top-level keys of ``path`` overlaid by its ``[section]`` table; {} if absent.

    Raises UnknownSetting for a key or table that no part reads.
    """
    if not path.is_file():
        return {}
    with path.open("rb") as stream:
        data = tomllib.load(stream)
    known = _known_keys()
    for table in (k for k, v in data.items() if isinstance(v, dict)):
        if table not in ("node", "router"):
            raise UnknownSetting(f"{path}: unknown table [{table}] (use [node] or [router])")
    merged = {}
    for table, values in [("", data), ("node", data.get("node")), ("router", data.get("router"))]:
        if not isinstance(values, dict):
            continue
        for key, value in values.items():
            if isinstance(value, dict) and not table:
                continue
            name = key.replace("-", "_")
            if name not in known[table]:
                where = f"[{table}]" if table else "the top level"
                hint = " (put it in [node] or [router])" if name in PART_SPECIFIC else ""
                raise UnknownSetting(f"{path}: unknown setting {key!r} at {where}{hint}")
            if table in ("", section):
                merged[name] = value
    return merged


def load_settings(cls: type[S], cli: dict[str, Any], config: Path | None = None) -> S:
    """Build settings from CLI values (``None`` means "not given"), env, TOML and defaults."""
    toml = read_toml(config_path(config), cls.section)
    given = {key: value for key, value in cli.items() if value is not None}
    token = _toml_values.set(toml)
    try:
        return cls(**given)
    finally:
        _toml_values.reset(token)
