"""What a cloud provider module supplies: its request, its answers, its stream, its errors."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, ClassVar

import orjson

from llmlb.translate.sse import ServerEvent, encode


@dataclass(frozen=True)
class ProviderRequest:
    """A POST to the provider: path (after its base URL) and JSON payload."""

    path: str
    payload: dict[str, Any]
    ignored: list[str] = field(default_factory=list)  # request fields the provider lacks


@dataclass(frozen=True)
class ModelPage:
    ids: list[str]
    next_query: dict[str, str] | None  # the next page's query, None on the last


# What a translator raises on an event it cannot read (the caller answers 502 "malformed").
MALFORMED_EVENT = (KeyError, TypeError, ValueError, AttributeError)


class StreamFailed(Exception):
    """The provider reported an error inside its stream."""


class StreamTranslator(ABC):
    """A provider's streamed events in, chat chunks out."""

    def __init__(self, model: str) -> None:
        self.model = model
        self.finished = False  # the provider's final event arrived
        self.usage: dict[str, int] = {}

    @abstractmethod
    def feed(self, event: ServerEvent) -> list[dict[str, Any]]:
        """The chat chunks ``event`` makes; StreamFailed for an error event."""


class Provider(ABC):
    name: ClassVar[str]
    key_setting: ClassVar[str]  # the environment variable that holds the key
    models_path: ClassVar[str]
    # Endpoints relayed to the provider as they are (the model name swapped): client path ->
    # provider path.
    passthrough: ClassVar[dict[str, str]] = {}

    def __init__(self, api_key: str, base_url: str, max_image_bytes: int) -> None:
        self.api_key = api_key
        self.base_url = base_url.rstrip("/")
        self.max_image_bytes = max_image_bytes

    @abstractmethod
    def headers(self) -> dict[str, str]:
        """Authentication and version headers of every call."""

    @abstractmethod
    def chat_request(self, body: dict[str, Any], model: str, stream: bool) -> ProviderRequest:
        """The provider's request for an OpenAI chat request (BadRequest when it cannot be)."""

    @abstractmethod
    def chat_answer(self, data: dict[str, Any], model: str) -> dict[str, Any]:
        """A ``chat.completion`` from the provider's whole answer."""

    @abstractmethod
    def chat_stream(self, model: str) -> StreamTranslator:
        """A translator of one streamed answer."""

    @abstractmethod
    def model_page(self, data: dict[str, Any]) -> ModelPage:
        """The model ids of one page of the provider's model list."""

    def stream_error(self, message: str) -> bytes:
        """The event that ends a relayed stream which broke (OpenAI's Responses ``error``)."""
        return encode({"type": "error", "code": "upstream_error", "message": message,
                       "param": None}, "error")  # fmt: skip

    def error_of(self, body: bytes) -> tuple[str, str | None]:
        """The message and error type of an error answer (all three nest them in "error")."""
        try:
            error = orjson.loads(body).get("error")
        except (orjson.JSONDecodeError, AttributeError):
            error = None
        if isinstance(error, dict) and error.get("message"):
            kind = error.get("type") or error.get("status")
            return str(error["message"]), str(kind) if kind else None
        text = body[:300].decode(errors="replace").strip()
        return text or "no error message", None
