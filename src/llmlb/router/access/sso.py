"""Single sign-on for the dashboard: OpenID Connect's authorization code flow with PKCE.

The dashboard's "Sign in with ..." sends the browser to ``/api/auth/oidc/login``, which
redirects it to the provider with a fresh state, nonce and PKCE verifier (S256). These three
travel in a short-lived HttpOnly cookie (``PENDING_COOKIE``), not in the router's memory, so
that the provider's redirect back may reach any router behind the same address. The callback
checks the state against the cookie, trades the code and the verifier for tokens (Authlib's
OAuth 2 client), and verifies the ID token (joserfc: signature by the provider's published
keys, issuer, audience, expiry, nonce). The user's role comes from a claim (groups or roles)
mapped by the settings; a user with no mapped role is refused unless a default is set.

Every failure is an ``SsoFailure`` with a short code that the dashboard turns into a
sentence; nothing the provider or the browser sent is shown back unchecked. The provider is
called over one client per router (one TLS context: making one costs ~25 ms of the event
loop), each login's calls under one deadline, at most ``_AT_ONCE`` logins' at a time.

Authlib and joserfc are imported where a login uses them, not with this module: the client
API's routes import its names, and the two took 14 MiB of every router's memory, most of
which never set single sign-on up.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import logging
import os
import re
import secrets
import ssl
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import urlencode

import orjson

from llmlb.common.settings import OidcSettings
from llmlb.router.access.accounts import Role

if TYPE_CHECKING:
    from authlib.integrations.httpx_client import AsyncOAuth2Client
    from joserfc.jwk import KeySet

log = logging.getLogger(__name__)

PENDING_COOKIE = "llmlb_oidc"
# Over https the cookie is __Host- prefixed: the browser then takes it only from this exact
# origin (Secure, Path=/, no Domain), so a sibling subdomain cannot plant its own login.
PENDING_COOKIE_SECURE = "__Host-llmlb_oidc"
PENDING_SECONDS = 600  # a login left at the provider's page longer than this starts again
CALLBACK_PATH = "/api/auth/oidc/callback"
_TIMEOUT_SECONDS = 10.0  # each call to the provider
_DEADLINE_SECONDS = 30.0  # all of one login's calls (a provider that trickles bytes)
_AT_ONCE = 16  # logins talking to the provider at once; more wait their turn
_MAX_DOCUMENT = 1024 * 1024  # a discovery document or key set larger than this is refused
_METADATA_SECONDS = 3600.0  # the discovery document and the key set are read again hourly
_KEYS_REFRESH_SECONDS = 60.0  # an unknown key id fetches the key set again at most this often
# Signatures a provider may use. "none" and the HMAC family (keyed by the client secret) are
# not accepted: the provider's published keys must have signed the token.
_ALGORITHMS = ("RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512",
               "EdDSA")  # fmt: skip
_LEEWAY_SECONDS = 60
_NAME_CHARACTERS = re.compile(r"[^A-Za-z0-9._@-]+")


class SsoFailure(Exception):
    """A login that did not complete; ``code`` is what the dashboard explains."""

    def __init__(self, code: str, detail: str) -> None:
        super().__init__(detail)
        self.code = code


@dataclass(frozen=True)
class Identity:
    """Who the provider says logged in, and what they may do here."""

    subject: str  # sha256 of issuer and subject: the account's key here
    name: str
    role: Role | None  # None: the provider knows them, but no group of theirs maps to a role


@dataclass(frozen=True)
class Pending:
    """A login between the redirect to the provider and its answer (the pending cookie)."""

    state: str
    nonce: str
    verifier: str
    created: float

    def cookie(self) -> str:
        data = orjson.dumps([self.state, self.nonce, self.verifier, self.created])
        return base64.urlsafe_b64encode(data).decode().rstrip("=")

    @classmethod
    def from_cookie(cls, value: str | None) -> Pending | None:
        if not value or len(value) > 1024:
            return None
        try:
            data = orjson.loads(base64.urlsafe_b64decode(value + "=" * (-len(value) % 4)))
            state, nonce, verifier, created = data
        except (ValueError, TypeError):
            return None
        if not all(isinstance(v, str) for v in (state, nonce, verifier)):
            return None
        if not isinstance(created, (int, float)) or time.time() - created > PENDING_SECONDS:
            return None
        return cls(state, nonce, verifier, float(created))


def claim_value(claims: dict[str, Any], name: str) -> Any:
    """A claim by its whole name (Auth0's are URLs: ``https://acme/roles``), else by a
    dotted path into objects (Keycloak's ``realm_access.roles``)."""
    if name in claims:
        return claims[name]
    value: Any = claims
    for part in name.split("."):
        value = value.get(part) if isinstance(value, dict) else None
    return value


def role_for(claims: dict[str, Any], settings: OidcSettings) -> Role | None:
    """The role these claims map to, or None (refused). Admin wins over viewer. A group given
    as a path (Keycloak's ``/llm-admins``) matches its name too."""
    value = claim_value(claims, settings.role_claim)
    found = [value] if isinstance(value, str) else value if isinstance(value, list) else []
    values = {v for v in found if isinstance(v, str)}
    values |= {v.rsplit("/", 1)[-1] for v in values}
    if values & set(settings.admin_values):
        return "admin"
    if values & set(settings.viewer_values):
        return "viewer"
    return "viewer" if settings.default_role == "viewer" else None


def username_for(claims: dict[str, Any], settings: OidcSettings, subject: str) -> str:
    """A user name from the provider's claims, in the characters user names may hold."""
    # An e-mail address counts only when the provider says it verified it.
    email = claims.get("email") if claims.get("email_verified") is True else None
    for value in (claims.get(settings.username_claim), claims.get("preferred_username"), email):
        if isinstance(value, str):
            name = _NAME_CHARACTERS.sub("-", value).lstrip("._@-")[:64]
            if name:
                return name
    return "sso-" + subject[:12]


class SingleSignOn:
    """One OpenID Connect provider: its metadata and keys (fetched when first needed and
    cached), the redirect to it, and the check of its answer."""

    def __init__(self, settings: OidcSettings) -> None:
        self.settings = settings
        self.issuer = settings.issuer.rstrip("/")
        self._secret = os.environ.get(settings.client_secret_env) or None
        self._metadata: tuple[float, dict[str, Any]] | None = None
        self._keys: tuple[float, KeySet] | None = None
        # The system's CAs (SSL_CERT_FILE and SSL_CERT_DIR apply), made once.
        self._tls = ssl.create_default_context()
        # httpx (Authlib's client too) loads here, with single sign-on configured: it brings
        # rich and pygments, megabytes a router without it has no use for.
        import httpx

        self._http = httpx.AsyncClient(timeout=_TIMEOUT_SECONDS, verify=self._tls)
        self._turns = asyncio.Semaphore(_AT_ONCE)

    async def close(self) -> None:
        await self._http.aclose()

    @property
    def label(self) -> str:
        return self.settings.label

    def redirect_uri(self, router_url: str) -> str:
        return self.settings.redirect_url or router_url.rstrip("/") + CALLBACK_PATH

    # -- the provider's documents -------------------------------------------------------------

    async def _get(self, url: str) -> dict[str, Any]:
        import httpx

        body = bytearray()
        try:
            async with self._http.stream("GET", url) as r:
                if r.status_code != 200:
                    raise SsoFailure("provider_unreachable", f"{url} answered {r.status_code}")
                async for chunk in r.aiter_bytes():
                    body += chunk
                    if len(body) > _MAX_DOCUMENT:
                        raise SsoFailure("provider_unreachable",
                                         f"{url}: over {_MAX_DOCUMENT} bytes")  # fmt: skip
        except httpx.HTTPError as exc:
            raise SsoFailure("provider_unreachable", f"{url}: {exc!r}") from None
        try:
            document = orjson.loads(body)
        except orjson.JSONDecodeError:
            raise SsoFailure("provider_unreachable", f"{url} did not answer JSON") from None
        if not isinstance(document, dict):
            raise SsoFailure("provider_unreachable", f"{url} did not answer a JSON object")
        return document

    async def metadata(self) -> dict[str, Any]:
        """The provider's discovery document (refreshed hourly); SsoFailure when it cannot
        be had."""
        if self._metadata and time.monotonic() - self._metadata[0] < _METADATA_SECONDS:
            return self._metadata[1]
        url = self.issuer + "/.well-known/openid-configuration"
        document = await self._get(url)
        named = document.get("issuer")
        if not isinstance(named, str) or named.rstrip("/") != self.issuer:  # Discovery 4.3
            raise SsoFailure("provider_misconfigured", f"{url} names issuer {named!r}")
        for field in ("authorization_endpoint", "token_endpoint", "jwks_uri"):
            if not isinstance(document.get(field), str):
                raise SsoFailure("provider_misconfigured", f"{url} has no {field}")
        self._metadata = (time.monotonic(), document)
        self._keys = None  # read again with the document: withdrawn keys stop counting
        return document

    async def _key_set(self, kid: str | None) -> KeySet:
        from joserfc.errors import JoseError
        from joserfc.jwk import KeySet

        url = (await self.metadata())["jwks_uri"]  # (an hourly refresh forgets the keys)
        now = time.monotonic()
        known = self._keys is not None and (kid is None or _has_key(self._keys[1], kid))
        if self._keys is not None and (known or now - self._keys[0] < _KEYS_REFRESH_SECONDS):
            return self._keys[1]
        try:
            keys = KeySet.import_key_set(await self._get(url))  # type: ignore[arg-type]
        except (JoseError, ValueError, TypeError, KeyError) as exc:
            raise SsoFailure("provider_misconfigured", f"{url}: {exc}") from None
        self._keys = (now, keys)
        return keys

    # -- the flow -----------------------------------------------------------------------------

    def _client(self, metadata: dict[str, Any], redirect_uri: str) -> AsyncOAuth2Client:
        """A client for one login's token exchange (it keeps that login's token), on the
        shared TLS context."""
        from authlib.integrations.httpx_client import AsyncOAuth2Client

        methods = metadata.get("token_endpoint_auth_methods_supported") or ["client_secret_basic"]
        method = ("none" if self._secret is None
                  else "client_secret_basic" if "client_secret_basic" in methods
                  else "client_secret_post")  # fmt: skip
        return AsyncOAuth2Client(
            client_id=self.settings.client_id, client_secret=self._secret,
            token_endpoint_auth_method=method, scope=" ".join(self.settings.scopes),
            redirect_uri=redirect_uri, code_challenge_method="S256", timeout=_TIMEOUT_SECONDS,
            verify=self._tls,
        )  # fmt: skip

    async def start(self, redirect_uri: str) -> tuple[str, Pending]:
        """The provider's authorization URL for a new login, and what its answer is checked
        against."""
        from authlib.oauth2.rfc7636 import create_s256_code_challenge

        async with self._turns, asyncio.timeout(_DEADLINE_SECONDS):
            metadata = await self._guarded(self.metadata())
        pending = Pending(secrets.token_urlsafe(24), secrets.token_urlsafe(24),
                          secrets.token_urlsafe(48), time.time())  # fmt: skip
        query = {
            "response_type": "code", "client_id": self.settings.client_id,
            "redirect_uri": redirect_uri, "scope": " ".join(self.settings.scopes),
            "state": pending.state, "nonce": pending.nonce,
            "code_challenge": create_s256_code_challenge(pending.verifier),
            "code_challenge_method": "S256",
        }  # fmt: skip
        endpoint = metadata["authorization_endpoint"]
        return endpoint + ("&" if "?" in endpoint else "?") + urlencode(query), pending

    async def _guarded(self, work: Any) -> Any:
        """``work`` (a call to the provider) with what can go wrong on the way as an
        SsoFailure: the network (httpx, or httpx2 under Authlib), a refusal, an odd answer."""
        from authlib.common.errors import AuthlibBaseError

        try:
            return await work
        except SsoFailure:
            raise
        except (OSError, TimeoutError) as exc:
            raise SsoFailure("provider_unreachable", repr(exc)) from None
        except AuthlibBaseError as exc:  # the token endpoint's refusal (an OAuth error)
            raise SsoFailure("invalid_answer", f"token endpoint: {exc!r}") from None
        except Exception as exc:
            if type(exc).__module__.split(".")[0] in ("httpx", "httpx2", "httpcore", "httpcore2"):
                raise SsoFailure("provider_unreachable", repr(exc)) from None
            raise SsoFailure("invalid_answer", repr(exc)) from None

    async def finish(
        self, params: dict[str, str], pending: Pending | None, redirect_uri: str
    ) -> Identity:
        """The identity of a completed login, from the provider's redirect back."""
        if "error" in params:
            error = params["error"]
            readable = re.fullmatch(r"[a-z_]{1,40}", error)
            raise SsoFailure("denied", "the provider refused: " + (
                error if readable else "(an unreadable error)"))  # fmt: skip
        if pending is None:
            raise SsoFailure("expired", "no login under way in this browser (or it expired)")
        answered = params.get("state", "").encode("utf-8", "surrogateescape")
        if not secrets.compare_digest(answered, pending.state.encode()):
            raise SsoFailure("expired", "the answer's state is not this browser's login")
        code = params.get("code")
        if not code or len(code) > 4096:
            raise SsoFailure("invalid_answer", "the provider's answer has no code")
        async with self._turns, asyncio.timeout(_DEADLINE_SECONDS):
            claims = await self._guarded(self._trade(code, pending, redirect_uri))
        subject = hashlib.sha256(f"{self.issuer}\0{claims['sub']}".encode()).hexdigest()
        return Identity(subject, username_for(claims, self.settings, subject),
                        role_for(claims, self.settings))  # fmt: skip

    async def _trade(self, code: str, pending: Pending, redirect_uri: str) -> dict[str, Any]:
        """The code and verifier for tokens; the ID token's claims (with the user info's
        when the token lacks what the settings read)."""
        metadata = await self.metadata()
        async with self._client(metadata, redirect_uri) as client:
            token = await client.fetch_token(
                metadata["token_endpoint"], grant_type="authorization_code", code=code,
                code_verifier=pending.verifier,
            )  # fmt: skip
            claims = await self._verified_claims(token.get("id_token"), pending.nonce)
            if not _has_claims(claims, self.settings) and metadata.get("userinfo_endpoint"):
                claims = await self._with_userinfo(client, metadata, claims)
        return claims

    async def _verified_claims(self, id_token: object, nonce: str) -> dict[str, Any]:
        from joserfc import jwt
        from joserfc.errors import JoseError

        if not isinstance(id_token, str):
            raise SsoFailure("invalid_answer", "the token endpoint sent no ID token")
        try:
            header = orjson.loads(_b64(id_token.split(".")[0]))
            kid = header.get("kid") if isinstance(header, dict) else None
            keys = await self._key_set(kid if isinstance(kid, str) else None)
            decoded = jwt.decode(id_token, keys, algorithms=_ALGORITHMS)
            # The issuer exactly as the provider names itself (some end it with a slash).
            issuer = (await self.metadata())["issuer"]
            jwt.JWTClaimsRegistry(
                leeway=_LEEWAY_SECONDS, iss={"essential": True, "value": issuer},
                aud={"essential": True, "value": self.settings.client_id},
                sub={"essential": True}, exp={"essential": True},
                nonce={"essential": True, "value": nonce},
            ).validate(decoded.claims)  # fmt: skip
        except (JoseError, ValueError, IndexError, TypeError) as exc:
            raise SsoFailure("invalid_answer", f"the ID token: {exc}") from None
        claims = dict(decoded.claims)
        audience = claims.get("aud")
        several = isinstance(audience, list) and len(audience) > 1
        if several and claims.get("azp") != self.settings.client_id:  # OIDC Core 3.1.3.7
            raise SsoFailure("invalid_answer", "the ID token was issued to another client")
        if not isinstance(claims.get("sub"), str) or not claims["sub"]:
            raise SsoFailure("invalid_answer", "the ID token names no subject")
        return claims

    async def _with_userinfo(
        self, client: AsyncOAuth2Client, metadata: dict[str, Any], claims: dict[str, Any]
    ) -> dict[str, Any]:
        """The ID token's claims with the user-info endpoint's added (some providers put
        groups only there); its subject must be the token's (OpenID Connect Core 5.3.2)."""
        answer = await client.get(metadata["userinfo_endpoint"])
        if answer.status_code != 200 or len(answer.content) > _MAX_DOCUMENT:
            return claims
        try:
            info = orjson.loads(answer.content)
        except orjson.JSONDecodeError:
            return claims
        if not isinstance(info, dict) or info.get("sub") != claims["sub"]:
            return claims
        return {**info, **claims}


def _has_claims(claims: dict[str, Any], settings: OidcSettings) -> bool:
    role = claim_value(claims, settings.role_claim)
    return role is not None and settings.username_claim in claims


def _has_key(keys: KeySet, kid: str) -> bool:
    return any(key.kid == kid for key in keys)


def _b64(part: str) -> bytes:
    return base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))
