"""A node's answer on its way to the client: read whole when the router holds it, else
relayed as it comes, its end marked, its failure told in-band."""

from __future__ import annotations

import logging
from collections.abc import AsyncGenerator, Callable

import orjson

from llmlb.common.asgi import LastChunk
from llmlb.common.errors import describe, error_body
from llmlb.router.proxy.node_errors import NodeLinkError
from llmlb.router.proxy.transport import NodeAnswerBody

log = logging.getLogger(__name__)


async def read_up_to(response: NodeAnswerBody, limit: int) -> tuple[bytes, bool]:
    """The body, or its first ``limit``-odd bytes when it is longer: (bytes, whole)."""
    if response.content_length is not None and response.content_length > limit:
        return await response.read_some(), False
    parts: list[bytes] = []
    size = 0
    while chunk := await response.read_some():
        parts.append(chunk)
        size += len(chunk)
        if size > limit:
            return b"".join(parts), False
    return b"".join(parts), True


async def relay(
    node: str, first: bytes, response: NodeAnswerBody,
    broke: Callable[[BaseException], None], ended: Callable[[], None],
) -> AsyncGenerator[bytes, None]:  # fmt: skip
    """The node's stream as it comes, ``first`` first; whoever iterates it must close it
    (``aclosing``). Bytes that end the node's stream come as a ``LastChunk``. A node that
    breaks off mid-stream (``broke`` hears of it) ends the stream with one error event and
    ``[DONE]``; ``ended`` is called once the stream is over, however it ended."""
    try:
        yield LastChunk(first) if response.at_eof() else first
        while chunk := await response.read_some():
            yield LastChunk(chunk) if response.at_eof() else chunk
    except (NodeLinkError, TimeoutError) as exc:
        broke(exc)
        message = f"node {node} failed mid-stream: {describe(exc)}"
        log.warning(message)
        yield b"data: " + orjson.dumps(error_body(message, "upstream_error")) + b"\n\n"
        yield b"data: [DONE]\n\n"
    finally:
        # Closing (not releasing) drops the connection when the client left early, which is
        # how the node learns to stop generating.
        if response.at_eof():
            response.release()
        else:
            response.close()
        ended()
