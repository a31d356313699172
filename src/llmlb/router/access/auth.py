"""Who may call what: API keys by scope, user accounts by role, and the loopback default.

- ``api`` (``/v1/*``), ``node`` (registration, heartbeats), ``admin`` (the admin API).
  An admin key works for every scope.
- Users (``router.access.accounts``) log in to the dashboard: a session cookie, or HTTP basic auth
  with their name and password. Role ``admin`` may do everything; ``viewer`` may read the
  admin API, and every write (any method but GET and HEAD) is refused. Both may use the client
  API, which is how the dashboard's playground chats, within their role's limits
  (``viewer_limits``, ``admin_limits``: see ``router.access.limits``). A cookie-authenticated write
  must carry the session's CSRF token in ``x-csrf-token``. A request that carries a key or
  basic auth in a header is that credential's, whatever cookie comes with it.
- The admin password (``LLMLB_ADMIN_PASSWORD``) is the first admin's password at first start,
  and stays an admin credential while it is set: a bearer token, or basic auth, any name.
- With no usable key of a scope (and, for ``admin``, no password and no user), that scope is
  open to loopback clients only. ``--no-auth`` opens everything to everyone.
"""

from __future__ import annotations

import base64
import hashlib
import ipaddress
import time
from dataclasses import dataclass

from llmlb.common.credentials import bearer_token, same_secret
from llmlb.common.errors import AuthenticationFailed, PermissionDenied
from llmlb.router.access.accounts import Accounts, Role, User
from llmlb.router.access.keys import ApiKey, KeyStore, Scope
from llmlb.router.telemetry.history import NOBODY, Who

SESSION_COOKIE = "llmlb_session"
CSRF_HEADER = "x-csrf-token"
# A script's basic auth is hashed at most once in this many seconds, not on every call; short,
# since another router sharing the database may have changed the password meanwhile.
_BASIC_CACHE_SECONDS = 5.0


@dataclass(frozen=True)
class Credentials:
    """What a request presented."""

    authorization: str | None = None
    x_api_key: str | None = None
    client: str | None = None  # the peer's address
    session: str | None = None  # the session cookie's secret
    csrf: str | None = None  # the x-csrf-token header
    write: bool = False  # a method other than GET and HEAD


@dataclass(frozen=True)
class Principal:
    """Who a request is: its API key's id, or its user; and what it may do."""

    key_id: str | None = None
    user: User | None = None
    key: ApiKey | None = None  # the API key, with its limits
    role: Role = "admin"
    csrf: str | None = None  # the session's token, for the dashboard (None without a session)

    @property
    def who(self) -> Who:
        if self.user is not None:
            return Who(user_id=self.user.id, user=self.user.username)
        return Who(key_id=self.key_id) if self.key_id is not None else NOBODY


def is_loopback(host: str | None) -> bool:
    if not host:
        return False
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def _credentials(authorization: str | None) -> tuple[str | None, tuple[str, str] | None]:
    """(bearer token, basic-auth (user, password)) from an Authorization header."""
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
        user, _, password = decoded.partition(":")
        return None, (user, password)
    return None, None


class Authenticator:
    def __init__(
        self, keys: KeyStore, accounts: Accounts, *, admin_password: str | None, no_auth: bool
    ) -> None:
        self._keys = keys
        self._accounts = accounts
        self._admin_password = admin_password
        self._no_auth = no_auth
        self._basic: dict[str, tuple[float, User]] = {}  # sha256(user:password) -> checked user

    async def require(
        self, scope: Scope, offered: Credentials, *, own_account: bool = False
    ) -> Principal:
        principal = await self._identify(scope, offered)
        if scope == "admin" and offered.write and principal.role != "admin" and not own_account:
            raise PermissionDenied(
                "viewers may look, not change: this needs an admin", code="read_only"
            )
        return principal

    async def _identify(self, scope: Scope, offered: Credentials) -> Principal:
        bearer, basic = _credentials(offered.authorization)
        token = bearer or offered.x_api_key
        # Credentials in a header are the caller's choice; a cookie is the browser's. Where
        # both come, the header decides (and needs no CSRF token: no other site can set it).
        explicit = token is not None or basic is not None
        if scope in ("admin", "api") and offered.session and not explicit:
            session = await self._accounts.session(offered.session)
            if session is not None:
                if offered.write and not (offered.csrf and same_secret(offered.csrf, session.csrf)):
                    raise PermissionDenied(
                        f"a change made with a session cookie needs its {CSRF_HEADER} header",
                        code="csrf_failed",
                    )
                return Principal(user=session.user, role=session.user.role, csrf=session.csrf)
        if scope == "admin" and self._admin_password:
            password = basic[1] if basic else token
            if password and same_secret(password, self._admin_password):
                return Principal()
        if scope in ("admin", "api") and basic is not None:
            user = await self._basic_user(*basic, offered.client or "-")
            if user is not None:
                return Principal(user=user, role=user.role)
        key = await self._keys.verify(token) if token else None
        if key is not None:
            if scope in key.scopes or "admin" in key.scopes:
                return Principal(key.id, key=key)
            raise PermissionDenied(
                f"this key's scopes ({', '.join(sorted(key.scopes))}) do not include {scope!r}",
                code="insufficient_scope",
            )
        if self._no_auth:
            return Principal()
        if token and await self._keys.spent(token):
            # Refused even where loopback callers need no key: whoever holds it was cut off.
            raise AuthenticationFailed(
                "this API key was revoked or has expired", code="key_revoked"
            )
        configured = await self._configured(scope)
        # Clients such as the OpenAI SDK always send some key; before any key of this scope
        # exists, loopback callers are let in whatever they send.
        if not configured and is_loopback(offered.client):
            return Principal()
        if token or basic or offered.session:
            raise AuthenticationFailed(
                "invalid or expired credentials (API key, password or session)",
                code="invalid_credentials",
            )
        hint = "" if configured else "; with no such key configured only loopback clients may call"
        raise AuthenticationFailed(
            f"an API key of scope {scope!r} is required (Authorization: Bearer <key>){hint}"
        )

    async def _basic_user(self, username: str, password: str, client: str) -> User | None:
        digest = hashlib.sha256(
            f"{username}:{password}".encode(errors="surrogateescape")
        ).hexdigest()
        now = time.monotonic()
        cached = self._basic.get(digest)
        if cached is not None and now - cached[0] < _BASIC_CACHE_SECONDS:
            return cached[1]
        user = await self._accounts.login(username, password, client)
        if user is not None:
            if len(self._basic) > 1000:
                self._basic.clear()
            self._basic[digest] = (now, user)
        return user

    def forget_passwords(self) -> None:
        """After a password or role change: basic auth is checked afresh."""
        self._basic.clear()

    async def open_to_loopback(self) -> bool:
        """Whether the admin API needs no credential from loopback (nothing configured)."""
        return not self._no_auth and not await self._configured("admin")

    async def _configured(self, scope: Scope) -> bool:
        """Whether callers of this scope must present a credential."""
        if await self._keys.has_scope(scope):
            return True
        if scope == "admin":
            return self._admin_password is not None or await self._accounts.any()
        return await self._keys.has_scope("admin")
