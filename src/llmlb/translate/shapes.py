"""What a chat answer from a node or a provider must look like before a dialect reads it.

Nodes and providers may misbehave (a bug, a gateway in front of them, a hostile host): their
answers are checked where they enter the translation, so that a wrong type anywhere becomes
one ``ValueError`` there (a 502, or a stream's error event, in the client's dialect) rather
than a crash in the middle of a client's stream. Only what translation reads is checked;
anything else in an answer passes as it is.
"""

from __future__ import annotations

from typing import Any


def checked_chunk(data: Any) -> dict[str, Any]:
    """``data`` as a ``chat.completion.chunk``; ValueError saying what is wrong."""
    piece = _object(data, "a chunk")
    _common(piece)
    for choice in _list(piece, "choices"):
        _optional(_object(choice, "a choice"), "finish_reason", str)
        _optional(choice, "text", str)  # (a text completion's)
        if choice.get("delta") is not None:
            _message(_object(choice["delta"], "a choice's delta"))
    return piece


def checked_completion(data: Any) -> dict[str, Any]:
    """``data`` as a ``chat.completion``; ValueError saying what is wrong."""
    answer = _object(data, "an answer")
    _common(answer)
    for choice in _list(answer, "choices"):
        _optional(_object(choice, "a choice"), "finish_reason", str)
        _optional(choice, "text", str)  # (a text completion's)
        if choice.get("message") is not None:
            _message(_object(choice["message"], "a choice's message"))
    return answer


def _common(data: dict[str, Any]) -> None:
    _optional(data, "model", str)
    _optional(data, "created", (int, float))
    usage = data.get("usage")
    if usage is not None:
        usage = _object(usage, "usage")
        for name in ("prompt_tokens", "completion_tokens", "total_tokens"):
            _optional(usage, name, int)


def _message(message: dict[str, Any]) -> None:
    for name in ("content", "reasoning_content", "refusal"):
        _optional(message, name, str)
    for call in _list(message, "tool_calls"):
        call = _object(call, "a tool call")
        _optional(call, "id", str)
        _optional(call, "index", int)
        if call.get("function") is not None:
            function = _object(call["function"], "a tool call's function")
            _optional(function, "name", str)
            _optional(function, "arguments", str)


def _object(value: Any, what: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ValueError(f"{what} is not a JSON object")
    return value


def _list(data: dict[str, Any], name: str) -> list[Any]:
    value = data.get(name)
    if value is None:
        return []
    if not isinstance(value, list):
        raise ValueError(f"'{name}' is not a list")
    return value


def _optional(data: dict[str, Any], name: str, kind: type | tuple[type, ...]) -> None:
    value = data.get(name)
    if value is not None and (not isinstance(value, kind) or isinstance(value, bool)):
        raise ValueError(f"'{name}' has the wrong type ({type(value).__name__})")
