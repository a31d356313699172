"""Requests waiting for capacity: one bounded line for nodes and cloud providers alike.

A request that finds every node (or a provider's every slot) busy joins a ``WaitLine``: a
full line refuses it at once (429 with ``Retry-After``), and a place in it has a deadline
(``queue_timeout``, then a 504). What a waiter waits *for* differs: a node request ranks the
fleet again whenever ``Capacity`` says something changed, a provider's gate hands a slot to
the next in order; the bound and the deadline are the same.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from llmlb.common.errors import Overloaded, UpstreamTimeout

if TYPE_CHECKING:
    from llmlb.router.workers.board import Board


class WaitLine:
    """At most ``size`` waiting at once, each for at most ``timeout`` seconds; ``on_depth``
    hears every change of the number waiting (a metric). With worker processes, ``board``:
    the line is one for all of them (``size`` counts every worker's waiters)."""

    def __init__(self, size: int, timeout: float,
                 on_depth: Callable[[int], None] = lambda depth: None,
                 board: Board | None = None) -> None:  # fmt: skip
        self.size = size
        self.timeout = timeout
        self.waiting = 0
        self._on_depth = on_depth
        self._board = board

    def join(self, refusal: str) -> WaitPlace:
        """A place in the line; ``refusal`` is the 429's message when the line is full."""
        elsewhere = self._board.waiting_elsewhere() if self._board is not None else 0
        if self.waiting + elsewhere >= self.size:
            raise Overloaded(refusal, headers={"Retry-After": "1"})
        self._count(1)
        return WaitPlace(self, time.monotonic() + self.timeout)

    def _left(self) -> None:
        self._count(-1)

    def _count(self, change: int) -> None:
        self.waiting += change
        if self._board is not None:
            self._board.publish_waiting(self.waiting)
        self._on_depth(self.waiting)


class WaitPlace:
    """A place in a ``WaitLine``, held until ``leave`` (call it once, in a ``finally``)."""

    __slots__ = ("_line", "deadline")

    def __init__(self, line: WaitLine, deadline: float) -> None:
        self._line = line
        self.deadline = deadline

    def remaining(self) -> float:
        return self.deadline - time.monotonic()

    def timed_out(self, message: str) -> UpstreamTimeout:
        return UpstreamTimeout(message, code="queue_timeout")

    def leave(self) -> None:
        self._line._left()


class Capacity:
    """Wakes every queued node request when capacity may have appeared.

    A slot freed on one node can serve a request for a model another waiter does not want,
    and capacity also appears without any release (a node registers, turns ready, is
    approved or undrained, loads a model): so every change wakes every waiter, and each one
    ranks the fleet again. Waiters are bounded by the line, so this stays cheap.
    """

    def __init__(self) -> None:
        self._event = asyncio.Event()

    def changed(self) -> None:
        self._event.set()
        self._event = asyncio.Event()

    async def wait(self, seconds: float) -> None:
        """Until the next change or ``seconds``, whichever comes first."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(seconds):
                await self._event.wait()
