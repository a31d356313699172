"""The seam between failover and the wire: what the proxy needs of a way to send a request to
a node and read its answer. ``router.proxy.nodelink.NodeLinks`` is the one on the wire; the
failover tests put a scripted one in its place, without sockets."""

from __future__ import annotations

from typing import Protocol


class NodeAnswerBody(Protocol):
    """A node's answer: its status and headers at once, its body as it arrives. Whoever gets
    one ends it: ``release`` after reading to the end, ``close`` otherwise."""

    status: int
    headers: dict[str, str]  # names in lower case

    @property
    def content_length(self) -> int | None: ...

    def at_eof(self) -> bool: ...

    async def read_some(self) -> bytes: ...

    def release(self) -> None: ...

    def close(self) -> None: ...


class NodeTransport(Protocol):
    async def post(
        self, base_url: str, path: str, headers: dict[str, str], body: bytes, fresh: bool = False,
        echoes: bool = True,
    ) -> NodeAnswerBody:  # fmt: skip
        """POST ``body``; the answer once its head has come. Raises ``NodeLinkError``s
        (``router.proxy.nodelink``) and ``TimeoutError``; ``fresh``: on a new connection;
        ``echoes``: the answer must echo the request's ids (llmlb's nodes do)."""
        ...
