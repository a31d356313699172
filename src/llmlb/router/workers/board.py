"""What a router's worker processes tell each other on every request: how many requests
each has in flight to each node, how many it has queued, and what each limited key (or
user) has used through it.

Everything else the workers share already crosses the database, as it does between
routers: the node table (a heartbeat lands on one worker; the others read it within
``FLEET_SYNC_SECONDS``), the keys. But in-flight counts and key usage change on every
request, too often for a database: a worker that counted only its own would send a node a
whole limit's worth of requests per worker, and grant a key its allowance once per worker
within a sharing round. So they live in a file every worker maps into memory: a row per
node (per key), a column per worker. Each worker writes only its own columns, so a count
needs no lock; a row is claimed once, under a file lock, by the first worker that meets its
node or key.

Between one worker's read and its write another may act on the same figure: a node can get
up to ``workers - 1`` requests past its limit at that instant (it queues them itself), and a
key as many past its allowance.
"""

from __future__ import annotations

import hashlib
import logging
import mmap
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

log = logging.getLogger(__name__)

KEY_BYTES = 16  # a row's name: a hash of a node's (a key's) id; all zeros: a free row
MAX_NODES = 4096  # nodes met since the router started (one never met counts 0)
MAX_SUBJECTS = 16384  # limited keys and users met since the router started
_FREE = bytes(KEY_BYTES)
_USED = 3  # figures per worker in a key's row
RECENT_NS = 60 * 10**9  # use met for the first time counts when it is this recent (a minute)


@dataclass(frozen=True)
class WorkerPlace:
    """Which worker this process is, of how many, and where their board is."""

    index: int
    workers: int
    board: Path


def _layout(workers: int) -> list[tuple[str, int, Literal["B", "i", "q"]]]:
    """The board's regions in order: (name, bytes, memoryview format)."""
    return [
        ("node_keys", MAX_NODES * KEY_BYTES, "B"),
        ("in_flight", MAX_NODES * workers * 4, "i"),  # row x worker
        ("heard", MAX_NODES * 8, "q"),  # a node's last heartbeat, heard by any worker (ns)
        ("subject_keys", MAX_SUBJECTS * KEY_BYTES, "B"),
        # row x worker x (requests, tokens, when last written: monotonic ns, one clock for all)
        ("used", MAX_SUBJECTS * workers * _USED * 8, "q"),
        ("waiting", workers * 4, "i"),
        ("generation", workers * 4, "i"),  # +1 each time a worker is started again
        ("fleet_revision", 8, "q"),  # +1 as a worker hears a node join or change its models
    ]


class _Rows:
    """Named rows of a table on the board: found or claimed by name, then cached."""

    def __init__(self, fd: int, keys: memoryview[int], size: int, what: str) -> None:
        self._fd, self._keys, self._size, self._what = fd, keys, size, what
        self._rows: dict[str, int] = {}  # name -> row (-1: the table was full)

    def row(self, name: str) -> int:
        row = self._rows.get(name)
        if row is None:
            row = self._rows[name] = self._claim(name)
        return row

    def _claim(self, name: str) -> int:
        """The name's row: found, or taken from the free ones (open addressing from its
        hash), under the board's file lock so that two workers never take one row for two
        names."""
        import fcntl  # (POSIX: workers are; run_workers refuses elsewhere)

        key = hashlib.blake2b(name.encode(), digest_size=KEY_BYTES).digest()
        start = int.from_bytes(key[:4], "little") % self._size
        fcntl.flock(self._fd, fcntl.LOCK_EX)
        try:
            for probe in range(self._size):
                row = (start + probe) % self._size
                held = self._keys[row * KEY_BYTES : (row + 1) * KEY_BYTES]
                if held == key:
                    return row
                if held == _FREE:
                    held[:] = key
                    return row
        finally:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
        log.warning("the workers' board is full (%d %s): %s is counted by each worker alone",
                    self._size, self._what, name)  # fmt: skip
        return -1


class Board:
    def __init__(self, place: WorkerPlace) -> None:
        self.workers, self.me = place.workers, place.index
        self._fd = os.open(place.board, os.O_RDWR)
        self._map = mmap.mmap(self._fd, board_bytes(self.workers))
        self._views: dict[str, memoryview[int]] = {}
        offset = 0
        whole = memoryview(self._map)
        for name, size, form in _layout(self.workers):
            self._views[name] = whole[offset : offset + size].cast(form)
            offset += size
        whole.release()
        self._in_flight = self._views["in_flight"]
        self._used = self._views["used"]
        self._waiting = self._views["waiting"]
        self._generation = self._views["generation"]
        self._heard = self._views["heard"]
        self._fleet_revision = self._views["fleet_revision"]
        self._nodes = _Rows(self._fd, self._views["node_keys"], MAX_NODES, "nodes")
        self._subjects = _Rows(self._fd, self._views["subject_keys"], MAX_SUBJECTS, "keys")
        # What each other worker had used of each key as this one last looked, and in which
        # of its lives: (subject, worker) -> (generation, requests, tokens).
        self._seen: dict[tuple[str, int], tuple[int, int, int]] = {}

    @staticmethod
    def create(path: Path, workers: int) -> None:
        """A board of zeros for ``workers`` workers (the supervisor, before they start)."""
        with path.open("wb") as file:
            file.truncate(board_bytes(workers))

    # -- requests in flight to nodes -------------------------------------------------------

    def publish(self, node_id: str, in_flight: int) -> None:
        """This worker's requests in flight to the node now."""
        row = self._nodes.row(node_id)
        if row >= 0:
            self._in_flight[row * self.workers + self.me] = in_flight

    def elsewhere(self, node_id: str) -> int:
        """The other workers' requests in flight to the node."""
        row = self._nodes.row(node_id)
        if row < 0:
            return 0
        start = row * self.workers
        counts = self._in_flight[start : start + self.workers]
        return sum(counts) - counts[self.me]

    # -- nodes heard ---------------------------------------------------------------------

    def hear(self, node_id: str, at: float) -> None:
        """This worker heard the node at ``at`` (monotonic seconds: one clock for all the
        workers). A node heartbeats over one connection, so to one worker; the others would
        hear of it only as the database's row changes, seconds later."""
        row = self._nodes.row(node_id)
        if row >= 0:
            self._heard[row] = max(self._heard[row], int(at * 1e9))

    def heard_at(self, node_id: str) -> float:
        """When any worker last heard the node (monotonic seconds; -inf: never)."""
        row = self._nodes.row(node_id)
        heard = self._heard[row] if row >= 0 else 0
        return heard / 1e9 if heard else float("-inf")

    def fleet_changed(self) -> None:
        """A node joined or changed what it serves: a worker that finds no node for a model
        reads the node table before it says so."""
        self._fleet_revision[0] += 1

    def fleet_revision(self) -> int:
        return self._fleet_revision[0]

    # -- requests queued -------------------------------------------------------------------

    def publish_waiting(self, waiting: int) -> None:
        self._waiting[self.me] = waiting

    def waiting_elsewhere(self) -> int:
        return sum(self._waiting) - self._waiting[self.me]

    # -- what keys used --------------------------------------------------------------------

    def publish_used(self, subject: str, requests: int, tokens: int) -> None:
        """What this worker has let the key (user) use since it started, in all."""
        row = self._subjects.row(subject)
        if row >= 0:
            at = (row * self.workers + self.me) * _USED
            self._used[at] = requests
            self._used[at + 1] = tokens
            self._used[at + 2] = time.monotonic_ns()

    def used_elsewhere(self, subject: str) -> tuple[int, int]:
        """What the other workers let the key use since this one last asked: (requests,
        tokens). The first time, what they used in the last minute (their figures older
        than that are spent allowance); a worker started again counts from zero."""
        row = self._subjects.row(subject)
        if row < 0:
            return 0, 0
        requests = tokens = 0
        for worker in range(self.workers):
            if worker == self.me:
                continue
            at = (row * self.workers + worker) * _USED
            life, used, spent = self._generation[worker], self._used[at], self._used[at + 1]
            before = self._seen.get((subject, worker))
            if before is None or before[0] != life:  # first seen, or a new life
                recent = time.monotonic_ns() - self._used[at + 2] < RECENT_NS
                before = (life, 0, 0) if recent or before is not None else (life, used, spent)
            if (used, spent) != before[1:]:
                requests += used - before[1]
                tokens += spent - before[2]
            self._seen[(subject, worker)] = (life, used, spent)
        return requests, tokens

    # -- a worker gone ---------------------------------------------------------------------

    def clear(self, worker: int) -> None:
        """Forget what a worker that died had in flight, queued and counted (its requests
        died with it): the supervisor, before it starts the worker again."""
        for row in range(MAX_NODES):
            self._in_flight[row * self.workers + worker] = 0
        for row in range(MAX_SUBJECTS):
            at = (row * self.workers + worker) * _USED
            self._used[at] = self._used[at + 1] = self._used[at + 2] = 0
        self._waiting[worker] = 0
        self._generation[worker] += 1

    def close(self) -> None:
        for view in self._views.values():
            view.release()
        self._map.close()
        os.close(self._fd)


def board_bytes(workers: int) -> int:
    return sum(size for _, size, _ in _layout(workers))
