"""Single sign-on's rules on plain values: roles from claims, user names, the pending login's
cookie, and each way an ID token is refused (signed by keys made here with joserfc)."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest
from joserfc import jwt
from joserfc.jwk import KeySet, OctKey, RSAKey

from llmlb.common.settings import OidcSettings
from llmlb.router.access.sso import Pending, SingleSignOn, SsoFailure, role_for, username_for

ISSUER = "https://idp.example.com"


def settings(**overrides: Any) -> OidcSettings:
    return OidcSettings(**{"issuer": ISSUER, "client_id": "llmlb", "admin_values": ["ops"],
                           "viewer_values": ["dev"], **overrides})  # fmt: skip


@pytest.mark.parametrize(
    ("claims", "overrides", "role"),
    [
        ({"groups": ["dev", "ops"]}, {}, "admin"),  # admin wins
        ({"groups": ["dev"]}, {}, "viewer"),
        ({"groups": "ops"}, {}, "admin"),  # a single value
        ({"groups": ["sales"]}, {}, None),
        ({}, {}, None),
        ({"groups": ["sales"]}, {"default_role": "viewer"}, "viewer"),
        ({"realm_access": {"roles": ["ops"]}}, {"role_claim": "realm_access.roles"}, "admin"),
        ({"realm_access": ["ops"]}, {"role_claim": "realm_access.roles"}, None),
        ({"groups": [1, None, {"ops": 1}]}, {}, None),  # odd values are no role
        ({"groups": 7}, {}, None),
        ({"groups": True}, {}, None),
        ({"groups": ["/corp/ops"]}, {}, "admin"),  # a group's path (Keycloak's mapper)
        (
            {"https://acme.example/roles": ["ops"]},
            {"role_claim": "https://acme.example/roles"},
            "admin",
        ),  # a namespaced claim (Auth0): its whole name, dots and all
    ],
)
def test_the_role_comes_from_the_claim_and_admin_wins(
    claims: dict[str, Any], overrides: dict[str, Any], role: str | None
) -> None:
    assert role_for(claims, settings(**overrides)) == role


@pytest.mark.parametrize(
    ("claims", "name"),
    [
        ({"preferred_username": "alice"}, "alice"),
        ({"email": "bob@example.com", "email_verified": True}, "bob@example.com"),
        ({"email": "boss@example.com"}, "sso-0123456789ab"),  # an address nobody verified
        ({"preferred_username": "Zoë Smith / ops"}, "Zo-Smith-ops"),
        ({"preferred_username": "../../etc"}, "etc"),
        ({"preferred_username": "x" * 200}, "x" * 64),
        ({"preferred_username": "///"}, "sso-0123456789ab"),
        ({}, "sso-0123456789ab"),
    ],
)
def test_user_names_keep_to_the_characters_names_may_hold(
    claims: dict[str, Any], name: str
) -> None:
    assert username_for(claims, settings(), "0123456789abcdef") == name


def test_the_pending_cookie_round_trips_and_expires() -> None:
    pending = Pending("s", "n", "v", time.time())
    assert Pending.from_cookie(pending.cookie()) == pending
    old = Pending("s", "n", "v", time.time() - 3600)
    assert Pending.from_cookie(old.cookie()) is None
    for junk in (None, "", "!!!", "W10", "x" * 5000, Pending("s", "n", "v", 0).cookie()):
        assert Pending.from_cookie(junk) is None


# -- the ID token ---------------------------------------------------------------------------------

KEY = RSAKey.generate_key(2048, parameters={"kid": "k1"})
OTHER = RSAKey.generate_key(2048, parameters={"kid": "k1"})  # the same id, another key
# A symmetric key in the provider's key set: a token it signs would verify, were HMAC allowed.
SHARED = OctKey.generate_key(256, parameters={"kid": "h1"})


def provider() -> SingleSignOn:
    sso = SingleSignOn(settings())
    metadata = {"issuer": ISSUER, "authorization_endpoint": ISSUER + "/a",
                "token_endpoint": ISSUER + "/t", "jwks_uri": ISSUER + "/k"}  # fmt: skip
    sso._metadata = (time.monotonic(), metadata)
    public = RSAKey.import_key(KEY.as_dict(private=False))
    sso._keys = (time.monotonic(), KeySet([public, SHARED]))
    return sso


def token(key: Any = KEY, alg: str = "RS256", kid: str = "k1", **claims: Any) -> str:
    now = int(time.time())
    body = {"iss": ISSUER, "aud": "llmlb", "sub": "u1", "exp": now + 300, "iat": now,
            "nonce": "n1", **claims}  # fmt: skip
    return jwt.encode({"alg": alg, "kid": kid}, {k: v for k, v in body.items() if v is not None},
                      key)  # fmt: skip


def test_a_good_id_token_gives_its_claims() -> None:
    claims = asyncio.run(provider()._verified_claims(token(groups=["ops"]), "n1"))
    assert claims["sub"] == "u1" and claims["groups"] == ["ops"]


@pytest.mark.parametrize(
    "bad",
    [
        pytest.param(lambda: token(OTHER), id="another key signed it"),
        pytest.param(lambda: token(nonce="n2"), id="another login's nonce"),
        pytest.param(lambda: token(nonce=None), id="no nonce"),
        pytest.param(lambda: token(aud="someone-else"), id="another client's"),
        pytest.param(lambda: token(aud=["llmlb", "x"], azp="x"), id="several audiences, not ours"),
        pytest.param(lambda: token(iss="https://evil.example.com"), id="another issuer"),
        pytest.param(lambda: token(exp=int(time.time()) - 3600), id="expired"),
        pytest.param(lambda: token(sub=None), id="no subject"),
        pytest.param(lambda: token(SHARED, "HS256", kid="h1"), id="HMAC-signed by a known key"),
        pytest.param(lambda: "a.b.c", id="not a token"),
        pytest.param(lambda: None, id="none at all"),
    ],
)
def test_a_bad_id_token_is_refused(bad: Any) -> None:
    with pytest.raises(SsoFailure) as failure:
        asyncio.run(provider()._verified_claims(bad(), "n1"))
    assert failure.value.code == "invalid_answer"


def test_an_unsigned_token_is_refused() -> None:
    import base64
    import json

    def part(data: dict[str, Any]) -> str:
        return base64.urlsafe_b64encode(json.dumps(data).encode()).decode().rstrip("=")

    body = {"iss": ISSUER, "aud": "llmlb", "sub": "u1", "exp": int(time.time()) + 60,
            "nonce": "n1"}  # fmt: skip
    unsigned = f"{part({'alg': 'none', 'kid': 'k1'})}.{part(body)}."
    with pytest.raises(SsoFailure):
        asyncio.run(provider()._verified_claims(unsigned, "n1"))


def test_hmac_would_verify_but_for_the_algorithm_list() -> None:
    """(So the refusal above is the algorithm list's, not a key that does not match.)"""
    hmac_signed = token(SHARED, "HS256", kid="h1")
    assert jwt.decode(hmac_signed, KeySet([SHARED]), algorithms=["HS256"]).claims["sub"] == "u1"


def test_an_issuer_that_ends_with_a_slash_is_taken_as_the_provider_names_itself() -> None:
    sso = provider()
    assert sso._metadata is not None
    sso._metadata[1]["issuer"] = ISSUER + "/"
    claims = asyncio.run(sso._verified_claims(token(iss=ISSUER + "/"), "n1"))
    assert claims["iss"] == ISSUER + "/"


def test_a_new_signing_key_is_fetched_once_and_then_trusted(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    rotated = RSAKey.generate_key(2048, parameters={"kid": "k2"})
    sso = provider()
    assert sso._keys is not None
    sso._keys = (time.monotonic() - 120, sso._keys[1])  # (older than the refresh interval)
    fetched: list[str] = []

    async def published(url: str) -> dict[str, Any]:
        fetched.append(url)
        return {"keys": [rotated.as_dict(private=False)]}

    monkeypatch.setattr(sso, "_get", published)
    claims = asyncio.run(sso._verified_claims(token(rotated, kid="k2"), "n1"))
    assert claims["sub"] == "u1" and fetched == [ISSUER + "/k"]
    asyncio.run(sso._verified_claims(token(rotated, kid="k2"), "n1"))
    assert len(fetched) == 1  # known now: not fetched again
    # A key id nobody publishes fetches again at most once a minute, however many ask.
    for _ in range(3):
        with pytest.raises(SsoFailure):
            asyncio.run(sso._verified_claims(token(OTHER, kid="k9"), "n1"))
    assert len(fetched) == 1


@pytest.mark.parametrize("state", ["é", "\udcff", "x" * 10_000, ""])
def test_an_odd_state_is_a_stale_login_not_an_error(state: str) -> None:
    pending = Pending("s", "n", "v", time.time())
    with pytest.raises(SsoFailure) as failure:
        asyncio.run(provider().finish({"state": state, "code": "c"}, pending, "http://r/cb"))
    assert failure.value.code == "expired"


def test_a_router_without_single_sign_on_never_loads_its_libraries() -> None:
    """Authlib and joserfc cost every router 14 MiB of memory (they load at a login), httpx
    with the rich and pygments it brings 5 MiB more (it loads with single sign-on set up)."""
    import subprocess
    import sys

    heavy = ("authlib", "joserfc", "httpx", "pygments")
    loaded = subprocess.run(
        [sys.executable, "-c", "import sys, llmlb.router.app, llmlb.router.service\n"
         f"print(sorted(m for m in sys.modules if m.split('.')[0] in {heavy}))"],
        capture_output=True, text=True, check=True, timeout=60,
    )  # fmt: skip
    assert loaded.stdout.strip() == "[]", loaded.stderr
