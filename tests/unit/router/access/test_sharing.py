"""Per-key limits shared by routers on one database (real SQLite and PostgreSQL): a key gets
its allowance once, whichever router it calls."""

from __future__ import annotations

import asyncio
import time

import pytest
from sqlalchemy import select

from llmlb.common.errors import RateLimited
from llmlb.router.access import sharing as limits_sharing
from llmlb.router.access.keys import ApiKey, KeyLimits
from llmlb.router.access.limits import KeyLimiter
from llmlb.router.access.sharing import LimitSharing
from llmlb.router.storage.db import key_usage, open_database


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


async def test_rows_of_a_router_gone_are_cleared_and_a_live_routers_kept(
    database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A row unchanged for STALE_ROWS_SECONDS of the reader's own (monotonic) time is a
    router gone: the reader deletes it. A live router rewrites its rows, whatever its clock."""
    monkeypatch.setattr(limits_sharing, "STALE_ROWS_SECONDS", 0.3)
    engine = await open_database(database_url)
    limited = key(requests_per_minute=10)
    alive, gone, here = KeyLimiter(), KeyLimiter(), KeyLimiter()
    alive_sharing, gone_sharing = LimitSharing(engine, alive), LimitSharing(engine, gone)
    here_sharing = LimitSharing(engine, here)
    admitted(alive, limited, 1)
    admitted(gone, limited, 1)
    await alive_sharing.share()
    await gone_sharing.share()  # its last word

    async def rows() -> set[str]:
        async with engine.connect() as connection:
            return {row.process for row in await connection.execute(select(key_usage))}

    deadline = time.monotonic() + 10
    while gone_sharing.process in await rows() and time.monotonic() < deadline:
        await alive_sharing.share()
        await here_sharing.share()
        await asyncio.sleep(0.05)
    assert await rows() == {alive_sharing.process}
    await engine.dispose()


async def test_a_huge_count_from_another_router_costs_at_most_a_minute(
    database_url: str,
) -> None:
    """Another router's count arrives all at once (a row that looks new): the key waits at
    most a minute for it, not the hours the count would take to refill."""
    engine = await open_database(database_url)
    limited = key(tokens_per_minute=100)
    here, there = KeyLimiter(), KeyLimiter()
    here_sharing, there_sharing = LimitSharing(engine, here), LimitSharing(engine, there)
    await here_sharing.share()
    here.admit(limited, "m", "r0", body_bytes=4)  # "here" has a bucket for the key
    there.admit(limited, "m", "r1", body_bytes=4)
    there.charge("key-1", 10_000, "r1")  # a hundred minutes' worth
    await there_sharing.share()
    await here_sharing.share()
    with pytest.raises(RateLimited) as refused:
        here.admit(limited, "m", "r2", body_bytes=4)
    assert int(refused.value.headers["Retry-After"]) <= 61
    await engine.dispose()
