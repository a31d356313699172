"""The router's queue and its choices, seen from outside: fake nodes behind a real router.

Each node takes one request at a time (LLMLB_NODE_MAX_CONCURRENCY=1), so the second request
for a model waits in the router's queue until capacity appears.
"""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest

from tests.fakenode import Behaviour, FakeNode
from tests.support import Process, node_token, start_router, wait_until

ROUTER_ENV = {
    "LLMLB_AUTO_DISTRIBUTE": "none",
    "LLMLB_NODE_MAX_CONCURRENCY": "1",
    "LLMLB_QUEUE_SIZE": "64",
    # Long enough for every queued request to be served in turn, short enough that a lost
    # wake-up shows as a 504 rather than a hung test.
    "LLMLB_QUEUE_TIMEOUT": "20",
    "LLMLB_HEARTBEAT_INTERVAL": "10",
}


@pytest.fixture(scope="module")
def router(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Process, str]]:
    home = tmp_path_factory.mktemp("queue-router")
    process = start_router(home, home, env=ROUTER_ENV)
    yield process, node_token(home)
    process.stop()


@pytest.fixture
def fakes() -> Iterator[list[FakeNode]]:
    """Nodes a test starts; stopped after it (the router forgets nothing, names are unique)."""
    started: list[FakeNode] = []
    yield started
    for fake in started:
        fake.stop()


def join(router: tuple[Process, str], fakes: list[FakeNode], name: str, model: str,
         delay: float = 0.0) -> FakeNode:  # fmt: skip
    fake = FakeNode(name, model=model, behaviour=Behaviour(delay=delay)).start()
    fake.join(router[0].url, router[1], interval=5)
    fakes.append(fake)
    return fake


def chat(url: str, model: str) -> httpx.Response:
    body = {"model": model, "messages": [{"role": "user", "content": "hi"}]}
    return httpx.post(url + "/v1/chat/completions", json=body, timeout=60)


def node_row(url: str, name: str) -> dict[str, Any]:
    rows = httpx.get(url + "/api/nodes").json()["data"]
    return next(row for row in rows if row["name"] == name)


def test_capacity_freed_for_one_model_reaches_its_waiters_not_the_other_models(
    router: tuple[Process, str], fakes: list[FakeNode]
) -> None:
    """Requests for model-b wait first in the queue; model-a's node frees up over and over.

    Every one of model-a's requests must be served while model-b's node is still busy with
    its first: a release must never be spent on a waiter that cannot use it.
    """
    url = router[0].url
    join(router, fakes, "queue-a", "model-a", delay=0.1)
    slow = join(router, fakes, "queue-b", "model-b", delay=8.0)
    finished: list[str] = []

    def timed(model: str) -> httpx.Response:
        response = chat(url, model)
        finished.append(model)
        return response

    with ThreadPoolExecutor(10) as pool:
        b_requests = [pool.submit(timed, "model-b")]
        wait_until(lambda: node_row(url, "queue-b")["router_in_flight"] == 1)
        b_requests += [pool.submit(timed, "model-b") for _ in range(2)]
        wait_until(lambda: "llmlb_queue_depth 2.0" in httpx.get(url + "/metrics").text)
        a_requests = [pool.submit(timed, "model-a") for _ in range(6)]
        a_answers = [f.result() for f in a_requests]
        slow.behaviour = Behaviour()
        b_answers = [f.result() for f in b_requests]
    assert [r.status_code for r in a_answers + b_answers] == [200] * 9
    assert finished[:6] == ["model-a"] * 6, finished
    assert {r.headers["x-llmlb-node"] for r in a_answers} == {"queue-a"}


def test_a_node_that_joins_serves_a_request_already_waiting(
    router: tuple[Process, str], fakes: list[FakeNode]
) -> None:
    """Capacity that appears without a release (a registration) wakes the queue."""
    url = router[0].url
    join(router, fakes, "slow-c", "model-c", delay=15)
    with ThreadPoolExecutor(2) as pool:
        busy = pool.submit(chat, url, "model-c")
        wait_until(lambda: node_row(url, "slow-c")["router_in_flight"] == 1)
        queued = pool.submit(chat, url, "model-c")
        wait_until(lambda: "llmlb_queue_depth 1.0" in httpx.get(url + "/metrics").text)
        join(router, fakes, "fresh-c", "model-c")
        answer = queued.result(timeout=10)  # well before the slow node's 15 s answer
        assert answer.status_code == 200
        assert answer.headers["x-llmlb-node"] == "fresh-c"
        fakes[0].behaviour = Behaviour()
        assert busy.result().status_code == 200


def test_nodes_list_shows_router_in_flight_beside_the_node_report(
    router: tuple[Process, str], fakes: list[FakeNode]
) -> None:
    url = router[0].url
    join(router, fakes, "report-d", "model-d", delay=1.0)
    with ThreadPoolExecutor(1) as pool:
        pending = pool.submit(chat, url, "model-d")
        wait_until(lambda: node_row(url, "report-d")["router_in_flight"] == 1)
        row = node_row(url, "report-d")
        assert row["active_requests"] == 0  # what the fake said in its last heartbeat
        assert pending.result().status_code == 200
    assert node_row(url, "report-d")["router_in_flight"] == 0


def test_attempts_count_only_nodes_actually_tried(
    router: tuple[Process, str], fakes: list[FakeNode]
) -> None:
    url = router[0].url
    dead = join(router, fakes, "dead-e", "model-e")
    join(router, fakes, "live-e", "model-e")
    dead.stop_serving()
    first = chat(url, "model-e")
    assert first.status_code == 200
    assert first.headers["x-llmlb-node"] == "live-e"
    # The first request may have met the dead node (2 attempts); it is then known dead and
    # every later request goes straight to the live one.
    assert first.headers["x-llmlb-attempts"] in {"1", "2"}
    for _ in range(3):
        again = chat(url, "model-e")
        assert again.headers["x-llmlb-node"] == "live-e"
        assert again.headers["x-llmlb-attempts"] == "1"
