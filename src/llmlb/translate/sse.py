"""Server-sent events: an incremental parser and the encoder.

The parser follows the WHATWG rules that matter for API streams: lines end in ``\\n``,
``\\r\\n`` or ``\\r``; an empty line ends an event; ``data`` lines join with ``\\n``; a
comment line (``:``) is skipped. It holds at most one unfinished event, bounded.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson

# One event larger than this, or of more lines, is a broken stream, not an answer. Sizes count
# each line's end too: ``data:`` lines with nothing after them add up as well.
MAX_EVENT_BYTES = 8 * 1024 * 1024
MAX_EVENT_LINES = 10_000


class StreamBroken(ValueError):
    """The bytes are not a stream of events (an event beyond MAX_EVENT_BYTES or
    MAX_EVENT_LINES)."""


@dataclass(frozen=True)
class ServerEvent:
    event: str | None
    data: str

    def json(self) -> Any:
        """The data as JSON; ValueError when it is not."""
        return orjson.loads(self.data)


class SSEParser:
    """Incremental, in time linear in the bytes fed however they are split: a line that
    arrives in many pieces is joined once, when it ends."""

    def __init__(self) -> None:
        self._pending: list[bytes] = []  # the unfinished last line, in the pieces it came in
        self._pending_bytes = 0
        self._event: str | None = None
        self._data: list[str] = []
        self._event_bytes = 0  # of the event being read, line ends included
        self._event_lines = 0

    def feed(self, chunk: bytes) -> list[ServerEvent]:
        """The events completed by ``chunk``."""
        if not chunk:
            return []
        self._pending.append(chunk)
        self._pending_bytes += len(chunk)
        if b"\n" not in chunk and b"\r" not in chunk:
            self._check(self._pending_bytes)
            return []
        lines = b"".join(self._pending).splitlines(keepends=True)
        # An unfinished last line waits for more; so does a lone \r, which may be the first
        # half of \r\n.
        self._pending = [lines.pop()] if not lines[-1].endswith(b"\n") else []
        self._pending_bytes = len(self._pending[0]) if self._pending else 0
        events: list[ServerEvent] = []
        for line in lines:
            if event := self._line(line):
                events.append(event)
        self._check(self._pending_bytes)
        return events

    def finish(self) -> list[ServerEvent]:
        """The events the end of the stream completes (a last line ended by a lone ``\r``)."""
        if self._pending and self._pending[-1].endswith(b"\r"):
            return self.feed(b"\n")
        return []

    def _check(self, pending: int) -> None:
        if self._event_bytes + pending > MAX_EVENT_BYTES:
            raise StreamBroken(f"an event larger than {MAX_EVENT_BYTES} bytes")
        if self._event_lines > MAX_EVENT_LINES:
            raise StreamBroken(f"an event of more than {MAX_EVENT_LINES} lines")

    def _line(self, raw: bytes) -> ServerEvent | None:
        line = raw.rstrip(b"\r\n")  # one line end at most (splitlines cut at the first)
        if not line:
            if not self._data and self._event is None:
                return None
            event = ServerEvent(self._event, "\n".join(self._data))
            self._event, self._data = None, []
            self._event_bytes = self._event_lines = 0
            return event
        if line.startswith(b":"):
            return None  # a comment (a keep-alive): nothing is kept
        self._event_bytes += len(raw)
        self._event_lines += 1
        self._check(0)
        field, _, value = line.decode(errors="replace").partition(":")
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
