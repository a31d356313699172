"""Who may call what: API keys by scope, the admin password, and the loopback default.

- ``api`` (``/v1/*``), ``node`` (registration, heartbeats), ``admin`` (the admin API).
  An admin key works for every scope.
- The admin password (``LLMLB_ADMIN_PASSWORD``) works for the admin API, as a bearer token
  or HTTP basic auth with any user name.
- With no usable key of a scope (and, for ``admin``, no password), that scope is open to
  loopback clients only. ``--no-auth`` opens everything to everyone.
"""

from __future__ import annotations

import base64
import ipaddress
from dataclasses import dataclass

from llmlb.common.credentials import bearer_token, same_secret
from llmlb.common.errors import AuthenticationFailed, PermissionDenied
from llmlb.router.keys import KeyStore, Scope


@dataclass(frozen=True)
class Principal:
    """Who a request is: the id of the API key it presented (None without a key)."""

    key_id: str | None = None


def is_loopback(host: str | None) -> bool:
    if not host:
        return False
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def _credentials(authorization: str | None) -> tuple[str | None, str | None]:
    """(bearer token, basic-auth password) from an Authorization header."""
    if not authorization:
        return None, None
    scheme, _, value = authorization.partition(" ")
    if scheme.lower() == "bearer":
        return bearer_token(authorization), None
    if scheme.lower() == "basic":
        try:
            decoded = base64.b64decode(value.strip()).decode()
        except (ValueError, UnicodeDecodeError):
            return None, None
        return None, decoded.partition(":")[2]
    return None, None


class Authenticator:
    def __init__(self, keys: KeyStore, *, admin_password: str | None, no_auth: bool) -> None:
        self._keys = keys
        self._admin_password = admin_password
        self._no_auth = no_auth

    async def require(
        self, scope: Scope, authorization: str | None, x_api_key: str | None, client: str | None
    ) -> Principal:
        bearer, password = _credentials(authorization)
        token = bearer or x_api_key
        if scope == "admin" and self._admin_password:
            offered = password or token
            if offered and same_secret(offered, self._admin_password):
                return Principal()
        key = await self._keys.verify(token) if token else None
        if key is not None:
            if scope in key.scopes or "admin" in key.scopes:
                return Principal(key.id)
            raise PermissionDenied(
                f"this key's scopes ({', '.join(sorted(key.scopes))}) do not include {scope!r}",
                code="insufficient_scope",
            )
        if self._no_auth:
            return Principal()
        configured = await self._configured(scope)
        # Clients such as the OpenAI SDK always send some key; before any key of this scope
        # exists, loopback callers are let in whatever they send.
        if not configured and is_loopback(client):
            return Principal()
        if token:
            raise AuthenticationFailed("invalid, expired or revoked API key")
        hint = "" if configured else "; with no such key configured only loopback clients may call"
        raise AuthenticationFailed(
            f"an API key of scope {scope!r} is required (Authorization: Bearer <key>){hint}"
        )

    async def _configured(self, scope: Scope) -> bool:
        """Whether callers of this scope must present a credential."""
        if await self._keys.has_scope(scope):
            return True
        if scope == "admin":
            return self._admin_password is not None
        return await self._keys.has_scope("admin")
