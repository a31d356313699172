"""Google's Gemini API (``models/{model}:generateContent``) as a chat provider."""

from __future__ import annotations

import re
from typing import Any

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
from llmlb.translate.sse import ServerEvent

# The model name becomes part of the URL path: nothing but a plain name passes.
_MODEL_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
_FILTERED = {"SAFETY", "RECITATION", "BLOCKLIST", "PROHIBITED_CONTENT", "SPII",
             "IMAGE_SAFETY"}  # fmt: skip
_UNDERSTOOD = frozenset({"presence_penalty", "frequency_penalty", "seed", "response_format"})
# Tool call ids made here (Gemini 2.x gives none), and the separator before a thought signature.
_OUR_ID = "llmlb-call-"
_SIGNATURE = ".sig."
_MIME_TYPES = {"png": "image/png", "jpg": "image/jpeg", "jpeg": "image/jpeg",
               "webp": "image/webp", "gif": "image/gif", "heic": "image/heic"}  # fmt: skip


def finish_reason(reason: str | None, calls: bool) -> str | None:
    if reason is None or reason == "FINISH_REASON_UNSPECIFIED":
        return None
    if reason == "MAX_TOKENS":
        return "length"
    if reason in _FILTERED:
        return "content_filter"
    return "tool_calls" if calls else "stop"


def _parts(message: dict[str, Any], max_image_bytes: int) -> list[dict[str, Any]]:
    parts: list[dict[str, Any]] = []
    for part in chat.parts_of(message.get("content")):
        if part["type"] == "text":
            if part.get("text"):
                parts.append({"text": str(part["text"])})
            continue
        url = chat.image_url_of(part)
        image = chat.inline_image(url, max_image_bytes)
        if image is None:
            suffix = url.rsplit(".", 1)[-1].lower().split("?")[0]
            mime = _MIME_TYPES.get(suffix, "image/jpeg")
            parts.append({"fileData": {"mimeType": mime, "fileUri": url}})
        else:
            parts.append({"inlineData": {"mimeType": image.media_type, "data": image.data}})
    return parts


def contents_of(
    messages: list[dict[str, Any]], max_image_bytes: int
) -> tuple[dict[str, Any] | None, list[dict[str, Any]]]:
    """(systemInstruction, contents) of chat messages."""
    system: list[dict[str, Any]] = []
    contents: list[dict[str, Any]] = []
    names: dict[str, str] = {}  # tool call id -> function name (Gemini answers by name)

    def add(role: str, parts: list[dict[str, Any]]) -> None:
        if contents and contents[-1]["role"] == role:
            contents[-1]["parts"].extend(parts)
        elif parts:
            contents.append({"role": role, "parts": parts})

    for message in messages:
        role = message.get("role")
        if role in ("system", "developer"):
            system.append({"text": chat.text_of(message.get("content"))})
        elif role == "user":
            add("user", _parts(message, max_image_bytes))
        elif role == "assistant":
            parts = _parts(message, max_image_bytes)
            for call in message.get("tool_calls") or []:
                function = call.get("function") or {}
                names[str(call.get("id"))] = str(function.get("name"))
                gemini_id, signature = _gemini_call(str(call.get("id")))
                function_call: dict[str, Any] = {
                    "name": function.get("name"),
                    "args": chat.arguments_object(function.get("arguments")),
                }
                if gemini_id:
                    function_call["id"] = gemini_id
                part: dict[str, Any] = {"functionCall": function_call}
                if signature:
                    part["thoughtSignature"] = signature
                parts.append(part)
            add("model", parts)
        elif role == "tool":
            text = chat.text_of(message.get("content"))
            try:
                result = orjson.loads(text)
            except orjson.JSONDecodeError:
                result = text
            name = names.get(str(message.get("tool_call_id")))
            if name is None:
                raise BadRequest("a tool message answers no tool call before it",
                                 param="messages")  # fmt: skip
            response = result if isinstance(result, dict) else {"content": result}
            answer: dict[str, Any] = {"name": name, "response": response}
            if gemini_id := _gemini_call(str(message.get("tool_call_id")))[0]:
                answer["id"] = gemini_id
            add("user", [{"functionResponse": answer}])
        else:
            raise BadRequest(f"unknown message role {role!r}", param="messages")
    return ({"parts": system} if system else None), contents


def _tool_config(choice: Any) -> dict[str, Any] | None:
    if choice is None:
        return None
    if choice in ("auto", "none"):
        return {"functionCallingConfig": {"mode": choice.upper()}}
    if choice == "required":
        return {"functionCallingConfig": {"mode": "ANY"}}
    if isinstance(choice, dict) and isinstance(choice.get("function"), dict):
        name = choice["function"].get("name")
        return {"functionCallingConfig": {"mode": "ANY", "allowedFunctionNames": [name]}}
    raise BadRequest("'tool_choice' must be auto, none, required or a function",
                     param="tool_choice")  # fmt: skip


def _generation_config(body: dict[str, Any]) -> dict[str, Any]:
    config: dict[str, Any] = {}
    names = {"temperature": "temperature", "top_p": "topP", "presence_penalty": "presencePenalty",
             "frequency_penalty": "frequencyPenalty", "seed": "seed"}  # fmt: skip
    for ours, theirs in names.items():
        if body.get(ours) is not None:
            config[theirs] = body[ours]
    if (tokens := chat.max_tokens_of(body)) is not None:
        config["maxOutputTokens"] = tokens
    if (stop := chat.stop_list(body)) is not None:
        config["stopSequences"] = stop
    if (body.get("n") or 1) != 1:
        raise BadRequest("google models are asked for one choice here: 'n' must be 1", param="n")
    fmt = body.get("response_format") or {}
    if fmt.get("type") == "json_object":
        config["responseMimeType"] = "application/json"
    elif fmt.get("type") == "json_schema":
        config["responseMimeType"] = "application/json"
        config["responseJsonSchema"] = (fmt.get("json_schema") or {}).get("schema") or {}
    return config


def _call_id(call: dict[str, Any], part: dict[str, Any], index: int) -> str:
    """The chat tool call id for a Gemini function call: Gemini's own id (or one of ours,
    marked as such), plus the part's ``thoughtSignature``, which Gemini wants back with the
    call in the next turn. Clients echo a tool call's id untouched, so it carries both."""
    id_ = str(call["id"]) if call.get("id") else f"{_OUR_ID}{index}"
    signature = part.get("thoughtSignature")
    return f"{id_}{_SIGNATURE}{signature}" if isinstance(signature, str) else id_


def _gemini_call(tool_call_id: str) -> tuple[str | None, str | None]:
    """(Gemini's call id, the thought signature) carried in a chat tool call id."""
    id_, _, signature = tool_call_id.partition(_SIGNATURE)
    return (None if id_.startswith(_OUR_ID) else id_ or None), (signature or None)


def _calls(parts: list[dict[str, Any]], first_index: int) -> list[dict[str, Any]]:
    calls: list[dict[str, Any]] = []
    for part in parts:
        if isinstance(call := part.get("functionCall"), dict):
            index = first_index + len(calls)
            arguments = orjson.dumps(call.get("args") or {}).decode()
            calls.append(chat.tool_call(_call_id(call, part, index), str(call.get("name")),
                                        arguments, index))  # fmt: skip
    return calls


def _text(parts: list[dict[str, Any]]) -> str:
    return "".join(str(p["text"]) for p in parts if "text" in p and not p.get("thought"))


def _usage(data: dict[str, Any]) -> dict[str, int]:
    meta = data.get("usageMetadata") or {}
    output = int(meta.get("candidatesTokenCount") or 0) + int(meta.get("thoughtsTokenCount") or 0)
    return chat.usage(meta.get("promptTokenCount"), output)


class GoogleStream(StreamTranslator):
    def __init__(self, model: str) -> None:
        super().__init__(model)
        self._id = chat.new_id("chatcmpl-")
        self._started = False
        self._calls = 0

    def feed(self, event: ServerEvent) -> list[dict[str, Any]]:
        data = event.json()
        if not isinstance(data, dict):
            raise ValueError("an event that is not a JSON object")
        if "error" in data:
            raise StreamFailed(str((data["error"] or {}).get("message") or data["error"]))
        self._id = str(data.get("responseId") or self._id)
        self.model = str(data.get("modelVersion") or self.model)
        chunks = []
        if not self._started:
            self._started = True
            chunks.append(chat.chunk(self._id, self.model, {"role": "assistant", "content": ""}))
        if data.get("usageMetadata"):
            self.usage = _usage(data)
        candidates = data.get("candidates") or []
        if not candidates and (data.get("promptFeedback") or {}).get("blockReason"):
            self.finished = True
            return [*chunks, chat.chunk(self._id, self.model, {}, "content_filter")]
        for candidate in candidates[:1]:
            parts = (candidate.get("content") or {}).get("parts") or []
            if text := _text(parts):
                chunks.append(chat.chunk(self._id, self.model, {"content": text}))
            if calls := _calls(parts, self._calls):
                self._calls += len(calls)
                chunks.append(chat.chunk(self._id, self.model, {"tool_calls": calls}))
            reason = finish_reason(candidate.get("finishReason"), self._calls > 0)
            if reason is not None:
                self.finished = True
                chunks.append(chat.chunk(self._id, self.model, {}, reason))
                chunks.append(chat.usage_chunk(self._id, self.model, self.usage))
        return chunks


class Google(Provider):
    name = "google"
    key_setting = "GOOGLE_API_KEY"
    models_path = "/v1beta/models"

    def headers(self) -> dict[str, str]:
        return {"x-goog-api-key": self.api_key}

    def chat_request(self, body: dict[str, Any], model: str, stream: bool) -> ProviderRequest:
        model = model.removeprefix("models/")
        if not _MODEL_NAME.fullmatch(model):
            raise BadRequest(f"{model!r} is not a Gemini model name", param="model")
        system, contents = contents_of(chat.messages_of(body), self.max_image_bytes)
        payload: dict[str, Any] = {"contents": contents}
        if system:
            payload["systemInstruction"] = system
        if config := _generation_config(body):
            payload["generationConfig"] = config
        if tools := chat.function_tools(body):
            payload["tools"] = [{"functionDeclarations": [
                {k: f[k] for k in ("name", "description", "parameters") if k in f}
                for f in tools
            ]}]  # fmt: skip
        if (tool_config := _tool_config(body.get("tool_choice"))) is not None:
            payload["toolConfig"] = tool_config
        method = "streamGenerateContent?alt=sse" if stream else "generateContent"
        path = f"/v1beta/models/{model}:{method}"
        return ProviderRequest(path, payload, chat.ignored_fields(body, _UNDERSTOOD))

    def chat_answer(self, data: dict[str, Any], model: str) -> dict[str, Any]:
        candidates = data.get("candidates") or []
        parts = ((candidates[0].get("content") or {}).get("parts") or []) if candidates else []
        calls = _calls(parts, 0)
        for call in calls:
            del call["index"]
        message: dict[str, Any] = {"role": "assistant", "content": _text(parts) or None}
        if calls:
            message["tool_calls"] = calls
        reason = finish_reason(candidates[0].get("finishReason"), bool(calls)) if candidates else (
            "content_filter")  # fmt: skip
        return chat.completion(
            str(data.get("responseId") or chat.new_id("chatcmpl-")),
            str(data.get("modelVersion") or model), message, reason or "stop", _usage(data),
        )  # fmt: skip

    def chat_stream(self, model: str) -> StreamTranslator:
        return GoogleStream(model)

    def model_page(self, data: dict[str, Any]) -> ModelPage:
        ids = [
            str(m["name"]).removeprefix("models/") for m in data.get("models", [])
            if "name" in m and "generateContent" in (m.get("supportedGenerationMethods") or [])
        ]  # fmt: skip
        token = data.get("nextPageToken")
        return ModelPage(ids, {"pageToken": str(token), "pageSize": "1000"} if token else None)
