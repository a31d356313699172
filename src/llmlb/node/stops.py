"""A client's stop sequences, matched by the node: so that the answer can say which one ended
it (``stop_reason`` on the choice, as vLLM reports it; Anthropic's ``stop_sequence``).

llama.cpp's OpenAI-compatible stream says ``finish_reason: "stop"`` alike for the end of the
turn and for a stop string, and drops the string. So the node keeps the client's sequences
from llama.cpp (the chat template's own stops stay with it), matches them in the text as it
streams, holding back only what could still become one, and when one matches ends the
choice there: the text before it, ``finish_reason: "stop"``, ``stop_reason: <the sequence>``,
and the usage so far (llama.cpp reports it per chunk when asked: ``timings_per_token``).
The caller then closes the engine's stream, which stops generation at the next token.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, AsyncIterator
from typing import Any

import orjson

from llmlb.node.assemble import Endpoint


class StopMatcher:
    """Stop strings found in text that arrives in pieces."""

    def __init__(self, stops: list[str]) -> None:
        self._stops = [s for s in stops if s]
        self._held = ""

    def feed(self, text: str) -> tuple[str, str | None]:
        """(the text that is certainly before any stop, the stop that matched or None)."""
        text = self._held + text
        found = [(text.find(s), s) for s in self._stops if s in text]
        if found:
            at, stop = min(found)
            self._held = ""
            return text[:at], stop
        hold = max((self._overlap(text, s) for s in self._stops), default=0)
        self._held = text[len(text) - hold :] if hold else ""
        return text[: len(text) - hold], None

    def flush(self) -> str:
        """What was held back, at the end of the text (no stop followed)."""
        held, self._held = self._held, ""
        return held

    @staticmethod
    def _overlap(text: str, stop: str) -> int:
        """The longest end of ``text`` that begins ``stop``."""
        for size in range(min(len(stop) - 1, len(text)), 0, -1):
            if text.endswith(stop[:size]):
                return size
        return 0


def client_stops(body: dict[str, Any]) -> list[str]:
    stop = body.get("stop")
    if isinstance(stop, str):
        return [stop] if stop else []
    return [s for s in stop or [] if isinstance(s, str) and s]


async def honour_stops(
    stops: list[str], endpoint: Endpoint, chunks: AsyncIterator[bytes]
) -> AsyncGenerator[bytes, None]:
    """llama.cpp's raw chunks (of one choice, asked with ``timings_per_token``), cut at the
    first of ``stops``."""
    matcher = StopMatcher(stops)
    field = "content" if endpoint == "chat" else "text"
    timings: dict[str, Any] = {}
    async for raw in chunks:
        chunk = orjson.loads(raw)
        if not isinstance(chunk, dict) or not chunk.get("choices"):
            yield raw  # the usage chunk, an error
            continue
        timings = chunk.get("timings") or timings
        choice = chunk["choices"][0]
        holder = (choice.get("delta") or {}) if endpoint == "chat" else choice
        text = holder.get(field)
        if choice.get("finish_reason"):  # llama.cpp's own end: what was held goes first
            held = matcher.flush()
            if held:
                yield _with_text(chunk, endpoint, field, held, None)
            yield raw
            continue
        if not isinstance(text, str) or not text:
            yield raw
            continue
        before, stop = matcher.feed(text)
        if stop is None:
            if before:
                yield _with_text(chunk, endpoint, field, before, None)
            continue
        if before:
            yield _with_text(chunk, endpoint, field, before, None)
        yield _with_text(chunk, endpoint, field, "", stop)
        yield _usage(chunk, timings)
        return


def _with_text(
    chunk: dict[str, Any], endpoint: Endpoint, field: str, text: str, stop: str | None
) -> bytes:
    choice = dict(chunk["choices"][0])
    if endpoint == "chat":
        choice["delta"] = {field: text} if text else {}
    else:
        choice[field] = text
    if stop is not None:
        choice["finish_reason"] = "stop"
        choice["stop_reason"] = stop
    return orjson.dumps({**chunk, "choices": [choice]})


def _usage(chunk: dict[str, Any], timings: dict[str, Any]) -> bytes:
    """The usage chunk llama.cpp would have sent at the end, from its last counts."""
    prompt = int(timings.get("cache_n") or 0) + int(timings.get("prompt_n") or 0)
    output = int(timings.get("predicted_n") or 0)
    usage = {"prompt_tokens": prompt, "completion_tokens": output, "total_tokens": prompt + output}
    head = {k: chunk[k] for k in ("id", "created", "model", "object") if k in chunk}
    return orjson.dumps({**head, "choices": [], "usage": usage, "timings": timings})
