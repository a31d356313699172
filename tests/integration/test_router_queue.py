"""The router's queue and its choices, seen from outside: fake nodes behind a real router.

Each node takes one request at a time (LLMLB_NODE_MAX_CONCURRENCY=1), so the second request
for a model waits in the router's queue until capacity appears.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
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
    "LLMLB_MAX_BUFFERED_ANSWER": "1MiB",
    "LLMLB_HEADER_TIMEOUT": "1",
    "LLMLB_BODY_TIMEOUT": "1",
}


@pytest.fixture(scope="module")
def router(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Process, str, Path]]:
    home = tmp_path_factory.mktemp("queue-router")
    process = start_router(home, home, env=ROUTER_ENV)
    yield process, node_token(home), home
    process.stop()


@pytest.fixture
def fakes() -> Iterator[list[FakeNode]]:
    """Nodes a test starts; stopped after it (the router forgets nothing, names are unique)."""
    started: list[FakeNode] = []
    yield started
    for fake in started:
        fake.stop()


def join(router: tuple[Process, str, Path], fakes: list[FakeNode], name: str, model: str,
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
    router: tuple[Process, str, Path], fakes: list[FakeNode]
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
    router: tuple[Process, str, Path], fakes: list[FakeNode]
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
    router: tuple[Process, str, Path], fakes: list[FakeNode]
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
    router: tuple[Process, str, Path], fakes: list[FakeNode]
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


def test_an_abandoned_stream_is_settled_at_once_with_its_usage(
    router: tuple[Process, str, Path], fakes: list[FakeNode]
) -> None:
    """The router closes the node's stream when the client leaves, and history counts what
    was generated up to then."""
    url = router[0].url
    fake = join(router, fakes, "stream-f", "model-f")
    fake.behaviour = Behaviour(chunks=500, chunk_delay=0.02)
    body = {"model": "model-f", "messages": [{"role": "user", "content": "hi"}], "stream": True}
    read = 0
    with httpx.stream("POST", url + "/v1/chat/completions", json=body, timeout=30) as response:
        request_id = response.headers["x-request-id"]
        for line in response.iter_lines():
            if '"content":"' in line:
                read += 1
            if read == 5:
                break
    wait_until(lambda: node_row(url, "stream-f")["router_in_flight"] == 0, timeout=5)
    wait_until(lambda: fake.streams_cancelled == 1, timeout=5)

    def row() -> dict[str, Any] | None:
        rows = httpx.get(url + "/api/requests", params={"model": "model-f"}).json()["data"]
        return next((r for r in rows if r["request_id"] == request_id), None)

    wait_until(lambda: row() is not None, timeout=5)
    recorded = row()
    assert recorded is not None
    assert recorded["status"] == 499
    assert 5 <= recorded["tokens_out"] < 500


def test_an_event_stream_client_that_leaves_is_cleaned_up(
    router: tuple[Process, str, Path],
) -> None:
    process = router[0]
    url = process.url

    def open_streams() -> float:
        for line in httpx.get(url + "/metrics").text.splitlines():
            if line.startswith("llmlb_event_streams "):
                return float(line.split()[1])
        raise AssertionError("no llmlb_event_streams metric")

    with httpx.stream("GET", url + "/api/events", timeout=30) as response:
        assert response.status_code == 200
        lines = response.iter_lines()  # held: dropping it would close the connection
        assert next(lines) == ": connected"
        wait_until(lambda: open_streams() == 1, timeout=5)
    wait_until(lambda: open_streams() == 0, timeout=5)
    log = process.log_path.read_text(errors="replace")
    assert "Traceback" not in log and "already running" not in log


def test_distributing_to_all_skips_offline_nodes_and_says_so(
    router: tuple[Process, str, Path], fakes: list[FakeNode]
) -> None:
    url = router[0].url
    join(router, fakes, "up-g", "model-g")
    gone = join(router, fakes, "gone-g", "model-g2")
    gone.stop_serving()
    assert chat(url, "model-g2").status_code == 502  # found dead: offline from now on
    wait_until(lambda: node_row(url, "gone-g")["status"] == "offline", timeout=5)
    answer = httpx.post(
        url + "/api/models/distribute", json={"model": "gemma-3-270m", "target": "all"}
    )
    assert answer.status_code == 202, answer.text
    body = answer.json()
    assert "gone-g" in {s["node"] for s in body["skipped"]}
    assert {s["status"] for s in body["skipped"] if s["node"] == "gone-g"} == {"offline"}
    targets = {t["node_id"] for t in body["tasks"]}
    assert node_row(url, "up-g")["id"] in targets
    assert node_row(url, "gone-g")["id"] not in targets


def llmlb_cli(*args: str, home: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "LLMLB_HOME": str(home)}
    return subprocess.run(
        [sys.executable, "-m", "llmlb", *args], capture_output=True, text=True, env=env,
        timeout=60,
    )  # fmt: skip


def test_the_cli_finds_the_router_running_from_its_home(
    router: tuple[Process, str, Path], tmp_path: Path
) -> None:
    found = llmlb_cli("status", "--json", home=router[2])
    assert found.returncode == 0, found.stderr
    assert router[0].url in found.stdout
    lost = llmlb_cli("status", home=tmp_path)
    assert lost.returncode == 1
    assert "no running router found" in lost.stderr
    assert "--router" in lost.stderr


def test_a_node_that_crashed_on_one_request_keeps_serving_the_next(
    router: tuple[Process, str, Path], fakes: list[FakeNode]
) -> None:
    """The node drops its connection after a 500; the router's next request must not meet
    that stale pooled connection as a dead node (it was a 503 for everyone until the next
    heartbeat)."""
    url = router[0].url
    fake = join(router, fakes, "crashy-h", "model-h")
    for _ in range(5):
        fake.behaviour = Behaviour(crash=True)
        assert chat(url, "model-h").status_code == 500
        fake.behaviour = Behaviour()
        answer = chat(url, "model-h")
        assert answer.status_code == 200, answer.text
        assert answer.headers["x-llmlb-node"] == "crashy-h"
    assert node_row(url, "crashy-h")["status"] == "ready"


def test_a_node_refusing_the_routers_key_moves_the_request_on(
    router: tuple[Process, str, Path], fakes: list[FakeNode]
) -> None:
    url = router[0].url
    join(router, fakes, "locked-i", "model-i").behaviour = Behaviour(status=401, delay=0.2)
    join(router, fakes, "open-i", "model-i", delay=0.2)
    with ThreadPoolExecutor(4) as pool:  # both nodes get requests (one at a time each)
        answers = list(pool.map(lambda _: chat(url, "model-i"), range(4)))
    assert [a.status_code for a in answers] == [200] * 4, [a.text for a in answers]
    assert {a.headers["x-llmlb-node"] for a in answers} == {"open-i"}


def test_an_answer_larger_than_the_router_holds_is_streamed_through(
    router: tuple[Process, str, Path], fakes: list[FakeNode]
) -> None:
    url = router[0].url
    join(router, fakes, "huge-j", "model-j").behaviour = Behaviour(padding=3 << 20)
    answer = chat(url, "model-j")
    assert answer.status_code == 200
    assert len(answer.json()["padding"]) == 3 << 20  # whole, though over the 1 MiB it holds


def test_a_client_that_gives_up_on_a_whole_answer_cancels_the_nodes_work(
    router: tuple[Process, str, Path], fakes: list[FakeNode]
) -> None:
    url = router[0].url
    fake = join(router, fakes, "slow-k", "model-k", delay=30)
    body = {"model": "model-k", "messages": [{"role": "user", "content": "hi"}]}
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(url + "/v1/chat/completions", json=body, timeout=1.0)
    # The router noticed, closed its request to the node, and the node stopped.
    wait_until(lambda: fake.requests_abandoned == 1, timeout=5)
    wait_until(lambda: node_row(url, "slow-k")["router_in_flight"] == 0, timeout=5)
    rows = httpx.get(url + "/api/requests", params={"model": "model-k"}).json()["data"]
    assert rows[0]["status"] == 499


def test_connections_that_send_nothing_or_drip_are_closed(
    router: tuple[Process, str, Path],
) -> None:
    host, port = router[0].url.removeprefix("http://").split(":")
    started = time.monotonic()
    idle = socket.create_connection((host, int(port)))
    drip = socket.create_connection((host, int(port)))
    drip.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n")  # and never the blank line
    for sock in (idle, drip):
        sock.settimeout(10)
        assert sock.recv(1024) == b""  # closed by the router (header timeout: 1 s here)
        sock.close()
    assert time.monotonic() - started < 8
    assert httpx.get(router[0].url + "/health").status_code == 200


def test_a_body_that_never_arrives_is_a_408(router: tuple[Process, str, Path]) -> None:
    host, port = router[0].url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port))) as sock:
        sock.settimeout(10)
        head = b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n"
        sock.sendall(head + b'Content-Type: application/json\r\n\r\n{"mo')
        answer = b""
        while b"}}" not in answer and (data := sock.recv(4096)):
            answer += data
    assert answer.startswith(b"HTTP/1.1 408"), answer[:200]
    assert b"request_timeout" in answer


def test_at_the_connection_cap_probes_still_answer(tmp_path: Path) -> None:
    env = {"LLMLB_MAX_CONNECTIONS": "16", "LLMLB_HEADER_TIMEOUT": "60"}
    capped = start_router(tmp_path, tmp_path, name="capped", env=env)
    try:
        host, port = capped.url.removeprefix("http://").split(":")
        idle = [socket.create_connection((host, int(port))) for _ in range(20)]
        with httpx.Client(base_url=capped.url) as http:
            wait_until(lambda: http.get("/v1/models").status_code == 503, 10)
            assert http.get("/health").status_code == 200
        for sock in idle:
            sock.close()
    finally:
        capped.stop()


def test_a_node_that_comes_back_gets_traffic_within_seconds_not_a_heartbeat_later(
    router: tuple[Process, str, Path], fakes: list[FakeNode]
) -> None:
    """Only the router's probe can bring it back here: its heartbeats have stopped."""
    url = router[0].url
    fake = join(router, fakes, "back-l", "model-l")
    fake.stop_heartbeats()
    fake.stop_serving()
    assert chat(url, "model-l").status_code == 502  # refused: unreachable from now on
    assert node_row(url, "back-l")["status"] == "offline"
    fake.serve_again()
    wait_until(lambda: node_row(url, "back-l")["status"] == "ready", timeout=10)
    assert chat(url, "model-l").status_code == 200
