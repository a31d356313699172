"""Live events for the dashboard's pages: what the router publishes, every open
``/api/events`` stream receives (a task's progress, the overview, the node table)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator
from typing import Any


class EventBus:
    """Fan-out of JSON-able events to every open ``/api/events`` stream."""

    def __init__(self) -> None:
        self._subscribers: set[asyncio.Queue[dict[str, Any]]] = set()

    @property
    def subscribers(self) -> int:
        return len(self._subscribers)

    def publish(self, event: dict[str, Any]) -> None:
        for queue in self._subscribers:
            if queue.qsize() < 1000:  # a stalled reader loses events, never memory
                queue.put_nowait(event)

    @contextlib.contextmanager
    def subscribe(self) -> Iterator[asyncio.Queue[dict[str, Any]]]:
        """A queue of the events published while the ``with`` block runs."""
        queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self._subscribers.add(queue)
        try:
            yield queue
        finally:
            self._subscribers.discard(queue)
