"""HTTP plumbing shared by the router and the node: request ids, bounded bodies, streamed
answers, errors. (A client that leaves is watched in ``common.departure``.)"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import time
from collections.abc import AsyncGenerator
from dataclasses import dataclass
from typing import Any

import orjson
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from llmlb.common.compression import Inflater
from llmlb.common.connections import ABORT_KEY
from llmlb.common.departure import DEPARTURE_KEY, Departure, until_gone
from llmlb.common.errors import (
    BadRequest,
    ClientClosedRequest,
    LlmlbError,
    PayloadTooLarge,
    RequestTimeout,
    error_body,
)
from llmlb.common.logs import LogRing, new_request_id, request_id_var
from llmlb.common.wire import parse_object

log = logging.getLogger(__name__)

REQUEST_ID_HEADER = "x-request-id"
# A router's id for one exchange with a node, which the node echoes with the request id: the
# router delivers an answer only to the request whose ids it carries (router.proxy.nodelink).
EXCHANGE_HEADER = "x-llmlb-exchange"
_SAFE_EXCHANGE = re.compile(rb"[0-9a-f]{1,32}")
DEFAULT_BODY_TIMEOUT = 60.0  # apps set their own: app.state.body_timeout
DEFAULT_SEND_TIMEOUT = 60.0  # and app.state.send_timeout
_SAFE_REQUEST_ID = re.compile(rb"[A-Za-z0-9._:-]{1,128}")


class ORJSONResponse(JSONResponse):
    def render(self, content: Any) -> bytes:
        return orjson.dumps(content)


class ClosingStreamingResponse(StreamingResponse):
    """A StreamingResponse that closes its generator as soon as the response ends.

    Starlette only stops iterating when the client leaves; the generator is then finalised
    by the garbage collector, whenever that runs. Its ``finally`` blocks release a node's
    slot, an upstream connection and the request's history row, so close it now.
    """

    def __init__(self, content: AsyncGenerator[bytes, None], **kwargs: Any) -> None:
        super().__init__(content, **kwargs)
        self._generator = content

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            await self._generator.aclose()


def request_id_of(scope: Scope) -> str:
    """The client's ``X-Request-Id`` when it is a short id of safe characters (it is echoed,
    logged and stored), else a new one."""
    for name, value in scope["headers"]:
        if name == b"x-request-id":
            if _SAFE_REQUEST_ID.fullmatch(value):
                return str(value.decode("ascii"))
            break
    return new_request_id()


class LastChunk(bytes):
    """A stream's final bytes, where the source knows them to be: ``StreamRelay`` sends them
    together with the end of the response, one write instead of two, and sends nothing after
    them. A layer that adds bytes after a stream's end must yield them as plain bytes."""


class StreamRelay:
    """An ASGI response that relays a byte stream and closes it as soon as it ends.

    Starlette's StreamingResponse watches for a disconnect with an anyio task group (two tasks
    and a cancel scope per response, as uvicorn speaks ASGI 2.3); this costs one watcher task
    (``until_gone``). The generator is closed when the stream ends or the client leaves: its
    ``finally`` blocks release a node's slot, an upstream connection, a history row.
    """

    def __init__(
        self, chunks: AsyncGenerator[bytes, None], status_code: int, media_type: str,
        headers: dict[str, str],
    ) -> None:  # fmt: skip
        self.chunks = chunks
        self.status_code = status_code
        self.headers = {**headers, "content-type": media_type}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        app = scope.get("app")
        timeout: float = getattr(getattr(app, "state", None), "send_timeout", DEFAULT_SEND_TIMEOUT)
        try:
            await send({
                "type": "http.response.start", "status": self.status_code,
                "headers": [(k.encode("latin-1"), v.encode("latin-1"))
                            for k, v in self.headers.items()],
            })  # fmt: skip
            departure = scope.get(DEPARTURE_KEY)
            if isinstance(departure, Departure):  # the request's own, watching since its body
                await departure.guard(self._pump(send, timeout))
            else:
                await until_gone(receive, self._pump(send, timeout))
        except ClientClosedRequest:
            pass  # the client left; closing the generator below stops the work
        except TimeoutError:
            # A client that stopped reading (its connection open, its window shut) would hold
            # the node's slot, and its connection, for as long as it liked: it gets
            # ``send_timeout`` per write, then the connection is dropped without a flush.
            log.warning("a client took more than %.0f s to take in more of its stream; "
                        "dropping its connection", timeout)  # fmt: skip
            abort = scope.get(ABORT_KEY)
            if callable(abort):
                abort()
                # Ended by us: the server writes nothing more to a dropped connection.
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(send({"type": "http.response.body", "body": b"",
                                                 "more_body": False}), 1.0)  # fmt: skip
        finally:
            await self.chunks.aclose()

    async def _pump(self, send: Send, seconds_per_write: float) -> None:
        """Send every chunk. A write waits only while the client's connection is full
        (uvicorn's drain); one that waits longer than ``seconds_per_write`` ends the stream
        (noticed within half as long again)."""
        current = asyncio.current_task()
        assert current is not None
        loop = asyncio.get_running_loop()
        watch = _WriteWatch(loop, current, seconds_per_write)
        ended = False
        try:
            async for chunk in self.chunks:
                if ended:
                    continue  # nothing goes after the end; the source is drained to its finish
                ended = type(chunk) is LastChunk
                watch.writing_since = loop.time()
                await send({"type": "http.response.body", "body": chunk, "more_body": not ended})
                watch.writing_since = None
            if not ended:
                await send({"type": "http.response.body", "body": b"", "more_body": False})
        except asyncio.CancelledError:
            if watch.stalled and current.uncancel() == 0:
                raise TimeoutError from None
            raise
        finally:
            watch.stop()


class _WriteWatch:
    """Cancels ``task`` when one write has waited longer than ``seconds``: one timer a
    stream, checking every half ``seconds``, not one per chunk (a timer per chunk cost the
    relay a tenth). ``stop`` drops the timer, and with it the cycle (timer, its callback, this
    watch) that would otherwise keep the stream's objects until a full collection, rare under
    serving.GC_THRESHOLDS (a closure that named itself did, and held the router's memory up)."""

    __slots__ = ("_loop", "_seconds", "_task", "_timer", "stalled", "writing_since")

    def __init__(self, loop: asyncio.AbstractEventLoop, task: asyncio.Task[Any],
                 seconds: float) -> None:  # fmt: skip
        self._loop, self._task, self._seconds = loop, task, seconds
        self.writing_since: float | None = None
        self.stalled = False
        self._timer: asyncio.TimerHandle | None = loop.call_later(seconds / 2, self._check)

    def _check(self) -> None:
        since = self.writing_since
        if since is not None and self._loop.time() - since > self._seconds:
            self.stalled, self._timer = True, None
            self._task.cancel()
            return
        self._timer = self._loop.call_later(self._seconds / 2, self._check)

    def stop(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None


def exchange_of(scope: Scope) -> bytes | None:
    """The router's exchange id (``EXCHANGE_HEADER``) when the request has a well-formed one."""
    for name, value in scope["headers"]:
        if name == b"x-llmlb-exchange":
            return value if _SAFE_EXCHANGE.fullmatch(value) else None
    return None


class RequestIdMiddleware:
    """Take ``X-Request-Id`` from the client (or make one), log with it, echo it back, with
    the router's exchange id where it sent one. Every answer carries them, an unexpected
    error's 500 included (Starlette's own handler for it runs outside this middleware)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = request_id_of(scope)
        scope.setdefault("state", {})["request_id"] = request_id
        token = request_id_var.set(request_id)
        echoed = [(b"x-request-id", request_id.encode("latin-1"))]
        exchange = exchange_of(scope)
        if exchange is not None:
            echoed.append((b"x-llmlb-exchange", exchange))

        started = time.monotonic()
        status = 0

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message = {**message, "headers": [*message.get("headers", []), *echoed]}
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        except Exception as exc:
            if status == 0:  # nothing sent yet: the 500 goes out here, with the ids (and
                # Starlette's handler, outside, logs the error and sends nothing more)
                body = error_body(f"internal error: {type(exc).__name__}", "server_error")
                await ORJSONResponse(body, status_code=500)(scope, receive, send_with_id)
            raise
        finally:
            log.info(
                "%s %s %d %.1f ms", scope["method"], scope["path"], status,
                (time.monotonic() - started) * 1000,
            )  # fmt: skip
            request_id_var.reset(token)


BODY_KEY = "llmlb.body"  # where read_body leaves the body it read, in the request's scope


async def read_body(request: Request, limit: int) -> bytes:
    """The request body, refusing bodies over ``limit`` bytes before reading them all, and
    bodies that take longer than the app's ``body_timeout`` (a 408: a slow or endless body
    must not hold a connection and a task forever). A gzip or deflate body is inflated,
    within the same limit."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise PayloadTooLarge(f"request body is {declared} bytes; the limit is {limit} bytes")
    timeout: float = getattr(request.app.state, "body_timeout", DEFAULT_BODY_TIMEOUT)
    encoding = request.headers.get("content-encoding")
    inflater = Inflater(encoding, limit) if encoding else None  # (common.compression)
    chunks: list[bytes] = []
    size = 0
    try:
        async with asyncio.timeout(timeout):
            async for chunk in request.stream():
                size += len(chunk)
                if size > limit:
                    raise PayloadTooLarge(f"request body exceeds the limit of {limit} bytes")
                chunks.append(inflater.feed(chunk) if inflater is not None else chunk)
    except TimeoutError:
        raise RequestTimeout(f"the request body did not arrive within {timeout:g} s") from None
    if inflater is not None:
        inflater.finish()
    body = b"".join(chunks)
    request.scope[BODY_KEY] = body  # (kept for the audit trail: router.telemetry.audit)
    return body


async def read_json(request: Request, limit: int) -> dict[str, Any]:
    """The request body as a JSON object (400 for anything else, 413 over ``limit``)."""
    return parse_object(await read_body(request, limit))


def error_response(exc: LlmlbError) -> Response:
    return ORJSONResponse(exc.to_dict(), status_code=exc.status, headers=exc.headers)


async def handle_llmlb_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, LlmlbError)
    if exc.status >= 500:
        log.warning("%s %s failed: %s", request.method, request.url.path, exc.message)
    return error_response(exc)


async def handle_http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    kind = "invalid_request_error" if exc.status_code < 500 else "server_error"
    code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code)
    return ORJSONResponse(error_body(str(exc.detail), kind, code=code), status_code=exc.status_code)


async def handle_unexpected(request: Request, exc: Exception) -> Response:
    log.exception("unhandled error on %s %s", request.method, request.url.path)
    return ORJSONResponse(
        error_body(f"internal error: {type(exc).__name__}", "server_error"), status_code=500
    )


EXCEPTION_HANDLERS: dict[Any, Any] = {
    LlmlbError: handle_llmlb_error,
    HTTPException: handle_http_error,
    Exception: handle_unexpected,
}


@dataclass(frozen=True)
class LogQuery:
    """What ``GET .../logs?limit=&level=&after=`` asks for, checked."""

    limit: int = 200
    level: str | None = None
    after: int = 0

    @classmethod
    def of(cls, request: Request) -> LogQuery:
        query = request.query_params
        try:
            limit = min(max(int(query.get("limit", "200")), 1), 2000)
            after = max(int(query.get("after", "0")), 0)
        except ValueError:
            raise BadRequest("'limit' and 'after' must be integers") from None
        level = query.get("level")
        if level is not None and level not in ("debug", "info", "warning", "error"):
            raise BadRequest("'level' is one of debug, info, warning, error", param="level")
        return cls(limit, level, after)

    def params(self) -> dict[str, str]:
        """The same query, to pass on to another process."""
        params = {"limit": str(self.limit), "after": str(self.after)}
        return params | ({"level": self.level} if self.level else {})


def log_lines(request: Request) -> list[dict[str, Any]]:
    """This process's recent log lines, as the request's ``LogQuery`` asks."""
    query = LogQuery.of(request)
    return LogRing.of_process().lines(query.limit, query.level, query.after)
