"""Server-sent events: an incremental parser and the encoder.

The parser follows the WHATWG rules that matter for API streams: lines end in ``\\n``,
``\\r\\n`` or ``\\r``; an empty line ends an event; ``data`` lines join with ``\\n``; a
comment line (``:``) is skipped. It holds at most one unfinished event, bounded.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson

# One event larger than this is a broken stream, not an answer.
MAX_EVENT_BYTES = 8 * 1024 * 1024


class StreamBroken(ValueError):
    """The bytes are not a stream of events (an event beyond MAX_EVENT_BYTES)."""


@dataclass(frozen=True)
class ServerEvent:
    event: str | None
    data: str

    def json(self) -> Any:
        """The data as JSON; ValueError when it is not."""
        return orjson.loads(self.data)


class SSEParser:
    def __init__(self) -> None:
        self._buffer = b""
        self._event: str | None = None
        self._data: list[str] = []

    def feed(self, chunk: bytes) -> list[ServerEvent]:
        """The events completed by ``chunk``."""
        self._buffer += chunk
        if b"\r" in self._buffer:
            # A lone trailing \r may be the first half of \r\n: keep it for the next chunk.
            keep = self._buffer.endswith(b"\r")
            body = self._buffer[:-1] if keep else self._buffer
            self._buffer = body.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
            if keep:
                self._buffer += b"\r"
        events: list[ServerEvent] = []
        while (end := self._buffer.find(b"\n")) >= 0:
            line = self._buffer[:end].decode(errors="replace")
            self._buffer = self._buffer[end + 1 :]
            if event := self._line(line):
                events.append(event)
        if len(self._buffer) + sum(map(len, self._data)) > MAX_EVENT_BYTES:
            raise StreamBroken(f"an event larger than {MAX_EVENT_BYTES} bytes")
        return events

    def finish(self) -> list[ServerEvent]:
        """The events the end of the stream completes (a last line ended by a lone ``\r``)."""
        if self._buffer.endswith(b"\r"):
            return self.feed(b"\n")
        return []

    def _line(self, line: str) -> ServerEvent | None:
        if not line:
            if not self._data and self._event is None:
                return None
            event = ServerEvent(self._event, "\n".join(self._data))
            self._event, self._data = None, []
            return event
        if line.startswith(":"):
            return None
        field, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if field == "data":
            self._data.append(value)
        elif field == "event":
            self._event = value
        return None


def encode(data: Any, event: str | None = None) -> bytes:
    """One event: ``data`` as compact JSON (bytes and str are sent as they are)."""
    if isinstance(data, str):
        payload = data.encode()
    elif isinstance(data, bytes):
        payload = data
    else:
        payload = orjson.dumps(data)
    head = f"event: {event}\n".encode() if event else b""
    return head + b"data: " + payload + b"\n\n"


DONE = b"data: [DONE]\n\n"
