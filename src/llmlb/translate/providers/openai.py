"""OpenAI: the chat format is its own, so translation is a pass with the model renamed."""

from __future__ import annotations

from typing import Any, ClassVar

from llmlb.translate.providers.base import (
    ModelPage,
    Provider,
    ProviderRequest,
    StreamFailed,
    StreamTranslator,
)
from llmlb.translate.shapes import checked_chunk, checked_completion
from llmlb.translate.sse import ServerEvent


class OpenAIStream(StreamTranslator):
    def feed(self, event: ServerEvent) -> list[dict[str, Any]]:
        if event.data == "[DONE]":
            self.finished = True
            return []
        data = event.json()
        if not isinstance(data, dict):
            raise ValueError("an event that is not a JSON object")
        if "error" in data:
            raise StreamFailed(str((data["error"] or {}).get("message") or data["error"]))
        chunk = checked_chunk(data)
        if isinstance(chunk.get("usage"), dict):
            self.usage = chunk["usage"]
        return [chunk]


class OpenAI(Provider):
    name = "openai"
    key_setting = "OPENAI_API_KEY"
    models_path = "/models"
    passthrough: ClassVar[dict[str, str]] = {
        "/v1/completions": "/completions", "/v1/embeddings": "/embeddings",
        "/v1/responses": "/responses",
    }  # fmt: skip

    def headers(self) -> dict[str, str]:
        return {"authorization": f"Bearer {self.api_key}"}

    def chat_request(self, body: dict[str, Any], model: str, stream: bool) -> ProviderRequest:
        payload = {**body, "model": model}
        if stream:  # always: the router counts tokens
            payload["stream_options"] = {**(body.get("stream_options") or {}),
                                         "include_usage": True}  # fmt: skip
        return ProviderRequest("/chat/completions", payload)

    def chat_answer(self, data: dict[str, Any], model: str) -> dict[str, Any]:
        return checked_completion(data)

    def chat_stream(self, model: str) -> StreamTranslator:
        return OpenAIStream(model)

    def model_page(self, data: dict[str, Any]) -> ModelPage:
        return ModelPage([str(m["id"]) for m in data.get("data", []) if "id" in m], None)
