"""Per-key limits shared by routers on one database (real SQLite and PostgreSQL): a key gets
its allowance once, whichever router it calls."""

from __future__ import annotations

import pytest

from llmlb.common.errors import RateLimited
from llmlb.router.db import open_database
from llmlb.router.keys import ApiKey, KeyLimits
from llmlb.router.limits import KeyLimiter
from llmlb.router.limits_sharing import LimitSharing


def key(requests_per_minute: int | None = None, tokens_per_minute: int | None = None) -> ApiKey:
    limits = KeyLimits(requests_per_minute=requests_per_minute, tokens_per_minute=tokens_per_minute)
    return ApiKey("key-1", "shared", frozenset({"api"}), "llmlb_x", 0.0, None, None, limits)


def admitted(limiter: KeyLimiter, api_key: ApiKey, tries: int) -> int:
    count = 0
    for attempt in range(tries):
        try:
            limiter.admit(api_key, "m", f"r{attempt}", body_bytes=4)
        except RateLimited:
            break
        count += 1
    return count


async def test_requests_per_minute_are_counted_once_across_routers(database_url: str) -> None:
    engine = await open_database(database_url)
    limited = key(requests_per_minute=10)
    here, there = KeyLimiter(), KeyLimiter()
    here_sharing, there_sharing = LimitSharing(engine, here), LimitSharing(engine, there)
    await here_sharing.share()  # both routers are up before the key is used
    await there_sharing.share()
    assert admitted(there, limited, 1) == 1  # "there" has a bucket of its own now
    assert admitted(here, limited, 6) == 6
    await here_sharing.share()
    await there_sharing.share()
    # 7 of 10 used in all: "there" lets in 3 more, not the 9 its own bucket had.
    assert admitted(there, limited, 10) == 3
    await there_sharing.share()
    await here_sharing.share()
    with pytest.raises(RateLimited):  # "here" had no word of those 3 before this round
        here.admit(limited, "m", "late", body_bytes=4)
    await engine.dispose()


async def test_a_key_new_to_a_router_starts_with_what_others_used(database_url: str) -> None:
    engine = await open_database(database_url)
    limited = key(tokens_per_minute=100)
    here, there = KeyLimiter(), KeyLimiter()
    here_sharing, there_sharing = LimitSharing(engine, here), LimitSharing(engine, there)
    await there_sharing.share()
    here.admit(limited, "m", "r1", body_bytes=4)
    here.charge("key-1", 100, "r1")  # the whole minute's tokens, used through "here"
    await here_sharing.share()
    await there_sharing.share()
    with pytest.raises(RateLimited) as refused:  # "there" never saw the key itself
        there.admit(limited, "m", "r2", body_bytes=4)
    assert refused.value.kind == "tokens"
    await engine.dispose()


async def test_a_router_started_later_counts_wholly_but_history_before_it_does_not(
    database_url: str,
) -> None:
    """A row that appears after a router's first round is a router process that started
    since: all of it counts. Rows there at the first round are from before: they do not."""
    engine = await open_database(database_url)
    limited = key(requests_per_minute=10)
    old = KeyLimiter()
    assert admitted(old, limited, 4) == 4
    await LimitSharing(engine, old).share()
    here = KeyLimiter()
    here_sharing = LimitSharing(engine, here)
    await here_sharing.share()  # its first round: the 4 are from before it started
    late = KeyLimiter()
    assert admitted(late, limited, 5) == 5
    await LimitSharing(engine, late).share()
    await here_sharing.share()
    assert admitted(here, limited, 10) == 5
    await engine.dispose()
