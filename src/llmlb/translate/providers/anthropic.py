"""Anthropic's Messages API (``POST /v1/messages``) as a chat provider."""

from __future__ import annotations

from typing import Any, ClassVar

import orjson

from llmlb.common.errors import BadRequest
from llmlb.translate import chat
from llmlb.translate.providers.base import (
    ModelPage,
    Provider,
    ProviderRequest,
    StreamFailed,
    StreamTranslator,
)
from llmlb.translate.sse import ServerEvent, encode

API_VERSION = "2023-06-01"
# Anthropic requires max_tokens; chat requests often leave it out.
DEFAULT_MAX_TOKENS = 4096
FINISH_REASONS = {"end_turn": "stop", "stop_sequence": "stop", "max_tokens": "length",
                  "tool_use": "tool_calls", "refusal": "content_filter", "pause_turn": "stop",
                  "model_context_window_exceeded": "length"}  # fmt: skip
_UNDERSTOOD = frozenset({"top_k"})


def content_blocks(message: dict[str, Any], max_image_bytes: int) -> list[dict[str, Any]]:
    """A chat message's content as Anthropic content blocks."""
    blocks: list[dict[str, Any]] = []
    for part in chat.parts_of(message.get("content")):
        if part["type"] == "text":
            if part.get("text"):
                blocks.append({"type": "text", "text": str(part["text"])})
            continue
        url = chat.image_url_of(part)
        image = chat.inline_image(url, max_image_bytes)
        source = (
            {"type": "url", "url": url}
            if image is None
            else {"type": "base64", "media_type": image.media_type, "data": image.data}
        )
        blocks.append({"type": "image", "source": source})
    return blocks


def messages_of(
    messages: list[dict[str, Any]], max_image_bytes: int
) -> tuple[str | None, list[dict[str, Any]]]:
    """(system prompt, Anthropic messages) of chat messages: system turns lifted out, tool
    results as user turns, consecutive turns of one role merged (Anthropic alternates)."""
    system: list[str] = []
    turns: list[dict[str, Any]] = []

    def add(role: str, blocks: list[dict[str, Any]]) -> None:
        if turns and turns[-1]["role"] == role:
            turns[-1]["content"].extend(blocks)
        else:
            turns.append({"role": role, "content": blocks})

    for message in messages:
        role = message.get("role")
        if role in ("system", "developer"):
            system.append(chat.text_of(message.get("content")))
        elif role == "user":
            add("user", content_blocks(message, max_image_bytes))
        elif role == "assistant":
            blocks = content_blocks(message, max_image_bytes)
            for call in message.get("tool_calls") or []:
                function = call.get("function") or {}
                blocks.append(
                    {
                        "type": "tool_use",
                        "id": call.get("id"),
                        "name": function.get("name"),
                        "input": chat.arguments_object(function.get("arguments")),
                    }
                )
            add("assistant", blocks)
        elif role == "tool":
            add("user", [{"type": "tool_result", "tool_use_id": message.get("tool_call_id"),
                          "content": chat.text_of(message.get("content"))}])  # fmt: skip
        else:
            raise BadRequest(f"unknown message role {role!r}", param="messages")
    return ("\n\n".join(system) if system else None), turns


def tool_choice_of(choice: Any) -> dict[str, Any] | None:
    if choice is None:
        return None
    if choice in ("auto", "none"):
        return {"type": choice}
    if choice == "required":
        return {"type": "any"}
    if isinstance(choice, dict) and isinstance(choice.get("function"), dict):
        return {"type": "tool", "name": choice["function"].get("name")}
    raise BadRequest("'tool_choice' must be auto, none, required or a function",
                     param="tool_choice")  # fmt: skip


class AnthropicStream(StreamTranslator):
    def __init__(self, model: str) -> None:
        super().__init__(model)
        self._id = chat.new_id("chatcmpl-")
        self._tools: dict[int, int] = {}  # content block index -> tool call index
        self._input_tokens = 0

    def feed(self, event: ServerEvent) -> list[dict[str, Any]]:
        data = event.json()
        kind = data.get("type") if isinstance(data, dict) else None
        if kind == "message_start":
            message = data["message"]
            self._id = str(message.get("id") or self._id)
            self.model = str(message.get("model") or self.model)
            self._input_tokens = int((message.get("usage") or {}).get("input_tokens") or 0)
            return [self._chunk({"role": "assistant", "content": ""})]
        if kind == "content_block_start":
            block = data["content_block"]
            if block.get("type") == "tool_use":
                index = self._tools[data["index"]] = len(self._tools)
                call = chat.tool_call(block["id"], block["name"], "", index)
                return [self._chunk({"tool_calls": [call]})]
            if block.get("type") == "text" and block.get("text"):
                return [self._chunk({"content": block["text"]})]
            return []
        if kind == "content_block_delta":
            delta = data["delta"]
            if delta.get("type") == "text_delta":
                return [self._chunk({"content": delta["text"]})]
            if delta.get("type") == "input_json_delta" and data["index"] in self._tools:
                piece = {"index": self._tools[data["index"]],
                         "function": {"arguments": delta.get("partial_json", "")}}  # fmt: skip
                return [self._chunk({"tool_calls": [piece]})]
            return []  # thinking and signatures stay with Anthropic
        if kind == "message_delta":
            output = int((data.get("usage") or {}).get("output_tokens") or 0)
            inputs = (data.get("usage") or {}).get("input_tokens")
            self.usage = chat.usage(inputs if inputs is not None else self._input_tokens, output)
            reason = (data.get("delta") or {}).get("stop_reason")
            return [self._chunk({}, FINISH_REASONS.get(reason, "stop"))] if reason else []
        if kind == "message_stop":
            self.finished = True
            return [chat.usage_chunk(self._id, self.model, self.usage)] if self.usage else []
        if kind == "error":
            raise StreamFailed(str((data.get("error") or {}).get("message") or "error event"))
        return []  # ping, and event types added later

    def _chunk(self, delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
        return chat.chunk(self._id, self.model, delta, finish)


class Anthropic(Provider):
    name = "anthropic"
    key_setting = "ANTHROPIC_API_KEY"
    models_path = "/v1/models"
    passthrough: ClassVar[dict[str, str]] = {
        "/v1/messages": "/v1/messages", "/v1/messages/count_tokens": "/v1/messages/count_tokens",
    }  # fmt: skip

    def headers(self) -> dict[str, str]:
        return {"x-api-key": self.api_key, "anthropic-version": API_VERSION}

    def stream_error(self, message: str) -> bytes:
        return encode({"type": "error", "error": {"type": "api_error", "message": message}},
                      "error")  # fmt: skip

    def chat_request(self, body: dict[str, Any], model: str, stream: bool) -> ProviderRequest:
        if (body.get("n") or 1) != 1:
            raise BadRequest("anthropic models answer one choice: 'n' must be 1", param="n")
        system, messages = messages_of(chat.messages_of(body), self.max_image_bytes)
        payload: dict[str, Any] = {
            "model": model, "messages": messages,
            "max_tokens": chat.max_tokens_of(body) or DEFAULT_MAX_TOKENS,
        }  # fmt: skip
        if system:
            payload["system"] = system
        for name in ("temperature", "top_p", "top_k"):
            if body.get(name) is not None:
                payload[name] = body[name]
        if (stop := chat.stop_list(body)) is not None:
            payload["stop_sequences"] = stop
        if tools := chat.function_tools(body):
            payload["tools"] = [
                {"name": f["name"], "description": f.get("description", ""),
                 "input_schema": f.get("parameters") or {"type": "object", "properties": {}}}
                for f in tools
            ]  # fmt: skip
        choice = tool_choice_of(body.get("tool_choice"))
        if body.get("parallel_tool_calls") is False and tools:
            choice = choice or {"type": "auto"}
            if choice["type"] != "none":
                choice["disable_parallel_tool_use"] = True
        if choice is not None:
            payload["tool_choice"] = choice
        if stream:
            payload["stream"] = True
        return ProviderRequest("/v1/messages", payload, chat.ignored_fields(body, _UNDERSTOOD))

    def chat_answer(self, data: dict[str, Any], model: str) -> dict[str, Any]:
        text: list[str] = []
        calls = []
        for block in data.get("content") or []:
            if block.get("type") == "text":
                text.append(str(block.get("text", "")))
            elif block.get("type") == "tool_use":
                arguments = orjson.dumps(block.get("input") or {}).decode()
                calls.append(chat.tool_call(str(block["id"]), str(block["name"]), arguments))
        message: dict[str, Any] = {"role": "assistant", "content": "".join(text) or None}
        if calls:
            message["tool_calls"] = calls
        tokens = data.get("usage") or {}
        return chat.completion(
            str(data.get("id") or chat.new_id("chatcmpl-")), str(data.get("model") or model),
            message, FINISH_REASONS.get(data.get("stop_reason") or "", "stop"),
            chat.usage(tokens.get("input_tokens"), tokens.get("output_tokens")),
        )  # fmt: skip

    def chat_stream(self, model: str) -> StreamTranslator:
        return AnthropicStream(model)

    def model_page(self, data: dict[str, Any]) -> ModelPage:
        ids = [str(m["id"]) for m in data.get("data", []) if "id" in m]
        more = data.get("has_more") and data.get("last_id")
        return ModelPage(ids, {"after_id": str(data["last_id"]), "limit": "1000"} if more else None)
