"""Ollama's API (``/api/chat``, ``/api/generate``, ``/api/embed``, ``/api/embeddings``) on top
of chat completions and embeddings. Pure: what the router's handlers (``router.api.ollama``)
send and relay.

- Requests: ``messages`` (with ``images`` as base64, ``tool_calls`` whose arguments are
  objects, ``thinking``), ``options`` mapped to the OpenAI fields llama.cpp reads
  (``num_predict``, ``temperature``, ``top_p``, ``top_k``, ``min_p``, ``seed``, ``stop``,
  ``repeat_penalty``, ``presence_penalty``, ``frequency_penalty``), ``format`` (``"json"``
  or a JSON schema) as structured output, ``tools``, ``think``. A generate's ``prompt`` and
  ``system`` are a chat turn (Ollama applies the model's template to them too); with
  ``raw: true`` its prompt is a text completion's, as written (``/v1/completions``).
- ``options.num_ctx`` is checked (a positive number of tokens) and not sent: a node's
  context is set when it starts. Like Ollama, which clamps a ``num_ctx`` past what the model
  was trained for, the request runs with the node's context, and the router's handler says
  which (``x-llmlb-context-length``).
- ``suffix`` (fill-in-the-middle) is refused as Ollama refuses it for a model whose template
  has no insert: the nodes' completions take none.
- Fields with no counterpart here (``keep_alive``: the node decides what stays loaded;
  ``template``, ``context``; options that are the node's to set, such as ``num_thread``) are
  named in the ``x-llmlb-ignored-fields`` header, as for the other dialects.
- Answers: Ollama's fields (``created_at``, ``done``, ``done_reason``, ``total_duration``,
  ``load_duration``, ``prompt_eval_count``, ``prompt_eval_duration``, ``eval_count``,
  ``eval_duration``, in nanoseconds) from the node's own timings (llama.cpp's ``timings``);
  streams as NDJSON, one object a line, the last with ``done: true``.

Longer than the other dialects on purpose: Ollama's API is three endpoints with their own
request, answer and NDJSON stream shapes, each the mirror of the other; the mapping of one
field both ways stays in one place rather than in a request module and an answer module.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import time
from collections.abc import AsyncGenerator
from datetime import UTC, datetime
from typing import Any

import orjson

from llmlb.common.errors import BadRequest, LlmlbError
from llmlb.translate import chat

# Chat's names for this dialect's fields (errors from the chat side are renamed).
CHAT_FIELDS = {"max_tokens": "options.num_predict", "response_format": "format"}

_OPTIONS = {"num_predict": "max_tokens", "temperature": "temperature", "top_p": "top_p",
            "top_k": "top_k", "min_p": "min_p", "seed": "seed", "stop": "stop",
            "repeat_penalty": "repeat_penalty", "presence_penalty": "presence_penalty",
            "frequency_penalty": "frequency_penalty", "typical_p": "typical_p",
            "repeat_last_n": "repeat_last_n"}  # fmt: skip
_CHAT_UNDERSTOOD = frozenset({"model", "messages", "tools", "format", "options", "stream",
                              "think"})  # fmt: skip
_GENERATE_UNDERSTOOD = frozenset({"model", "prompt", "system", "images", "format", "options",
                                  "stream", "think", "raw", "suffix"})  # fmt: skip
MAX_IMAGES = 16
MAX_NUM_CTX = 1 << 24  # (past any model's context; a bound on what is echoed)


def created_at() -> str:
    """Ollama's timestamp: RFC 3339 with nanoseconds, UTC."""
    now = time.time_ns()
    stamp = datetime.fromtimestamp(now // 1_000_000_000, UTC).strftime("%Y-%m-%dT%H:%M:%S")
    return f"{stamp}.{now % 1_000_000_000:09d}Z"


def _image_part(data: Any) -> dict[str, Any]:
    """An Ollama image (base64, no data: prefix) as a chat image part."""
    if not isinstance(data, str) or not data:
        raise BadRequest("an image is a base64 string", param="images")
    if data.startswith("data:"):
        return {"type": "image_url", "image_url": {"url": data}}
    try:
        head = base64.b64decode(data[:24] + "=" * (-len(data[:24]) % 4), validate=False)
    except (binascii.Error, ValueError):
        raise BadRequest("an image is not valid base64", param="images") from None
    kind = "jpeg" if head.startswith(b"\xff\xd8") else "webp" if head[8:12] == b"WEBP" else "png"
    return {"type": "image_url", "image_url": {"url": f"data:image/{kind};base64,{data}"}}


def _content(text: Any, images: Any) -> Any:
    if text is not None and not isinstance(text, str):
        raise BadRequest("a message's 'content' is a string", param="messages")
    if not images:
        return text or ""
    if not isinstance(images, list) or len(images) > MAX_IMAGES:
        raise BadRequest(f"'images' is a list of at most {MAX_IMAGES} base64 images",
                         param="images")  # fmt: skip
    return [{"type": "text", "text": text or ""}, *(_image_part(i) for i in images)]


def _messages(messages: Any) -> list[dict[str, Any]]:
    if not isinstance(messages, list):
        raise BadRequest("'messages' is a list of messages", param="messages")
    out: list[dict[str, Any]] = []
    calls = 0
    last_call_ids: dict[str, str] = {}  # a tool's name -> its latest call's id
    given_ids = {call["id"] for m in messages if isinstance(m, dict)
                 and isinstance(m.get("tool_calls"), list) for call in m["tool_calls"]
                 if isinstance(call, dict) and _an_id(call.get("id"))}  # fmt: skip
    for message in messages:
        if not isinstance(message, dict) or not isinstance(message.get("role"), str):
            raise BadRequest("each message has a 'role' and a 'content'", param="messages")
        role = message["role"]
        content = _content(message.get("content"), message.get("images"))
        turn: dict[str, Any] = {"role": role, "content": content}
        if role == "assistant" and isinstance(message.get("tool_calls"), list):
            openai_calls = []
            for call in message["tool_calls"]:
                function = call.get("function") if isinstance(call, dict) else None
                if not isinstance(function, dict) or not isinstance(function.get("name"), str):
                    raise BadRequest("a tool call has a 'function' with a 'name'",
                                     param="messages")  # fmt: skip
                calls += 1
                # Newer Ollamas give calls ids and clients echo them; an id made here never
                # takes one a client gave.
                call_id = call.get("id")
                if not _an_id(call_id):
                    call_id = f"call_{calls}"
                    while call_id in given_ids:
                        call_id += "_"
                last_call_ids[function["name"]] = call_id
                arguments = function.get("arguments") or {}
                openai_calls.append(chat.tool_call(
                    call_id, function["name"],
                    arguments if isinstance(arguments, str) else orjson.dumps(arguments).decode(),
                ))  # fmt: skip
            turn["tool_calls"] = openai_calls
        if role == "tool":
            name = message.get("tool_name") or message.get("name")
            given = message.get("tool_call_id")
            turn["tool_call_id"] = (given if _an_id(given)
                                    else last_call_ids.get(str(name), f"call_{calls}"))  # fmt: skip
        out.append(turn)
    return out


def _an_id(value: Any) -> bool:
    return isinstance(value, str) and 0 < len(value) <= 64


def _options(body: dict[str, Any], request: dict[str, Any], ignored: list[str]) -> None:
    options = body.get("options")
    if options is None:
        return
    if not isinstance(options, dict):
        raise BadRequest("'options' is an object", param="options")
    for name, value in options.items():
        field = _OPTIONS.get(name)
        if name == "num_ctx":
            continue  # (num_ctx(): checked, answered with the node's own)
        if field is None:
            ignored.append(f"options.{name}" if len(name) <= 30 else "options")
        elif name == "num_predict" and isinstance(value, int) and value < 0:
            continue  # -1: no limit, -2: until the context is full (the node's default)
        else:
            request[field] = value


def num_ctx(body: dict[str, Any]) -> int | None:
    """The context a request asks for (``options.num_ctx``), checked; None if not asked."""
    options = body.get("options")
    value = options.get("num_ctx") if isinstance(options, dict) else None
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not value >= 1:
        raise BadRequest("'options.num_ctx' is a number of tokens (1 or more)",
                         param="options.num_ctx")  # fmt: skip
    return int(min(value, MAX_NUM_CTX))  # (past any node's: the node's context it is)


def _format(body: dict[str, Any], request: dict[str, Any]) -> None:
    value = body.get("format")
    if value is None or value == "":
        return
    if value == "json":
        request["response_format"] = {"type": "json_object"}
    elif isinstance(value, dict):
        schema = {"name": "format", "schema": value}
        request["response_format"] = {"type": "json_schema", "json_schema": schema}
    else:
        raise BadRequest("'format' is \"json\" or a JSON schema", param="format")


def _common(body: dict[str, Any], request: dict[str, Any], ignored: list[str]) -> None:
    stream = body.get("stream", True)
    if not isinstance(stream, bool):
        raise BadRequest("'stream' is a boolean", param="stream")
    request["stream"] = stream
    _options(body, request, ignored)
    _format(body, request)
    think = body.get("think")
    if think is False:  # (templates that think by default, such as Qwen 3's, stop)
        request["chat_template_kwargs"] = {"enable_thinking": False}


def _model(body: dict[str, Any]) -> str:
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise BadRequest("'model' is required", param="model")
    return model


def chat_request(body: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """``/api/chat`` as a chat completion request, and the fields left out."""
    ignored = chat.ignored_fields(body, _CHAT_UNDERSTOOD)
    request: dict[str, Any] = {"model": _model(body), "messages": _messages(body.get("messages"))}
    if body.get("tools"):
        request["tools"] = body["tools"]
    _common(body, request, ignored)
    return request, ignored


def is_raw(body: dict[str, Any]) -> bool:
    """A generate whose prompt goes to the model as written (no chat template)."""
    raw = body.get("raw", False)
    if not isinstance(raw, bool):
        raise BadRequest("'raw' is a boolean", param="raw")
    return raw


def generate_request(body: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """``/api/generate`` as a chat completion request (its prompt a user turn, its system
    a system turn), or for ``raw`` a text completion request; and the fields left out."""
    ignored = chat.ignored_fields(body, _GENERATE_UNDERSTOOD)
    prompt = body.get("prompt") or ""
    if not isinstance(prompt, str):
        raise BadRequest("'prompt' is a string", param="prompt")
    if body.get("suffix"):  # (Ollama's own refusal for a template without an insert)
        raise BadRequest(f"{_model(body)[:200]} does not support insert: fill-in-the-middle "
                         "('suffix') is not served", param="suffix")  # fmt: skip
    if is_raw(body):
        if body.get("images"):
            raise BadRequest("images go through the model's template: send them without "
                             "'raw'", param="images")  # fmt: skip
        if body.get("system") or body.get("template") or body.get("context"):
            # (Ollama's words: in raw mode the prompt is all the model sees)
            raise BadRequest("raw mode does not support template, system, or context",
                             param="raw")  # fmt: skip
        completion: dict[str, Any] = {"model": _model(body), "prompt": prompt}
        _common(body, completion, ignored)
        completion.pop("chat_template_kwargs", None)
        # llama.cpp constrains a completion by ``json_schema`` (``response_format`` is chat's).
        wanted = completion.pop("response_format", None)
        if wanted is not None:
            schema = wanted.get("json_schema", {}).get("schema")
            completion["json_schema"] = schema if schema is not None else {"type": "object"}
        return completion, ignored
    messages = []
    if isinstance(body.get("system"), str) and body["system"]:
        messages.append({"role": "system", "content": body["system"]})
    messages.append({"role": "user", "content": _content(prompt, body.get("images"))})
    request: dict[str, Any] = {"model": _model(body), "messages": messages}
    _common(body, request, ignored)
    return request, ignored


def just_loads(body: dict[str, Any]) -> bool:
    """A generate with no prompt: Ollama's way to load a model (answered at once)."""
    return not body.get("prompt") and not body.get("images")


def loaded(body: dict[str, Any]) -> dict[str, Any]:
    return {"model": _model(body), "created_at": created_at(), "response": "", "done": True,
            "done_reason": "load"}  # fmt: skip


class Clock:
    """A request's durations, as Ollama reports them (nanoseconds)."""

    def __init__(self) -> None:
        self.started = time.monotonic_ns()

    def stats(self, usage: dict[str, Any] | None, timings: dict[str, Any] | None) -> dict[str, Any]:
        usage, timings = usage or {}, timings or {}
        return {
            "total_duration": time.monotonic_ns() - self.started,
            "load_duration": 0,  # (a load shows in the node's own wait; not told apart)
            "prompt_eval_count": int(usage.get("prompt_tokens") or 0),
            "prompt_eval_duration": int(float(timings.get("prompt_ms") or 0) * 1e6),
            "eval_count": int(usage.get("completion_tokens") or 0),
            "eval_duration": int(float(timings.get("predicted_ms") or 0) * 1e6),
        }


def _done_reason(finish: Any) -> str:
    return "length" if finish == "length" else "stop"


def _calls(calls: Any) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for call in calls or []:
        function = call.get("function") or {}
        arguments = function.get("arguments")
        try:
            value = orjson.loads(arguments) if isinstance(arguments, str) else arguments or {}
        except orjson.JSONDecodeError:
            value = {"_raw": arguments}  # the model wrote no JSON: kept, not lost
        kept: dict[str, Any] = {"function": {"index": len(out), "name": str(function.get("name")),
                                             "arguments": value}}  # fmt: skip
        if isinstance(call.get("id"), str) and call["id"]:
            kept = {"id": call["id"], **kept}  # (Ollama's ToolCall: id, then function)
        out.append(kept)
    return out


def chat_answer(answer: dict[str, Any], body: dict[str, Any], clock: Clock) -> dict[str, Any]:
    """``/api/chat``'s whole answer for a chat completion."""
    choice = (answer.get("choices") or [{}])[0]
    message = choice.get("message") or {"content": choice.get("text")}  # (raw: a completion)
    reply: dict[str, Any] = {"role": "assistant", "content": message.get("content") or ""}
    if message.get("reasoning_content"):
        reply["thinking"] = message["reasoning_content"]
    if message.get("tool_calls"):
        reply["tool_calls"] = _calls(message["tool_calls"])
    return {"model": _model(body), "created_at": created_at(), "message": reply,
            "done_reason": _done_reason(choice.get("finish_reason")), "done": True,
            **clock.stats(answer.get("usage"), answer.get("timings"))}  # fmt: skip


def generate_answer(answer: dict[str, Any], body: dict[str, Any], clock: Clock) -> dict[str, Any]:
    """``/api/generate``'s whole answer for a chat completion."""
    chat_reply = chat_answer(answer, body, clock)
    message = chat_reply.pop("message")
    out = {"model": chat_reply.pop("model"), "created_at": chat_reply.pop("created_at"),
           "response": message["content"]}  # fmt: skip
    if "thinking" in message:
        out["thinking"] = message["thinking"]
    return {**out, **chat_reply}


def line(data: dict[str, Any]) -> bytes:
    return orjson.dumps(data) + b"\n"


def error_line(error: LlmlbError) -> bytes:
    """A stream's failure, as Ollama ends a stream with one (``{"error": ...}``)."""
    return line({"error": error.message})


def stream(chunks: chat.Chunks, body: dict[str, Any], generate: bool,
           clock: Clock) -> AsyncGenerator[bytes, None]:  # fmt: skip
    """NDJSON for a stream of chat chunks: a line per piece, the last one ``done``; a
    failure ends it with an error line."""

    async def events(pieces: chat.Chunks, _: dict[str, Any]) -> AsyncGenerator[bytes, None]:
        model = _model(body)
        usage: dict[str, Any] | None = None
        timings: dict[str, Any] | None = None
        finish = None
        calls: dict[int, dict[str, Any]] = {}  # index -> the call as it accumulates
        try:
            async with contextlib.aclosing(pieces):
                async for piece in pieces:
                    usage = piece.get("usage") or usage
                    timings = piece.get("timings") or timings
                    for choice in piece.get("choices") or []:
                        delta = choice.get("delta") or {}
                        finish = choice.get("finish_reason") or finish
                        for call in delta.get("tool_calls") or []:
                            index = int(call.get("index") or 0)
                            function = call.get("function") or {}
                            empty = {"function": {"name": "", "arguments": ""}}
                            kept = calls.setdefault(index, empty)
                            if call.get("id"):
                                kept["id"] = str(call["id"])
                            kept["function"]["name"] += str(function.get("name") or "")
                            kept["function"]["arguments"] += str(function.get("arguments") or "")
                        text = delta.get("content") or choice.get("text")  # (raw: completions)
                        thought = delta.get("reasoning_content")
                        if text or thought:
                            yield line(_piece(model, generate, text or "", thought))
        except LlmlbError as exc:
            yield error_line(exc)
            return
        last = _piece(model, generate, "", None)
        if calls and not generate:
            last["message"]["tool_calls"] = _calls([calls[i] for i in sorted(calls)])
        yield line({**last, "done_reason": _done_reason(finish), "done": True,
                    **clock.stats(usage, timings)})  # fmt: skip

    return chat.started_before(chunks, events, body)


def _piece(model: str, generate: bool, text: str, thought: str | None) -> dict[str, Any]:
    if generate:
        out: dict[str, Any] = {"model": model, "created_at": created_at(), "response": text}
        if thought:
            out["thinking"] = thought
        return {**out, "done": False}
    message: dict[str, Any] = {"role": "assistant", "content": text}
    if thought:
        message["thinking"] = thought
    return {"model": model, "created_at": created_at(), "message": message, "done": False}


def embed_request(body: dict[str, Any], legacy: bool) -> dict[str, Any]:
    """``/api/embed`` (``input``: a string or strings) or the older ``/api/embeddings``
    (``prompt``: one string) as an embeddings request."""
    field = "prompt" if legacy else "input"
    value = body.get(field)
    strings = isinstance(value, list) and all(isinstance(v, str) for v in value)
    if not (isinstance(value, str) or strings):
        raise BadRequest(f"'{field}' is a string" + ("" if legacy else " or a list of strings"),
                         param=field)  # fmt: skip
    request: dict[str, Any] = {"model": _model(body), "input": value}
    if isinstance(body.get("dimensions"), int):
        request["dimensions"] = body["dimensions"]
    return request


def embed_answer(answer: dict[str, Any], body: dict[str, Any], legacy: bool,
                 clock: Clock) -> dict[str, Any]:  # fmt: skip
    vectors = [row.get("embedding") for row in sorted(answer.get("data") or [],
                                                      key=lambda r: r.get("index", 0))]  # fmt: skip
    if legacy:
        return {"embedding": vectors[0] if vectors else []}
    stats = clock.stats(answer.get("usage"), None)
    return {"model": _model(body), "embeddings": vectors, "total_duration": stats["total_duration"],
            "load_duration": 0, "prompt_eval_count": stats["prompt_eval_count"]}  # fmt: skip
