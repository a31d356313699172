"""A download's live progress (what the API, the dashboard and the terminal show) and the
pacing that holds a transfer to a bandwidth cap."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Any


@dataclass
class Progress:
    """Where one download stands; ``changed`` is set (and replaced) on every update, so
    followers wake without polling."""

    model: str
    state: str = "pending"  # pending, downloading, verifying, completed, failed
    source: str = ""
    bytes_done: int = 0
    bytes_total: int | None = None
    speed: float = 0.0  # bytes/s, smoothed
    error: str | None = None
    started_at: float = field(default_factory=time.time)
    updated_at: float = field(default_factory=time.time)  # wall clock, for people
    touched_at: float = field(default_factory=time.monotonic)  # for intervals (clocks jump)
    changed: asyncio.Event = field(default_factory=asyncio.Event, repr=False)

    @property
    def eta_seconds(self) -> float | None:
        if not self.bytes_total or self.speed <= 0:
            return None
        return max(self.bytes_total - self.bytes_done, 0) / self.speed

    @property
    def percent(self) -> float | None:
        if not self.bytes_total:
            return None
        return round(100.0 * self.bytes_done / self.bytes_total, 1)

    def touch(self) -> None:
        self.updated_at, self.touched_at = time.time(), time.monotonic()
        self.changed.set()
        self.changed = asyncio.Event()

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "state": self.state,
            "source": self.source,
            "bytes_done": self.bytes_done,
            "bytes_total": self.bytes_total,
            "percent": self.percent,
            "speed_bytes_per_s": round(self.speed),
            "eta_seconds": None if self.eta_seconds is None else round(self.eta_seconds, 1),
            "error": self.error,
            "started_at": self.started_at,
            "updated_at": self.updated_at,
        }


def account_speed(progress: Progress, window_start: float, window_bytes: int) -> tuple[float, int]:
    elapsed = time.monotonic() - window_start
    if elapsed >= 0.5:
        rate = window_bytes / elapsed
        progress.speed = rate if progress.speed == 0 else 0.7 * progress.speed + 0.3 * rate
        window_start, window_bytes = time.monotonic(), 0
    progress.touch()
    return window_start, window_bytes


class Throttle:
    """Holds one transfer to ``bandwidth`` bytes/s.

    Counts only the bytes of this transfer: a resumed download's earlier bytes were paid
    for by an earlier transfer (counting them made a resume sleep for them again).
    """

    def __init__(self, bandwidth: int) -> None:
        self._bandwidth = bandwidth
        self._started = time.monotonic()
        self._bytes = 0

    async def took(self, size: int) -> None:
        self._bytes += size
        ahead = self._bytes / self._bandwidth - (time.monotonic() - self._started)
        if ahead > 0:
            await asyncio.sleep(ahead)
