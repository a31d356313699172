"""Reading and comparing credentials from HTTP headers (router and node alike)."""

from __future__ import annotations

import hmac


def bearer_token(authorization: str | None) -> str | None:
    """The token of an ``Authorization: Bearer <token>`` header; None for any other header."""
    scheme, _, value = (authorization or "").partition(" ")
    if scheme.lower() != "bearer":
        return None
    return value.strip() or None


def same_secret(offered: str, expected: str) -> bool:
    """Constant-time comparison that takes any characters.

    Header values arrive decoded as latin-1, so a client can send characters that
    ``hmac.compare_digest`` refuses on ``str`` (a TypeError, once a 500): compare bytes.
    """
    return hmac.compare_digest(offered.encode("utf-8", "surrogateescape"), expected.encode())
