"""Client requests, checked before they reach an engine.

A typed model of each endpoint's request (open to extra fields llama.cpp understands), plus
bounds on every field that multiplies work, memory or output: a client's mistake or excess
is a 400 naming the field and the limit, never an engine exception (a 500) and never a
request that runs away with the node.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

import orjson
from pydantic import BaseModel, Field, model_validator

from llmlb.common.chat import (
    MAX_MESSAGES,
    MAX_TOOLS,
    ImagePart,
    OpenModel,
    StreamOptions,
    TextPart,
    Tool,
    ToolCall,
    parse_as,
    whole_numbers,
)
from llmlb.common.errors import BadRequest, ContextLengthExceeded
from llmlb.common.settings import NodeSettings

# Bounds that do not depend on the node's settings (OpenAI's own, where it has one).
MAX_TOP_LOGPROBS = 20
MAX_N_PROBS = 20
MAX_LOGIT_BIAS = 1024
MAX_STOP_SEQUENCES = 16
MAX_STOP_LENGTH = 512
MAX_GRAMMAR_BYTES = 64 * 1024  # grammar, json_schema, response_format, each
MAX_TOKEN_ID = 2**31  # llama.cpp's token ids are 32-bit
# A prompt longer than this many bytes per context token cannot fit, whatever the text:
# refused before the (slow) tokenizer sees it.
MAX_BYTES_PER_TOKEN = 32


# Images in one request, at most: each is encoded by the model's projector before generation.
MAX_IMAGES = 16
IMAGE_DATA_PREFIX = "data:image/"


class Message(OpenModel):
    # ``function``: the deprecated name of a tool's result (read as a ``tool`` message).
    role: Literal["system", "developer", "user", "assistant", "tool", "function"]
    # Text, and images (inline, as data URLs) for a model with a projector (mmproj).
    content: str | list[TextPart | ImagePart] | None = None
    tool_calls: list[ToolCall] | None = None
    name: str | None = None
    tool_call_id: str | None = None

    @model_validator(mode="before")
    @classmethod
    def _text_only(cls, data: Any) -> Any:
        """Parts other than text get a message that says so (pydantic would only say that
        the content is not a string)."""
        content = data.get("content") if isinstance(data, dict) else None
        if isinstance(content, list):
            for part in content:
                kind = part.get("type") if isinstance(part, dict) else None
                if kind not in ("text", "image_url"):
                    raise ValueError(f"content parts of type {str(kind)[:40]!r} are not "
                                     "taken here (text and image_url are)")  # fmt: skip
        return data

    @model_validator(mode="after")
    def _has_content(self) -> Message:
        # An assistant's turn may be empty, and so may a function's result (OpenAI's schema
        # allows both); any other needs text.
        if self.content is None and self.role not in ("assistant", "function"):
            raise ValueError("'content' is required (only an assistant's turn may leave it "
                             "out)")  # fmt: skip
        return self


# 0 is a request for nothing (answered without generating: node.service).
Tokens = Annotated[int, Field(ge=0)]


class _Generation(OpenModel):
    model: str
    stream: bool | None = False
    stream_options: StreamOptions | None = None
    max_tokens: Tokens | None = None
    max_completion_tokens: Tokens | None = None
    n_predict: int | None = None  # llama.cpp's name; -1 means "until the context is full"
    n: Annotated[int, Field(ge=1)] | None = None
    temperature: Annotated[float, Field(ge=0, le=2)] | None = None
    top_p: Annotated[float, Field(ge=0, le=1)] | None = None
    min_p: Annotated[float, Field(ge=0, le=1)] | None = None
    presence_penalty: Annotated[float, Field(ge=-2, le=2)] | None = None
    frequency_penalty: Annotated[float, Field(ge=-2, le=2)] | None = None
    top_k: int | None = None
    seed: int | None = None
    stop: str | Annotated[list[Annotated[str, Field(max_length=MAX_STOP_LENGTH)]],
                          Field(max_length=MAX_STOP_SEQUENCES)] | None = None  # fmt: skip
    logprobs: bool | int | None = None  # chat: bool; completions: an int (top count)
    top_logprobs: Annotated[int, Field(ge=0, le=MAX_TOP_LOGPROBS)] | None = None
    n_probs: Annotated[int, Field(ge=0, le=MAX_N_PROBS)] | None = None
    logit_bias: Annotated[dict[str, float], Field(max_length=MAX_LOGIT_BIAS)] | Annotated[
        list[Any], Field(max_length=MAX_LOGIT_BIAS)] | None = None  # fmt: skip
    grammar: Annotated[str, Field(max_length=MAX_GRAMMAR_BYTES)] | None = None
    json_schema: dict[str, Any] | None = None
    response_format: dict[str, Any] | None = None
    tools: Annotated[list[Tool], Field(max_length=MAX_TOOLS)] | None = None
    tool_choice: str | dict[str, Any] | None = None
    parallel_tool_calls: bool | None = None


class ChatRequest(_Generation):
    messages: Annotated[list[Message], Field(min_length=1, max_length=MAX_MESSAGES)]


# A string, strings, token ids, or lists of token ids (never empty).
Inputs = (
    str
    | Annotated[list[str], Field(min_length=1)]
    | Annotated[list[int], Field(min_length=1)]
    | Annotated[list[list[int]], Field(min_length=1)]
)


class CompletionRequest(_Generation):
    prompt: Inputs | None  # null: an empty prompt (OpenAI's schema allows it)
    echo: bool | None = None
    suffix: str | None = None
    best_of: Annotated[int, Field(ge=0)] | None = None


class EmbeddingsRequest(OpenModel):
    model: str
    input: Inputs
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: Annotated[int, Field(ge=1)] | None = None


def model_name(body: dict[str, Any]) -> str:
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise BadRequest("'model' is required and must be a non-empty string", param="model")
    return model


def _content_bytes(content: str | list[TextPart | ImagePart] | None) -> int:
    if isinstance(content, list):
        return sum(len(part.text.encode()) for part in content if isinstance(part, TextPart))
    return len(content.encode()) if content else 0


def _size(value: Any) -> int:
    return len(orjson.dumps(value)) if value is not None else 0


def _prompt_bytes(request: BaseModel) -> int:
    if isinstance(request, ChatRequest):
        return sum(_content_bytes(m.content) for m in request.messages)
    if isinstance(request, CompletionRequest):
        return _size(request.prompt)
    return 0


def validate_generation(
    body: dict[str, Any], endpoint: str, ctx_size: int, slots: int, settings: NodeSettings,
    sees: bool = False,
) -> dict[str, Any]:  # fmt: skip
    """The request body with its bounds applied; BadRequest naming the first bad field.
    ``sees``: the model has a projector, so chat messages may carry images.

    A request that sets no output limit gets ``default_max_tokens`` (the OpenAI SDK sends
    none: without it a request would run until the context is full).
    """
    body = whole_numbers(body)
    _check_inputs(body, "prompt")
    request = parse_as(ChatRequest if endpoint == "chat" else CompletionRequest, body)
    assert isinstance(request, _Generation)
    if isinstance(request, ChatRequest):
        _check_images(request, sees)
    if isinstance(request, CompletionRequest):
        _refuse_unserved(request)
        if request.prompt is None:
            body = {**body, "prompt": ""}
    limits = {
        "max_tokens": request.max_tokens,
        "max_completion_tokens": request.max_completion_tokens,
        "n_predict": request.n_predict,
    }
    for field, value in limits.items():
        nothing = value == 0 and field != "n_predict"  # asks for no output: served as such
        if value is not None and not nothing and not 1 <= value <= ctx_size:
            raise BadRequest(
                f"'{field}' must be an integer from {int(field == 'n_predict')} to {ctx_size} "
                f"(the model's context "
                f"length on this node), got {value!r}",
                param=field,
            )
    if request.n is not None and request.n > slots:
        raise BadRequest(f"'n' must be an integer from 1 to {slots}", param="n")
    if request.top_logprobs is not None and not request.logprobs:
        if request.top_logprobs:
            raise BadRequest("'top_logprobs' needs 'logprobs': true", param="top_logprobs")
        body = {k: v for k, v in body.items() if k != "top_logprobs"}  # 0 asks for nothing
    logprobs = request.logprobs
    if type(logprobs) is int and not 0 <= logprobs <= MAX_TOP_LOGPROBS:
        raise BadRequest(f"'logprobs' must be from 0 to {MAX_TOP_LOGPROBS}", param="logprobs")
    for field in ("json_schema", "response_format"):
        if _size(getattr(request, field)) > MAX_GRAMMAR_BYTES:
            raise BadRequest(f"'{field}' is larger than {MAX_GRAMMAR_BYTES} bytes", param=field)
    prompt_bytes = _prompt_bytes(request)
    if prompt_bytes > ctx_size * MAX_BYTES_PER_TOKEN:
        raise ContextLengthExceeded(
            f"the prompt is {prompt_bytes} bytes; it cannot fit the model's context of "
            f"{ctx_size} tokens on this node",
            param="messages" if endpoint == "chat" else "prompt",
        )
    if isinstance(request, ChatRequest):
        last = request.messages[-1]
        if last.role == "assistant" and last.tool_calls:
            # llama.cpp cannot continue such a turn (it fails with a 500): the client must
            # answer the calls first.
            raise BadRequest("the conversation ends with the assistant's tool calls: add "
                             "their results as 'tool' messages", param="messages")  # fmt: skip
        body = {**body, "messages": _flat_messages(body["messages"])}
        if body.get("tools"):
            body["tools"] = [_without_nulls(tool) for tool in body["tools"]]
    if all(value is None for value in limits.values()):
        return {**body, "max_tokens": min(settings.default_max_tokens, ctx_size)}
    return body


def _check_images(request: ChatRequest, sees: bool) -> None:
    """Images only to a model that sees, inline, and not too many."""
    images = [part.image_url.url for message in request.messages
              if isinstance(message.content, list)
              for part in message.content if isinstance(part, ImagePart)]  # fmt: skip
    if not images:
        return
    elsewhere = [m for m in request.messages if m.role != "user" and isinstance(m.content, list)
                 and any(isinstance(p, ImagePart) for p in m.content)]  # fmt: skip
    if elsewhere:
        # (llama.cpp aborts on a prompt that ends in an image, as an assistant turn left
        # open for its continuation would: llama.cpp #15812.)
        raise BadRequest("images go in user messages only", param="messages")
    if not sees:
        raise BadRequest("this model reads text only (it has no projector, mmproj): send "
                         "text, or name a vision model", param="messages",
                         code="model_lacks_capability")  # fmt: skip
    if len(images) > MAX_IMAGES:
        raise BadRequest(f"at most {MAX_IMAGES} images a request, got {len(images)}",
                         param="messages")  # fmt: skip
    for url in images:
        if not url.startswith(IMAGE_DATA_PREFIX) or ";base64," not in url[:100]:
            raise BadRequest("an image reaches a node inline, as a data:image/...;base64 "
                             "URL (the router fetches http(s) ones)", param="messages")  # fmt: skip


def _flat_messages(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Content given as text parts, joined into one string (what they mean in OpenAI's
    API): chat templates, ours and the ones inside GGUFs, expect a string; content with
    images stays a list of parts, which llama.cpp gives its projector. A deprecated
    ``function`` message is the ``tool`` message it stands for."""
    flat = []
    for message in messages:
        content = message.get("content")
        if isinstance(content, list) and any(p.get("type") == "image_url" for p in content):
            pass  # (llama.cpp reads OpenAI's parts, the images through the projector)
        elif isinstance(content, list):
            message = {**message, "content": "".join(p["text"] for p in message["content"])}
        if message.get("role") == "function":
            name = message.get("name")
            message = {**message, "role": "tool", "tool_call_id": name}
        if message.get("content") is None and not message.get("tool_calls"):
            message = {**message, "content": ""}  # (llama.cpp refuses an empty turn)
        flat.append(message)
    return _one_last_assistant_turn(flat)


def _one_last_assistant_turn(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Assistant turns at the end, joined into one: the answer's beginning, which the model
    continues (llama.cpp refuses two or more there)."""
    end = len(messages)
    while end > 0 and messages[end - 1].get("role") == "assistant":
        end -= 1
    if len(messages) - end < 2:
        return messages
    if any(m.get("tool_calls") for m in messages[end:]):
        raise BadRequest("the conversation ends with the assistant's tool calls: add their "
                         "results as 'tool' messages", param="messages")  # fmt: skip
    joined = "".join(str(m.get("content") or "") for m in messages[end:])
    return [*messages[:end], {"role": "assistant", "content": joined}]


def _check_inputs(body: dict[str, Any], field: str) -> None:
    """A clear 400 for an input of the wrong shape (pydantic names only its first guess)."""
    value = body.get(field)
    if isinstance(value, list) and not value:
        raise BadRequest(f"'{field}' is an empty list: give a string, strings or token ids",
                         param=field)  # fmt: skip
    if value is not None and not isinstance(value, str | list):
        raise BadRequest(f"'{field}' must be a string, a list of strings, a list of token "
                         "ids or a list of such lists", param=field)  # fmt: skip
    if isinstance(value, list):
        ids = [i for item in value for i in (item if isinstance(item, list) else [item])]
        if any(
            isinstance(i, float) or (type(i) is int and not 0 <= i < MAX_TOKEN_ID) for i in ids
        ):  # (a number past 64 bits arrives as a float)
            raise BadRequest(f"'{field}' holds a token id that is not a token (negative, or "
                             "past any vocabulary)", param=field)  # fmt: skip


def _refuse_unserved(request: CompletionRequest) -> None:
    """Fields llama.cpp cannot honour: a 400 rather than an answer that ignores them."""
    if request.echo:
        raise BadRequest("'echo' is not supported: the prompt is not returned with the "
                         "completion", param="echo")  # fmt: skip
    if request.suffix:
        raise BadRequest("'suffix' is not supported (no fill-in-the-middle on this endpoint)",
                         param="suffix")  # fmt: skip
    if request.best_of is not None and request.best_of > (request.n or 1):
        raise BadRequest("'best_of' above 'n' is not supported: every candidate is returned",
                         param="best_of")  # fmt: skip


def _without_nulls(tool: dict[str, Any]) -> dict[str, Any]:
    """A tool's function with its null fields left out (``description: null`` is valid in
    OpenAI's schema; llama.cpp's template code refuses it)."""
    function = tool.get("function")
    if not isinstance(function, dict):
        return tool
    return {**tool, "function": {k: v for k, v in function.items() if v is not None}}


def validate_embeddings(body: dict[str, Any], settings: NodeSettings) -> list[Any]:
    """The request's inputs as a list; BadRequest naming the field and the limit."""
    body = whole_numbers(body)
    _check_inputs(body, "input")
    request = parse_as(EmbeddingsRequest, body)
    assert isinstance(request, EmbeddingsRequest)
    value = request.input
    # One string, or one pre-tokenised input (a flat list of ints), is a single item.
    items: list[Any] = [value] if isinstance(value, str) or _flat_ints(value) else list(value)
    if len(items) > settings.max_embedding_inputs:
        raise BadRequest(
            f"'input' has {len(items)} items; the limit is {settings.max_embedding_inputs} "
            "per request", param="input",
        )  # fmt: skip
    total = sum(len(item) if isinstance(item, str) else len(item) * 4 for item in items)
    if total > settings.max_embedding_bytes:
        raise BadRequest(
            f"'input' holds {total} bytes; the limit is {settings.max_embedding_bytes} "
            "per request", param="input",
        )  # fmt: skip
    return items


def _flat_ints(value: Any) -> bool:
    return isinstance(value, list) and bool(value) and isinstance(value[0], int)
