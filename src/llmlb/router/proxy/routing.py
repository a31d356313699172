"""What the router knows of a client request, and the headers that go with it to a node."""

from __future__ import annotations

import random
from dataclasses import dataclass

_FORWARDED_HEADERS = ("x-request-id", "traceparent", "tracestate")


@dataclass
class Routed:
    """What the router knows of a client request."""

    endpoint: str
    path: str
    model: str
    stream: bool
    body: bytes
    prefix: tuple[int, ...] = ()  # prompt block keys, for prefix_affinity
    asked: str = ""  # the model as the client typed it, where that was another name
    fetch_images: bool = False  # images by http(s) URL, to be put inline for a node


def traceparent() -> str:
    """A new W3C trace context: random, non-zero trace and span ids. They identify, they do
    not protect, so the process's PRNG serves (no system call per request)."""
    trace, span = random.getrandbits(128) or 1, random.getrandbits(64) or 1
    return f"00-{trace:032x}-{span:016x}-01"


def forwarded_headers(incoming: dict[str, str]) -> dict[str, str]:
    """The headers a node gets: the client's request id and trace context, and a new trace
    context when the client sent none."""
    headers = {"content-type": "application/json"}
    for name in _FORWARDED_HEADERS:
        value = incoming.get(name)
        # Never a line break into the node's request (the server's parser refuses them
        # already: this keeps it true whatever serves the router).
        if value is not None and "\r" not in value and "\n" not in value:
            headers[name] = value
    headers.setdefault("traceparent", traceparent())
    return headers
