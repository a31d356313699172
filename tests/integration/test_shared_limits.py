"""Two routers on one PostgreSQL database share a key's requests per minute: once the key has
used its allowance through one router, the other refuses it within a sharing round, instead
of granting a second allowance of its own."""

from __future__ import annotations

from pathlib import Path

import httpx

from tests.fakenode import FakeNode
from tests.postgres import PostgresServer
from tests.support import node_token, start_router, wait_until

BODY = {"model": "fake-model", "messages": [{"role": "user", "content": "hi"}]}
LIMIT = 20


def test_two_routers_grant_a_key_its_allowance_once(
    postgres: PostgresServer, tmp_path: Path
) -> None:
    database = postgres.new_database()
    env = {"LLMLB_DATABASE_URL": database, "LLMLB_AUTO_DISTRIBUTE": "none",
           "LLMLB_LIMIT_SHARE_SECONDS": "0.2"}  # fmt: skip
    homes = [tmp_path / "router-a", tmp_path / "router-b"]
    for home in homes:
        home.mkdir()
    first = start_router(homes[0], tmp_path, env=env, name="router-a")
    second = start_router(homes[1], tmp_path, env=env, name="router-b")
    fake = FakeNode("shared").start()
    try:
        fake.join(first.url, node_token(homes[0]))
        fake.join(second.url, node_token(homes[0]))
        with httpx.Client(base_url=first.url, timeout=30) as a, \
                httpx.Client(base_url=second.url, timeout=30) as b:  # fmt: skip
            wait_until(lambda: [n["status"] for n in b.get("/api/nodes").json()["data"]]
                       == ["ready"])  # fmt: skip
            made = a.post("/api/keys", json={"limits": {"requests_per_minute": LIMIT}})
            secret = {"authorization": f"Bearer {made.json()['secret']}"}
            a.headers.update(secret)
            # B has read the key (until a router knows of a key, it is open to all).
            wait_until(lambda: b.get("/v1/models").status_code == 401)
            b.headers.update(secret)
            through_a = [a.post("/v1/chat/completions", json=BODY).status_code
                         for _ in range(LIMIT)]  # fmt: skip
            assert through_a == [200] * LIMIT
            # A has shared what the key used (a round is 0.2 s)...
            wait_until(lambda: postgres.query(database, "SELECT sum(requests) FROM key_usage")
                       == [[str(LIMIT)]])  # fmt: skip
            # ...and B reads it in its next round. Each answer through B takes 0.1 s, so
            # the requests B lets in before that round are few, however fast this machine
            # (without the wait and the delay, a fast machine sent all 20 in B's window).
            fake.behaviour.delay = 0.1
            through_b: list[int] = []

            def b_refuses() -> bool:
                through_b.append(b.post("/v1/chat/completions", json=BODY).status_code)
                return through_b[-1] == 429

            wait_until(b_refuses, 15)
            # B let in at most what refilled plus the requests sent before its next round;
            # on its own it would have let in all 20.
            assert through_b.count(200) <= 5, through_b
            refused = b.post("/v1/chat/completions", json=BODY)
            assert refused.status_code == 429
            assert refused.json()["error"]["code"] == "rate_limit_exceeded"
            assert int(refused.headers["retry-after"]) >= 1
    finally:
        fake.stop()
        second.stop()
        first.stop()
