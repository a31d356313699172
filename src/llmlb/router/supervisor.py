"""The router's periodic jobs, run by one supervisor with one error policy.

Each job is a row (name, interval, what it runs, which part owns it): the table in
``RouterService.jobs`` is the list of everything the router does on its own. A job that fails
is logged once when it starts failing (with the traceback) and once when it works again, not on
every round: a database away for a minute is two lines, and the job keeps its interval.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Job:
    name: str  # what it does, as the log says it: "reading the node table"
    every: float  # seconds between the end of one round and the start of the next
    run: Callable[[], Awaitable[None]]
    owner: str  # the part whose state it keeps: "fleet", "access", ...
    at_start: bool = False  # a first round at once, not after one interval


class Trouble:
    """A job's failures, logged when they start and when they end."""

    def __init__(self, what: str) -> None:
        self._what = what
        self._since: float | None = None

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 _trace: object) -> bool:  # fmt: skip
        if kind is None:
            if self._since is not None:
                log.info("%s works again after %.0f s", self._what, time.monotonic() - self._since)
                self._since = None
            return False
        if not issubclass(kind, Exception):
            return False  # cancellation goes on
        if self._since is None:
            self._since = time.monotonic()
            log.error("%s failed; retrying quietly until it works", self._what, exc_info=error)
        return True


class Supervisor:
    def __init__(self, jobs: list[Job]) -> None:
        self.jobs = jobs
        self._running: list[asyncio.Task[None]] = []

    def start(self) -> None:
        self._running = [
            asyncio.create_task(self._keep(job), name=f"{job.owner}: {job.name}")
            for job in self.jobs
        ]

    async def stop(self) -> None:
        for task in self._running:
            task.cancel()
        for task in self._running:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._running = []

    @staticmethod
    async def _keep(job: Job) -> None:
        trouble = Trouble(job.name)
        if not job.at_start:
            await asyncio.sleep(job.every)
        while True:
            with trouble:
                await job.run()
            await asyncio.sleep(job.every)
