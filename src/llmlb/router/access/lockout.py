"""Failed logins, counted per user name and per client address by every router on a database.

After ``allowed`` failures within ``window`` seconds, logins for that name or from that
address wait: 30 s, doubling with each further failure, at most 15 minutes. The failures
are rows in ``login_failures``, so that five tries on one router and five on another are ten,
not twice five. While the database is away, each router counts in its own memory.

Addresses are counted as ``client_key`` spells them: one address, one count, whatever its
spelling (``::ffff:10.0.0.1`` is ``10.0.0.1``); an IPv6 client counts by its /64, which is
what one host is usually given.
"""

from __future__ import annotations

import asyncio
import functools
import ipaddress
import re
import time

from sqlalchemy import delete, func, insert, select
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncEngine

from llmlb.router.storage.db import login_failures

FIRST_LOCK_SECONDS = 30.0
MAX_LOCK_SECONDS = 900.0
_DOTTED = re.compile(r"[0-9]{1,3}(\.[0-9]{1,3}){3}")
_PURGE_EVERY = 60.0  # seconds between deletions of failures older than the window


@functools.lru_cache(maxsize=4096)  # asked on every request; clients come back
def normalised_address(host: str | None) -> str:
    """One spelling per address: IPv4-mapped IPv6 as IPv4, no leading zeros, IPv6 compressed
    and in lower case; anything else (a name), lower case and bounded."""
    if not host:
        return "-"
    text = host.strip().strip("[]")
    if _DOTTED.fullmatch(text):  # Python refuses leading zeros; they are still the address
        text = ".".join(str(int(part)) for part in text.split("."))
    try:
        address = ipaddress.ip_address(text.split("%", 1)[0])
    except ValueError:
        return text.lower()[:64]
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return str(address)


def client_key(host: str | None) -> str:
    """What a client's failures are counted under: its address, or its /64 for IPv6."""
    address = normalised_address(host)
    if ":" in address:
        try:
            return "addr:" + str(ipaddress.ip_network(f"{address}/64", strict=False))
        except ValueError:
            pass
    return "addr:" + address


def _lock(failures: int, allowed: int) -> float:
    over = failures - allowed
    if over < 0:
        return 0.0
    return float(min(FIRST_LOCK_SECONDS * 2 ** min(over, 10), MAX_LOCK_SECONDS))


class LoginThrottle:
    def __init__(self, engine: AsyncEngine, allowed: int = 5, window: float = 900.0) -> None:
        self._engine = engine
        self._allowed = allowed
        self._window = window
        self._local = _LocalFailures(allowed, window)
        self._purged_at = 0.0
        self._one_at_a_time = asyncio.Lock()

    async def attempt(self, *who: str) -> float:
        """An attempt for ``who``, counted as failed before it is checked (``succeeded``
        forgives it), so that a burst of parallel guesses cannot all slip in before the
        first one fails; or, while locked out, the seconds to wait (nothing counted)."""
        async with self._one_at_a_time:  # this router's attempts: checked and counted in turn
            wait = await self.wait(*who)
            if wait <= 0:
                await self.failed(*who)
            return wait

    async def wait(self, *who: str) -> float:
        """Seconds until a login for ``who`` (names and addresses) is allowed again."""
        now = time.time()
        column = login_failures.c
        try:
            async with self._engine.connect() as connection:
                rows = await connection.execute(
                    select(column.who, func.count(), func.max(column.at))
                    .where(column.who.in_(who), column.at > now - self._window)
                    .group_by(column.who)
                )  # fmt: skip
                counted = [(int(count), float(latest)) for _, count, latest in rows]
        except (SQLAlchemyError, OSError):
            return self._local.wait(*who)
        longest = max((latest + _lock(count, self._allowed) - now for count, latest in counted),
                      default=0.0)  # fmt: skip
        return max(longest, 0.0)

    async def failed(self, *who: str) -> None:
        now = time.time()
        self._local.failed(*who)
        try:
            async with self._engine.begin() as connection:
                await connection.execute(
                    insert(login_failures), [{"who": name, "at": now} for name in who]
                )
                if now - self._purged_at > _PURGE_EVERY:
                    self._purged_at = now
                    old = login_failures.c.at < now - self._window
                    await connection.execute(delete(login_failures).where(old))
        except (SQLAlchemyError, OSError):
            pass  # counted in memory meanwhile

    async def succeeded(self, *who: str) -> None:
        self._local.succeeded(*who)
        try:
            async with self._engine.begin() as connection:
                await connection.execute(
                    delete(login_failures).where(login_failures.c.who.in_(who))
                )
        except (SQLAlchemyError, OSError):
            pass


class _LocalFailures:
    """The same count in this router's memory, for while the database is away (bounded:
    the oldest entries go first)."""

    def __init__(self, allowed: int, window: float, max_entries: int = 10_000) -> None:
        self._allowed = allowed
        self._window = window
        self._max_entries = max_entries
        self._failures: dict[str, list[float]] = {}

    def wait(self, *who: str) -> float:
        now = time.monotonic()
        longest = 0.0
        for key in who:
            recent = [t for t in self._failures.get(key, ()) if now - t < self._window]
            if recent:
                longest = max(longest, recent[-1] + _lock(len(recent), self._allowed) - now)
        return max(longest, 0.0)

    def failed(self, *who: str) -> None:
        now = time.monotonic()
        for key in who:
            recent = [t for t in self._failures.pop(key, ()) if now - t < self._window]
            self._failures[key] = [*recent[-20:], now]
        while len(self._failures) > self._max_entries:
            del self._failures[next(iter(self._failures))]

    def succeeded(self, *who: str) -> None:
        for key in who:
            self._failures.pop(key, None)
