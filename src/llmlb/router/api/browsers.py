"""Browsers as clients of the client API (``/v1/*``, with Anthropic's ``/v1/messages``, and
Ollama's client routes, ``/api/chat`` and the rest): CORS for the origins an operator allows,
and no request on a user's behalf from any other site.

- ``cors_origins`` (none by default; ``*`` for any) may call the client API from a page: their
  preflights are answered, and answers carry ``Access-Control-Allow-Origin`` for them. The
  admin API stays same-origin (it answers no preflight).
- Any other site's page can still make a browser send a request that needs no preflight (a
  form post, ``text/plain``), and on loopback no key may be needed: so a request a browser
  marks as coming from another site (``Sec-Fetch-Site``), or a form post with an ``Origin``,
  is refused with 403 ``cross_site_request`` unless its origin is allowed. Clients that are
  not browsers (SDKs, curl) send neither, and are not affected.
"""

from __future__ import annotations

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from llmlb.common.asgi import error_response
from llmlb.common.errors import LlmlbError, PermissionDenied
from llmlb.router.api import ollama

_FORM_TYPES = (b"application/x-www-form-urlencoded", b"multipart/form-data", b"text/plain")
# Request headers a page may send (what the OpenAI, Anthropic and Ollama clients use).
_ALLOWED_HEADERS = frozenset({
    "authorization", "content-type", "x-api-key", "x-request-id", "anthropic-version",
    "anthropic-beta", "anthropic-dangerous-direct-browser-access", "openai-organization",
    "openai-project", "openai-beta", "traceparent", "tracestate", "user-agent",
    "x-stainless-arch", "x-stainless-lang", "x-stainless-os", "x-stainless-package-version",
    "x-stainless-runtime", "x-stainless-runtime-version", "x-stainless-retry-count",
    "x-stainless-timeout", "x-stainless-helper-method", "accept",
})  # fmt: skip
_EXPOSED = b"x-request-id, x-llmlb-node, x-llmlb-attempts, retry-after"
MAX_AGE = b"600"


class BrowserAccess:
    """ASGI middleware in front of the client API (see the module's docstring)."""

    def __init__(self, app: ASGIApp, origins: list[str]) -> None:
        self.app = app
        self._any = "*" in origins
        self._origins = frozenset(o.rstrip("/").encode("latin-1") for o in origins if o != "*")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not (
            scope["path"].startswith("/v1/") or scope["path"] in ollama.CLIENT_PATHS
        ):
            await self.app(scope, receive, send)
            return
        origin = site = media = wanted = None
        for name, value in scope["headers"]:
            if name == b"origin":
                origin = value
            elif name == b"sec-fetch-site":
                site = value
            elif name == b"content-type":
                media = value.partition(b";")[0].strip().lower()
            elif name == b"access-control-request-headers":
                wanted = value
        if origin is None and site is None:  # not a browser's cross-origin request
            await self.app(scope, receive, send)
            return
        allowed = origin is not None and (self._any or origin in self._origins)
        if scope["method"] == "OPTIONS":
            await self._preflight(scope, receive, send, origin if allowed else None, wanted)
            return
        if not allowed and (site in (b"cross-site", b"same-site") or media in _FORM_TYPES):
            refused = PermissionDenied(
                "requests to the client API from another site's page are refused unless its "
                "origin is in cors_origins", code="cross_site_request",
            )  # fmt: skip
            await _refusal(scope, refused)(scope, receive, send)
            return
        if not allowed:
            await self.app(scope, receive, send)
            return
        assert origin is not None

        async def send_with_cors(message: Message) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", []),
                                                  *_cors_headers(origin)]}  # fmt: skip
            await send(message)

        await self.app(scope, receive, send_with_cors)

    async def _preflight(self, scope: Scope, receive: Receive, send: Send,
                         origin: bytes | None, wanted: bytes | None) -> None:  # fmt: skip
        if origin is None:
            refused = PermissionDenied("this origin may not call the client API (cors_origins)",
                                       code="cross_site_request")  # fmt: skip
            await _refusal(scope, refused)(scope, receive, send)
            return
        names = [n.strip().lower() for n in (wanted or b"").decode("latin-1").split(",")]
        allowed = ", ".join(n for n in names if n in _ALLOWED_HEADERS).encode("latin-1")
        headers = [*_cors_headers(origin), (b"access-control-allow-methods", b"GET, POST"),
                   (b"access-control-allow-headers", allowed),
                   (b"access-control-max-age", MAX_AGE), (b"content-length", b"0")]  # fmt: skip
        await send({"type": "http.response.start", "status": 204, "headers": headers})
        await send({"type": "http.response.body", "body": b""})


def _refusal(scope: Scope, exc: LlmlbError) -> ASGIApp:
    """The refusal in the shape the path's clients read (Ollama's for its routes)."""
    return ollama.error(exc) if scope["path"] in ollama.CLIENT_PATHS else error_response(exc)


def _cors_headers(origin: bytes) -> list[tuple[bytes, bytes]]:
    return [(b"access-control-allow-origin", origin), (b"vary", b"origin"),
            (b"access-control-expose-headers", _EXPOSED)]  # fmt: skip
