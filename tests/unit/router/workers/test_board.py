"""The workers' board (router.workers.board): two workers' views of one file, as two
processes map it."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from llmlb.common.errors import RateLimited
from llmlb.router.access.keys import KeyLimits
from llmlb.router.access.limits import Allowance, KeyLimiter
from llmlb.router.workers.board import Board, WorkerPlace


@pytest.fixture
def boards(tmp_path: Path) -> Iterator[list[Board]]:
    path = tmp_path / "board"
    Board.create(path, 3)
    made = [Board(WorkerPlace(index, 3, path)) for index in range(3)]
    yield made
    for board in made:
        board.close()


def test_each_worker_sees_what_the_others_have_in_flight_to_a_node(boards: list[Board]) -> None:
    first, second, third = boards
    first.publish("node-a", 2)
    second.publish("node-a", 1)
    second.publish("node-b", 4)
    assert (first.elsewhere("node-a"), second.elsewhere("node-a")) == (1, 2)
    assert third.elsewhere("node-a") == 3 and third.elsewhere("node-b") == 4
    assert first.elsewhere("node-c") == 0  # never met: nothing in flight
    first.publish("node-a", 0)
    assert third.elsewhere("node-a") == 1


def test_a_worker_started_again_has_nothing_in_flight_or_queued(boards: list[Board]) -> None:
    first, second, _ = boards
    second.publish("node-a", 3)
    second.publish_waiting(5)
    assert (first.elsewhere("node-a"), first.waiting_elsewhere()) == (3, 5)
    first.clear(1)  # (the supervisor's board, before it starts worker 1 again)
    assert (first.elsewhere("node-a"), first.waiting_elsewhere()) == (0, 0)


def test_what_a_key_used_through_one_worker_counts_once_in_the_others(
    boards: list[Board],
) -> None:
    first, second, third = boards
    second.publish_used("key", 3, 100)
    assert first.used_elsewhere("key") == (3, 100)
    assert first.used_elsewhere("key") == (0, 0)  # taken already
    second.publish_used("key", 5, 100)
    third.publish_used("key", 1, 7)
    assert first.used_elsewhere("key") == (3, 7)
    first.clear(1)  # worker 1 died; started again, it counts from zero
    second.publish_used("key", 2, 0)
    assert first.used_elsewhere("key") == (2, 0)


def test_two_workers_grant_a_burst_a_keys_allowance_once(boards: list[Board]) -> None:
    """Requests alternating over two workers, faster than any sharing round: together they
    let in the key's requests per minute, not that much each."""
    limiters = [KeyLimiter(), KeyLimiter()]
    for limiter, board in zip(limiters, boards, strict=False):
        limiter.board = board
    allowance = Allowance("key", KeyLimits(requests_per_minute=10))
    granted = 0
    for attempt in range(40):
        try:
            limiters[attempt % 2].admit(allowance, "m")
            granted += 1
        except RateLimited:
            pass
    assert granted == 10


def test_a_node_heard_by_one_worker_is_heard_by_all(boards: list[Board]) -> None:
    first, second, _ = boards
    assert second.heard_at("node-a") == float("-inf")
    first.hear("node-a", 100.5)
    second.hear("node-a", 99.0)  # (the latest word of any worker's counts)
    assert second.heard_at("node-a") == 100.5
    revision = second.fleet_revision()
    first.fleet_changed()
    assert second.fleet_revision() == revision + 1


def test_a_worker_started_later_takes_what_keys_used_before_it_as_counted(
    tmp_path: Path,
) -> None:
    """Use from before a worker's start was counted where it happened (its buckets start
    full, as a router's do); use since, by any worker, and keys first used since, count."""
    path = tmp_path / "board"
    Board.create(path, 2)
    first = Board(WorkerPlace(0, 2, path))
    first.publish_used("old-key", 50, 0)
    second = Board(WorkerPlace(1, 2, path))  # (a worker started again, say)
    assert second.used_elsewhere("old-key") == (0, 0)
    first.publish_used("old-key", 52, 0)
    first.publish_used("new-key", 4, 9)
    assert sorted(second.used_elsewhere_by_all()) == [("new-key", 4, 9), ("old-key", 2, 0)]
    assert second.used_elsewhere_by_all() == []  # taken already
    first.close()
    second.close()


def test_a_worker_names_its_tasks_within_their_column_and_the_same_after_a_restart() -> None:
    place = WorkerPlace(12, 16, Path("board"))
    owner = place.owner("0f6a8d8e-3b1c-4c55-9d3e-2a6f7b1c9e01")
    assert len(owner) <= 36 and owner == WorkerPlace(12, 16, Path("other")).owner(
        "0f6a8d8e-3b1c-4c55-9d3e-2a6f7b1c9e01"
    )
