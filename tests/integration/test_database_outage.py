"""The database away for a while (PostgreSQL stopped under a router): requests keep being
served from the in-memory registry and key cache, and the history written while it was away
arrives once it is back, nothing lost."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.fakenode import FakeNode
from tests.postgres import PostgresServer
from tests.support import node_token, start_router, wait_until

BODY = {"model": "fake-model", "messages": [{"role": "user", "content": "hi"}]}


@pytest.fixture
def own_postgres() -> Iterator[PostgresServer]:
    """A server of this test's own: it is stopped and started again."""
    server = PostgresServer().start()
    yield server
    server.stop()


def test_requests_are_served_while_the_database_is_away_and_history_catches_up(
    own_postgres: PostgresServer, tmp_path: Path
) -> None:
    env = {"LLMLB_DATABASE_URL": own_postgres.new_database(), "LLMLB_AUTO_DISTRIBUTE": "none",
           "LLMLB_HEARTBEAT_INTERVAL": "0.5"}  # fmt: skip
    router = start_router(tmp_path, tmp_path, env=env)
    fake = FakeNode("steady").start()
    try:
        fake.join(router.url, node_token(tmp_path))
        with httpx.Client(base_url=router.url, timeout=30) as http:
            wait_until(lambda: [n["status"] for n in http.get("/api/nodes").json()["data"]]
                       == ["ready"])  # fmt: skip
            before = [http.post("/v1/chat/completions", json=BODY) for _ in range(5)]
            own_postgres.pause()
            away = []
            started = time.monotonic()
            # Traffic for 10 s with no database: past the key cache's refresh (5 s), several
            # history flushes and registry syncs, and 20 heartbeats.
            while time.monotonic() - started < 10:
                away.append(http.post("/v1/chat/completions", json=BODY))
            assert {r.status_code for r in away} == {200}
            assert "hello from steady" in away[-1].json()["choices"][0]["message"]["content"]
            own_postgres.resume()
            sent = len(before) + len(away)

            def all_recorded() -> bool:
                reply = http.get("/api/requests", params={"limit": 1})
                return reply.status_code == 200 and reply.json()["total"] == sent

            wait_until(all_recorded, 30)
            assert all(r.status_code == 200 for r in before)
    finally:
        fake.stop()
        router.stop()
