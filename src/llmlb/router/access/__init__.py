"""Who may call what.

- ``auth``: the Authenticator; a request"s credentials (key, session cookie, loopback) become
  a Principal.
- ``keys``: API keys (scoped, expiring, stored hashed) and the KeyStore that caches them.
- ``accounts``: dashboard users with a role, argon2id passwords, login sessions.
- ``limits``: requests and tokens per minute per key, and per role (Allowances).
- ``sharing``: those limits counted across routers on one database.
- ``lockout``: failed logins counted per user and per address, shared by every router.
- ``sso``: single sign-on with an OpenID Connect provider (authorization code with PKCE).
- ``provisioning``: what a first start creates: the nodes" token and the first admin.
"""

from typing import TYPE_CHECKING

from llmlb.common.exports import exported, lazy_exports

if TYPE_CHECKING:
    from llmlb.router.access.accounts import (
        Accounts as Accounts,
        Session as Session,
        User as User,
        check_password as check_password,
        check_role as check_role,
        check_username as check_username,
    )
    from llmlb.router.access.auth import (
        CSRF_HEADER as CSRF_HEADER,
        SESSION_COOKIE as SESSION_COOKIE,
        Authenticator as Authenticator,
        Credentials as Credentials,
        Principal as Principal,
    )
    from llmlb.router.access.keys import (
        KeyLimits as KeyLimits,
        KeyStore as KeyStore,
        Scope as Scope,
        key_name as key_name,
        with_resolved_models as with_resolved_models,
    )
    from llmlb.router.access.limits import Allowances as Allowances, KeyLimiter as KeyLimiter
    from llmlb.router.access.lockout import normalised_address as normalised_address
    from llmlb.router.access.provisioning import Provisioning as Provisioning
    from llmlb.router.access.sharing import LimitSharing as LimitSharing
    from llmlb.router.access.sso import (
        PENDING_COOKIE as PENDING_COOKIE,
        PENDING_COOKIE_SECURE as PENDING_COOKIE_SECURE,
        PENDING_SECONDS as PENDING_SECONDS,
        Pending as Pending,
        SingleSignOn as SingleSignOn,
        SsoFailure as SsoFailure,
    )

_OWNERS = {
    "accounts": ["Accounts", "Session", "User", "check_password", "check_role", "check_username"],
    "auth": ["CSRF_HEADER", "SESSION_COOKIE", "Authenticator", "Credentials", "Principal"],
    "keys": ["KeyLimits", "KeyStore", "Scope", "key_name", "with_resolved_models"],
    "limits": ["Allowances", "KeyLimiter"],
    "lockout": ["normalised_address"],
    "provisioning": ["Provisioning"],
    "sharing": ["LimitSharing"],
    "sso": [
        "PENDING_COOKIE",
        "PENDING_COOKIE_SECURE",
        "PENDING_SECONDS",
        "Pending",
        "SingleSignOn",
        "SsoFailure",
    ],
}
__all__ = exported(_OWNERS)
__getattr__ = lazy_exports(__name__, _OWNERS)
