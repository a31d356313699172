"""The per-key token bucket: an estimate taken at admission holds a burst back, and the
real usage settles it."""

from __future__ import annotations

import pytest

from llmlb.common.errors import RateLimited
from llmlb.router.access.keys import ApiKey, KeyLimits
from llmlb.router.access.limits import KeyLimiter

KEY = ApiKey("k1", "limited", frozenset({"api"}), "llmlb_x", 0.0, None, None,
             KeyLimits(tokens_per_minute=100))  # fmt: skip


def test_a_burst_cannot_pass_the_allowance_before_any_usage_is_known() -> None:
    limiter = KeyLimiter()
    limiter.admit(KEY, "m", "r1", body_bytes=200)  # about 50 tokens each
    limiter.admit(KEY, "m", "r2", body_bytes=200)
    with pytest.raises(RateLimited) as refused:
        limiter.admit(KEY, "m", "r3", body_bytes=200)
    assert refused.value.kind == "tokens"
    # r1 turns out small: the difference comes back, and the key may go on.
    limiter.charge("k1", 10, "r1")
    limiter.admit(KEY, "m", "r4", body_bytes=4)
