"""The dashboard: one page and its few files, shipped inside the package (no build step).

The files are read once, at import; a name outside that set is a 404, so no request path ever
reaches the file system. The page is public: everything it shows comes from the admin API,
which asks for a login. The content security policy allows scripts from this origin only,
so a node or model name that carries HTML could not run even if the page ever inserted it as
markup (it inserts text only).
"""

from __future__ import annotations

import hashlib
from importlib import resources

from starlette.requests import Request
from starlette.responses import Response

from llmlb.common.errors import NotFound

_FOLDER = resources.files("llmlb.router") / "dashboard"
_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml",
}
_FILES = {
    entry.name: entry.read_bytes()
    for entry in _FOLDER.iterdir()
    if entry.is_file() and any(entry.name.endswith(ext) for ext in _TYPES)
}
_ETAGS = {name: '"' + hashlib.sha256(data).hexdigest()[:32] + '"' for name, data in _FILES.items()}
SECURITY_HEADERS = {
    "content-security-policy": (
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'"
    ),
    "x-content-type-options": "nosniff",
    "referrer-policy": "same-origin",
    "x-frame-options": "DENY",
}


def _file(request: Request, name: str) -> Response:
    data = _FILES.get(name)
    if data is None:
        raise NotFound(f"no dashboard file named {name[:100]!r}")
    etag = _ETAGS[name]
    headers = {**SECURITY_HEADERS, "etag": etag, "cache-control": "no-cache"}
    if request.headers.get("if-none-match") == etag:
        return Response(status_code=304, headers=headers)
    media = next(t for ext, t in _TYPES.items() if name.endswith(ext))
    return Response(data, media_type=media, headers=headers)


async def page(request: Request) -> Response:
    return _file(request, "index.html")


async def asset(request: Request) -> Response:
    name = request.path_params["name"]
    if name == "index.html":
        raise NotFound("no dashboard file named 'index.html' here: the page is /dashboard")
    return _file(request, name)
