"""Checks on client requests the node can answer before touching an engine.

llama.cpp validates a lot itself; these checks give clear OpenAI-style errors (naming the
field) for the mistakes clients make most, and keep bad values away from the engine.
"""

from __future__ import annotations

from typing import Any

from llmlb.common.errors import BadRequest

_NUMBER_RANGES: dict[str, tuple[float, float]] = {
    "temperature": (0.0, 2.0),
    "top_p": (0.0, 1.0),
    "min_p": (0.0, 1.0),
    "presence_penalty": (-2.0, 2.0),
    "frequency_penalty": (-2.0, 2.0),
}


def model_name(body: dict[str, Any]) -> str:
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise BadRequest("'model' is required and must be a non-empty string", param="model")
    return model


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def validate_generation(body: dict[str, Any], endpoint: str, ctx_size: int, slots: int) -> None:
    """Raise BadRequest naming the first bad field of a chat or text completion request."""
    if endpoint == "chat":
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            raise BadRequest("'messages' must be a non-empty array", param="messages")
        for index, message in enumerate(messages):
            if not isinstance(message, dict) or not isinstance(message.get("role"), str):
                raise BadRequest(
                    f"messages[{index}] must be an object with a string 'role'",
                    param=f"messages[{index}]",
                )
    else:
        prompt = body.get("prompt")
        if not isinstance(prompt, str | list) or (isinstance(prompt, list) and not prompt):
            raise BadRequest("'prompt' must be a string or a non-empty array", param="prompt")
    for field in ("max_tokens", "max_completion_tokens"):
        value = body.get(field)
        if value is None:
            continue
        if not _is_int(value) or not 1 <= value <= ctx_size:
            raise BadRequest(
                f"'{field}' must be an integer from 1 to {ctx_size} (the model's context "
                f"length on this node), got {value!r}",
                param=field,
            )
    for field, (low, high) in _NUMBER_RANGES.items():
        value = body.get(field)
        if value is not None and (not _is_number(value) or not low <= value <= high):
            raise BadRequest(f"'{field}' must be a number from {low} to {high}", param=field)
    for field in ("top_k", "seed"):
        value = body.get(field)
        if value is not None and not _is_int(value):
            raise BadRequest(f"'{field}' must be an integer", param=field)
    n = body.get("n")
    if n is not None and (not _is_int(n) or not 1 <= n <= slots):
        raise BadRequest(f"'n' must be an integer from 1 to {slots}", param="n")
    stop = body.get("stop")
    if stop is not None and not (
        isinstance(stop, str) or (isinstance(stop, list) and all(isinstance(s, str) for s in stop))
    ):
        raise BadRequest("'stop' must be a string or an array of strings", param="stop")
    if not isinstance(body.get("stream", False), bool):
        raise BadRequest("'stream' must be a boolean", param="stream")
    options = body.get("stream_options")
    if options is not None and not isinstance(options, dict):
        raise BadRequest("'stream_options' must be an object", param="stream_options")


def validate_embeddings(body: dict[str, Any]) -> None:
    value = body.get("input")
    ok = isinstance(value, str) or (
        isinstance(value, list) and value and all(isinstance(v, str | int | list) for v in value)
    )
    if not ok:
        raise BadRequest("'input' must be a string or a non-empty array of strings", param="input")
