"""A real OpenID Connect provider for the single sign-on tests: PyPI's oidc-provider-mock
(Authlib's authorization server: discovery, the authorization page, the token endpoint,
RS256-signed ID tokens, keys, user info) served on 127.0.0.1, port 0, in a thread.

It records each request's form and query (``seen``) so that a test can check what llmlb sent
it, the PKCE pair above all: the mock itself does not verify the code challenge.

    with IdentityProvider(users={"alice": {"groups": ["llm-admins"]}}) as idp:
        idp.issuer  # http://127.0.0.1:PORT
"""

from __future__ import annotations

import io
import threading
import warnings
from collections.abc import Callable, Iterable
from typing import Any
from urllib.parse import parse_qs

import werkzeug.serving

with warnings.catch_warnings():  # (it imports Authlib's deprecated JOSE module; llmlb does not)
    warnings.simplefilter("ignore", DeprecationWarning)
    from oidc_provider_mock import User, app

CLIENT_ID = "llmlb-dashboard"
SECRET_ENV, SECRET = "LLMLB_TEST_OIDC_SECRET", "test-client-secret"  # (the mock takes any)
ADMINS, VIEWERS = "llm-admins", "llm-viewers"


class IdentityProvider:
    def __init__(self, users: dict[str, dict[str, Any]]) -> None:
        self.users = users
        self.seen: list[tuple[str, dict[str, list[str]]]] = []  # (path, query and form)
        self.broken: set[str] = set()  # paths that answer 500 (a provider in trouble)
        predefined = [User(sub=sub, claims=claims) for sub, claims in users.items()]
        self._app = app(require_nonce=True, user_claims=predefined)
        self._server = werkzeug.serving.make_server("127.0.0.1", 0, self._recording, threaded=True)
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.05,))

    @property
    def issuer(self) -> str:
        return f"http://127.0.0.1:{self._server.server_port}"

    def _recording(self, environ: dict[str, Any], start: Callable[..., Any]) -> Iterable[bytes]:
        fields = parse_qs(environ.get("QUERY_STRING", ""))
        if "HTTP_AUTHORIZATION" in environ:
            fields["authorization"] = [environ["HTTP_AUTHORIZATION"]]
        if environ["REQUEST_METHOD"] == "POST":
            length = int(environ.get("CONTENT_LENGTH") or 0)
            body = environ["wsgi.input"].read(length)
            fields.update(parse_qs(body.decode()))
            environ["wsgi.input"] = io.BytesIO(body)
        self.seen.append((environ["PATH_INFO"], fields))
        if environ["PATH_INFO"] in self.broken:
            start("500 Internal Server Error", [("content-type", "text/html")])
            return [b"<h1>Internal Server Error</h1>"]
        return self._app(environ, start)  # type: ignore[no-any-return]

    def requests_to(self, path: str) -> list[dict[str, list[str]]]:
        return [fields for seen, fields in self.seen if seen == path]

    def __enter__(self) -> IdentityProvider:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(10)

    def settings(self, **overrides: Any) -> dict[str, Any]:
        """llmlb's [router.oidc] for this provider: groups map to roles (the client secret
        in the environment variable SECRET_ENV)."""
        return {"issuer": self.issuer, "client_id": CLIENT_ID, "admin_values": [ADMINS],
                "client_secret_env": SECRET_ENV,
                "viewer_values": [VIEWERS], "label": "Test IdP", **overrides}  # fmt: skip
