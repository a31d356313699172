"""``llmlb serve --workers 2``: two router processes on one port answer as one router. A
node's slots and the queue for them, a key's allowance and the Prometheus counts are the
router's, not each worker's; a worker that dies is replaced, and a stop stops them all
after their requests.

The kernel hands each new connection to one of the workers; the tests learn which from
``/health`` and keep using that connection (keep-alive), so that every check has requests
on both workers."""

from __future__ import annotations

import base64
import contextlib
import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import psutil
import pytest

from tests.fakehub import hub_entry
from tests.fakenode import FakeNode
from tests.postgres import PostgresServer
from tests.support import Process, node_token, start_router, wait_until

BODY = {"model": "fake-model", "messages": [{"role": "user", "content": "hi"}]}
ADMIN = ("admin", "workers-admin-pass")


def connections_by_worker(url: str, each: int) -> dict[int, list[http.client.HTTPConnection]]:
    """``each`` keep-alive connections to every one of two workers (one that is starting
    takes none until it serves)."""
    where = urlsplit(url)
    found: dict[int, list[http.client.HTTPConnection]] = {0: [], 1: []}

    def connect() -> bool:
        connection = http.client.HTTPConnection(where.hostname or "", where.port, timeout=30)
        worker = int(ask(connection, "GET", "/health")[1]["worker"])
        if len(found[worker]) < each:
            found[worker].append(connection)
        else:
            connection.close()
        return min(len(held) for held in found.values()) >= each

    wait_until(connect, 60, step=0.01)
    return found


def ask(
    connection: http.client.HTTPConnection, method: str, path: str,
    body: object = None, headers: dict[str, str] | None = None,
) -> tuple[int, dict[str, Any]]:  # fmt: skip
    payload = json.dumps(body).encode() if body is not None else None
    connection.request(method, path, payload,
                       {"content-type": "application/json", **(headers or {})})  # fmt: skip
    answer = connection.getresponse()
    text = answer.read()
    return answer.status, json.loads(text) if text.startswith(b"{") else {"text": text.decode()}


def serves_the_model(connection: http.client.HTTPConnection, headers: dict[str, str]) -> bool:
    status, models = ask(connection, "GET", "/v1/models", headers=headers)
    return status == 200 and any(m["id"] == "fake-model" for m in models["data"])


def worker_pids(supervisor: Process) -> set[int]:
    # (multiprocessing's resource tracker is a child too: the workers are the spawned ones)
    pids = set()
    for child in psutil.Process(supervisor.proc.pid).children():
        with contextlib.suppress(psutil.NoSuchProcess):  # (one that ended as we looked)
            if "spawn_main" in " ".join(child.cmdline()):
                pids.add(child.pid)
    return pids


@pytest.fixture
def fake() -> Iterator[FakeNode]:
    node = FakeNode("shared").start()
    yield node
    node.stop()


def test_two_workers_share_a_nodes_slots_its_queue_and_their_metrics(
    fake: FakeNode, tmp_path: Path
) -> None:
    env = {"LLMLB_AUTO_DISTRIBUTE": "none", "LLMLB_NODE_MAX_CONCURRENCY": "2"}
    router = start_router(tmp_path, tmp_path, "--workers", "2", "--no-auth", env=env)
    try:
        fake.join(router.url, node_token(tmp_path))
        fake.behaviour.delay = 0.4
        by_worker = connections_by_worker(router.url, 3)
        # The worker that heard the node's registration serves it at once; the other reads
        # the node table within its sync (2 s).
        for held in by_worker.values():
            wait_until(lambda held=held: serves_the_model(held[0], {}))  # type: ignore[misc]
        statuses: list[int] = []

        def send(connection: http.client.HTTPConnection) -> None:
            statuses.append(ask(connection, "POST", "/v1/chat/completions", BODY)[0])

        senders = [threading.Thread(target=send, args=(c,))
                   for held in by_worker.values() for c in held]  # fmt: skip
        for sender in senders:
            sender.start()
        for sender in senders:
            sender.join(60)
        assert statuses == [200] * 6
        # The node's limit is 2. Each worker alone would have sent it 2 of its 3 at once
        # (4); together they keep to 2, but for the instant two workers choose at once.
        assert fake.requests == 6 and fake.peak_in_flight <= 3, fake.peak_in_flight
        # Whichever worker answers a scrape counts every worker's requests.
        for held in by_worker.values():
            text = str(ask(held[0], "GET", "/metrics")[1]["text"])
            ok = 'status="200"'
            counted = [line for line in text.splitlines()
                       if line.startswith("llmlb_requests_total{") and ok in line]  # fmt: skip
            answered = sum(float(line.rsplit(" ", 1)[1]) for line in counted)
            assert answered == 6, text
    finally:
        router.stop()


def test_two_workers_grant_a_key_its_allowance_once(fake: FakeNode, tmp_path: Path) -> None:
    env = {"LLMLB_AUTO_DISTRIBUTE": "none", "LLMLB_ADMIN_PASSWORD": ADMIN[1]}
    router = start_router(tmp_path, tmp_path, "--workers", "2", env=env)
    try:
        fake.join(router.url, node_token(tmp_path))
        by_worker = connections_by_worker(router.url, 1)
        basic = {"authorization": "Basic " + base64.b64encode(":".join(ADMIN).encode()).decode()}
        limits = {"limits": {"requests_per_minute": 10}}
        status, made = ask(by_worker[0][0], "POST", "/api/keys", limits, basic)
        assert status == 201
        key = {"authorization": f"Bearer {made['secret']}"}
        for held in by_worker.values():
            wait_until(lambda held=held: serves_the_model(held[0], key))  # type: ignore[misc]
        # Alternating, faster than routers on one database share usage (every second).
        statuses = [ask(by_worker[n % 2][0], "POST", "/v1/chat/completions", BODY, key)[0]
                    for n in range(30)]  # fmt: skip
        # 10 a minute: a request's worth refills every 6 s, which 30 quick requests never take.
        assert 10 <= statuses.count(200) <= 11, statuses
        assert set(statuses) == {200, 429}
    finally:
        router.stop()


def test_a_worker_that_dies_is_replaced_and_a_stop_waits_for_every_workers_requests(
    fake: FakeNode, tmp_path: Path
) -> None:
    env = {"LLMLB_AUTO_DISTRIBUTE": "none"}
    router = start_router(tmp_path, tmp_path, "--workers", "2", "--no-auth", env=env)
    try:
        fake.join(router.url, node_token(tmp_path))
        first = worker_pids(router)
        assert len(first) == 2
        os.kill(min(first), signal.SIGKILL)
        wait_until(lambda: len(worker_pids(router)) == 2 and min(first) not in worker_pids(router))
        by_worker = connections_by_worker(router.url, 1)  # (both answer again)
        for held in by_worker.values():
            wait_until(lambda held=held: serves_the_model(held[0], {}))  # type: ignore[misc]
        # A request in flight as the router is told to stop is answered; then all are gone.
        fake.behaviour.delay = 1.0
        answered: list[int] = []
        sender = threading.Thread(target=lambda: answered.append(
            ask(by_worker[1][0], "POST", "/v1/chat/completions", BODY)[0]))  # fmt: skip
        sender.start()
        wait_until(lambda: fake.in_flight == 1)
        workers = worker_pids(router)
        assert router.stop() == 0
        sender.join(30)
        assert answered == [200]
        assert not any(Path(f"/proc/{pid}").exists() for pid in workers)
    finally:
        router.stop()


def test_a_node_heard_by_one_worker_serves_through_every_worker_from_its_first_word(
    fake: FakeNode, tmp_path: Path
) -> None:
    """A node heartbeats over one connection, so to one worker. The others serve it from
    its registration on (no 404 while their periodic read of the node table is seconds
    away), and never take it for gone between those reads (at 1 s heartbeats, three missed
    make a node offline: sooner than the reads)."""
    env = {"LLMLB_AUTO_DISTRIBUTE": "none"}
    router = start_router(tmp_path, tmp_path, "--workers", "2", "--no-auth",
                          "--heartbeat-interval", "1", env=env)  # fmt: skip
    try:
        by_worker = connections_by_worker(router.url, 1)
        fake.join(router.url, node_token(tmp_path), interval=1.0)
        statuses = [ask(held[0], "POST", "/v1/chat/completions", BODY)[0]
                    for held in by_worker.values()]  # fmt: skip
        assert statuses == [200, 200]
        deadline = time.monotonic() + 8  # (eight heartbeats)
        while time.monotonic() < deadline:
            for held in by_worker.values():
                statuses.append(ask(held[0], "POST", "/v1/chat/completions", BODY)[0])
        assert set(statuses) == {200}, statuses
    finally:
        router.stop()


def test_workers_refuse_a_taken_port_and_llmlb_up_at_once(tmp_path: Path) -> None:
    """Told before any worker starts: a port that is taken (the supervisor binds it first),
    and ``llmlb up``, which runs its router and node in one process."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        env = {**os.environ, "LLMLB_HOME": str(tmp_path)}
        for args in (["serve", "--port", str(port), "--workers", "2"], ["up", "--workers", "2"]):
            done = subprocess.run([sys.executable, "-m", "llmlb", *args], capture_output=True,
                                  text=True, env=env, timeout=60)  # fmt: skip
            said = done.stdout + done.stderr
            assert done.returncode == 1, done
            assert ("cannot listen on" in said) == (args[0] == "serve")
            assert ("--workers is for llmlb serve" in said) == (args[0] == "up")


def test_workers_on_postgresql_keep_their_tasks_and_share_keys_usage_within_its_columns(
    postgres: PostgresServer, fake: FakeNode, tmp_path: Path
) -> None:
    """PostgreSQL holds names to their columns' widths (SQLite does not): a worker's name as
    a task's owner, and its process id in the keys' usage shared with other routers."""
    database = postgres.new_database()
    data = b"not a model, never fetched"
    (tmp_path / "supported_models.json").write_text(
        json.dumps({"models": [hub_entry("tiny", "test/tiny", data)]})
    )
    env = {"LLMLB_AUTO_DISTRIBUTE": "none", "LLMLB_ADMIN_PASSWORD": ADMIN[1],
           "LLMLB_DATABASE_URL": database}  # fmt: skip
    router = start_router(tmp_path, tmp_path, "--workers", "2", env=env)
    try:
        fake.join(router.url, node_token(tmp_path))
        by_worker = connections_by_worker(router.url, 1)
        basic = {"authorization": "Basic " + base64.b64encode(":".join(ADMIN).encode()).decode()}
        to_the_node = {"model": "tiny", "target": "specific", "node_ids": [fake.node_id]}
        sent = ask(by_worker[0][0], "POST", "/api/models/distribute", to_the_node, basic)
        assert sent[0] == 202, sent
        (task,) = sent[1]["task_ids"]
        owner = ask(by_worker[1][0], "GET", f"/api/tasks/{task}", headers=basic)[1]["owner"]
        assert owner.endswith(":0") and len(owner) <= 36
        limits = {"limits": {"requests_per_minute": 100}}
        made = ask(by_worker[0][0], "POST", "/api/keys", limits, basic)[1]
        key = {"authorization": f"Bearer {made['secret']}"}
        for held in by_worker.values():
            wait_until(lambda held=held: serves_the_model(held[0], key))  # type: ignore[misc]
            assert ask(held[0], "POST", "/v1/chat/completions", BODY, key)[0] == 200
        # Each worker writes its row for other routers (every second).
        sql = "SELECT count(DISTINCT process) FROM key_usage"
        wait_until(lambda: postgres.query(database, sql) == [["2"]])
    finally:
        router.stop()
