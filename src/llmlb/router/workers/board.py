"""What a router's worker processes tell each other on every request: how many requests
each has in flight to each node, how many it has queued, what each limited key (or user)
has used through it, and when each node was last heard.

Everything else the workers share already crosses the database, as it does between
routers: the node table (a heartbeat lands on one worker; the others read it within
``FLEET_SYNC_SECONDS``), the keys. But in-flight counts and key usage change on every
request, too often for a database: a worker that counted only its own would send a node a
whole limit's worth of requests per worker, and grant a key its allowance once per worker
within a sharing round. So they live in a file every worker maps into memory: a row per
node (per key), a column per worker. Each worker writes only its own columns, so no write
needs a lock; a row is claimed once, under a file lock, by the first worker that meets its
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

NODE_KEY_BYTES = 16  # a node's row: a hash of its id (all zeros: a free row)
SUBJECT_BYTES = 64  # a key's (user's) row: its id itself, so that a scan can name it
MAX_NODES = 4096  # nodes met since the router started (one never met counts 0)
MAX_SUBJECTS = 16384  # limited keys and users met since the router started
_USED = 3  # figures per worker in a key's row: requests, tokens, when written (ns)


@dataclass(frozen=True)
class WorkerPlace:
    """Which worker this process is, of how many, and where their board is."""

    index: int
    workers: int
    board: Path

    def owner(self, router_id: str) -> str:
        """The worker's name where a router's name goes (tasks' owners: 36 characters at
        most), the same across its restarts."""
        return f"{router_id.replace('-', '')[:32]}:{self.index}"

    @staticmethod
    def siblings(router_id: str) -> str:
        """What every worker of the router begins its usage rows' process ids with (48 bits
        of its id: router.access.sharing tells its workers' rows from other routers')."""
        return router_id.replace("-", "")[:12] + ":"


def _layout(workers: int) -> list[tuple[str, int, Literal["B", "i", "q"]]]:
    """The board's regions in order: (name, bytes, memoryview format)."""
    return [
        ("node_keys", MAX_NODES * NODE_KEY_BYTES, "B"),
        ("in_flight", MAX_NODES * workers * 4, "i"),  # row x worker
        ("heard", MAX_NODES * workers * 8, "q"),  # row x worker: last heartbeat heard (ns)
        ("subject_keys", MAX_SUBJECTS * SUBJECT_BYTES, "B"),
        ("used", MAX_SUBJECTS * workers * _USED * 8, "q"),  # row x worker x _USED
        ("claimed", MAX_SUBJECTS * 4, "i"),  # the subjects' rows in the order claimed
        ("claimed_count", 8, "q"),
        ("waiting", workers * 4, "i"),
        # +2 each time a worker is started again (odd while its figures are being cleared)
        ("generation", workers * 8, "q"),
        ("fleet_revision", workers * 8, "q"),  # +1 as a worker hears a node join or change
    ]


def board_bytes(workers: int) -> int:
    return sum(size for _, size, _ in _layout(workers))


class _Rows:
    """Named rows of a table on the board: found or claimed by name, then cached."""

    def __init__(self, board: Board, keys: memoryview[int], width: int, size: int,
                 what: str, hashed: bool) -> None:  # fmt: skip
        self._board, self._keys, self._width, self._size = board, keys, width, size
        self._what, self._hashed = what, hashed
        self._rows: dict[str, int] = {}  # name -> row (-1: the table was full)

    def row(self, name: str) -> int:
        row = self._rows.get(name)
        if row is None:
            row = self._rows[name] = self._claim(name)
        return row

    def name(self, row: int) -> str:
        return bytes(self._keys[row * self._width : (row + 1) * self._width]).rstrip(b"\0").decode()

    def _claim(self, name: str) -> int:
        """The name's row: found, or taken from the free ones (open addressing from its
        hash), under the board's file lock so that two workers never take one row for two
        names."""
        digest = hashlib.blake2b(name.encode(), digest_size=16).digest()
        key = digest if self._hashed else name.encode()
        if len(key) > self._width:  # (ids are shorter; a longer one is shared by no one)
            return -1
        key = key.ljust(self._width, b"\0")
        start = int.from_bytes(digest[:4], "little") % self._size
        with self._board.locked():
            for probe in range(self._size):
                row = (start + probe) % self._size
                held = self._keys[row * self._width : (row + 1) * self._width]
                if held == key:
                    return row
                if not any(held):
                    held[:] = key
                    self._board.claimed(self, row)
                    return row
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
        views = self._views
        self._in_flight, self._heard, self._used = views["in_flight"], views["heard"], views["used"]
        self._claimed, self._claimed_count = views["claimed"], views["claimed_count"]
        self._waiting, self._generation = views["waiting"], views["generation"]
        self._fleet_revision = views["fleet_revision"]
        self._nodes = _Rows(self, views["node_keys"], NODE_KEY_BYTES, MAX_NODES, "nodes", True)
        self._subjects = _Rows(self, views["subject_keys"], SUBJECT_BYTES, MAX_SUBJECTS, "keys",
                               hashed=False)  # fmt: skip
        # What each other worker had used of each key as this one last looked, and in which
        # of its lives: (row, worker) -> (generation, requests, tokens). Rows claimed before
        # this worker started are taken as they are now (use from before its start was
        # counted where it happened); rows claimed since count from zero.
        self._seen: dict[tuple[int, int], tuple[int, int, int]] = {}
        self._listed = 0  # claimed rows taken into ``_seen``
        self._take_in_claimed(counted=False)

    @staticmethod
    def create(path: Path, workers: int) -> None:
        """A board of zeros for ``workers`` workers (the supervisor, before they start)."""
        with path.open("wb") as file:
            file.truncate(board_bytes(workers))

    def locked(self) -> _FileLock:
        return _FileLock(self._fd)

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

    # -- nodes heard -----------------------------------------------------------------------

    def hear(self, node_id: str, at: float) -> None:
        """This worker heard the node at ``at`` (monotonic seconds: one clock for all the
        workers). A node heartbeats over one connection, so to one worker; the others would
        hear of it only as the database's row changes, seconds later."""
        row = self._nodes.row(node_id)
        if row >= 0:
            self._heard[row * self.workers + self.me] = int(at * 1e9)

    def heard_at(self, node_id: str) -> float:
        """When any worker last heard the node (monotonic seconds; -inf: never)."""
        row = self._nodes.row(node_id)
        if row < 0:
            return float("-inf")
        heard = max(self._heard[row * self.workers : (row + 1) * self.workers])
        return heard / 1e9 if heard else float("-inf")

    def fleet_changed(self) -> None:
        """A node joined or changed what it serves: a worker that finds no node for a model
        reads the node table before it says so."""
        self._fleet_revision[self.me] += 1

    def fleet_revision(self) -> int:
        return sum(self._fleet_revision)

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
        """What the other workers let the key use since this one last looked: (requests,
        tokens)."""
        row = self._subjects.row(subject)
        if row < 0:
            return 0, 0
        self._take_in_claimed(counted=True)
        return self._growth(row)

    def used_elsewhere_by_all(self) -> list[tuple[str, int, int]]:
        """What the other workers let every key use since this one last looked (each
        second: so that what a key used is taken within the minute it counts for, even by a
        worker the key's client does not call)."""
        self._take_in_claimed(counted=True)
        grown = []
        for index in range(self._listed):
            row = self._claimed[index]
            requests, tokens = self._growth(row)
            if requests or tokens:
                grown.append((self._subjects.name(row), requests, tokens))
        return grown

    def _take_in_claimed(self, counted: bool) -> None:
        """Rows claimed since this worker last looked: from zero (``counted``), or as they
        are now (at its start)."""
        count = self._claimed_count[0]
        for index in range(self._listed, count):
            row = self._claimed[index]
            for worker in range(self.workers):
                if worker != self.me:
                    at = (row * self.workers + worker) * _USED
                    now = (0, 0) if counted else (self._used[at], self._used[at + 1])
                    self._seen[(row, worker)] = (self._generation[worker], *now)
        self._listed = count

    def _growth(self, row: int) -> tuple[int, int]:
        requests = tokens = 0
        for worker in range(self.workers):
            life = self._generation[worker]
            if worker == self.me or life % 2:  # (odd: being cleared; looked at next time)
                continue
            at = (row * self.workers + worker) * _USED
            used, spent = self._used[at], self._used[at + 1]
            before = self._seen.get((row, worker), (life, 0, 0))
            if before[0] != life:  # a new life: what the last one used was taken already
                before = (life, 0, 0)
            requests += used - before[1]
            tokens += spent - before[2]
            self._seen[(row, worker)] = (life, used, spent)
        return requests, tokens

    def claimed(self, rows: _Rows, row: int) -> None:
        """(Under the lock.) A subject's row was claimed: listed, for the others' scans."""
        if rows is self._subjects:
            count = self._claimed_count[0]
            self._claimed[count] = row
            self._claimed_count[0] = count + 1

    # -- a worker gone ---------------------------------------------------------------------

    def clear(self, worker: int) -> None:
        """Forget what a worker that died had in flight, queued and counted (its requests
        died with it): the supervisor, before it starts the worker again. Its generation is
        odd while this runs, so that no reader takes the zeros for usage given back."""
        self._generation[worker] += 1
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


class _FileLock:
    """The board's lock between processes (for claiming rows)."""

    def __init__(self, fd: int) -> None:
        self._fd = fd

    def __enter__(self) -> None:
        import fcntl  # (POSIX: workers are; run_workers refuses elsewhere)

        fcntl.flock(self._fd, fcntl.LOCK_EX)

    def __exit__(self, *exc: object) -> None:
        import fcntl

        fcntl.flock(self._fd, fcntl.LOCK_UN)
