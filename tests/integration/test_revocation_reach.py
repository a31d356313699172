"""A key revoked through one router is refused by another router on the same database
within the key sync interval (``key_sync_seconds``, 0.5 s): real router processes, on
PostgreSQL and on one SQLite file."""

from __future__ import annotations

import time
from pathlib import Path

import httpx
import pytest

from tests.support import start_router

BOUND = 3.0  # seconds: the 0.5 s sync, with room for a machine that is busy


@pytest.mark.parametrize("database", ["sqlite", "postgresql"])
def test_a_revoked_key_stops_working_on_the_other_router_within_the_sync_interval(
    database: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    if database == "sqlite":
        url = f"sqlite+aiosqlite:///{tmp_path / 'shared.db'}"
    else:
        url = request.getfixturevalue("postgres").new_database()
    env = {"LLMLB_DATABASE_URL": url, "LLMLB_AUTO_DISTRIBUTE": "none"}
    homes = [tmp_path / "a", tmp_path / "b"]
    for home in homes:
        home.mkdir()
    first = start_router(homes[0], tmp_path, env=env, name="router-a")
    second = start_router(homes[1], tmp_path, env=env, name="router-b")
    try:
        with httpx.Client(base_url=first.url, timeout=10) as a, \
                httpx.Client(base_url=second.url, timeout=10) as b:  # fmt: skip
            admin = a.post("/api/keys", json={"name": "admin", "scopes": ["admin"]}).json()
            a.headers["authorization"] = f"Bearer {admin['secret']}"
            reached = []
            for round_ in range(3):
                made = a.post("/api/keys", json={"name": f"client{round_}", "scopes": ["api"]})
                bearer = {"authorization": f"Bearer {made.json()['secret']}"}
                assert b.get("/v1/models", headers=bearer).status_code == 200  # B knows it
                assert a.delete(f"/api/keys/{made.json()['id']}").status_code == 200
                revoked, served = time.monotonic(), 0
                while (answer := b.get("/v1/models", headers=bearer)).status_code == 200:
                    served += 1
                    assert time.monotonic() - revoked < 30, "router B never refused the key"
                reached.append((time.monotonic() - revoked, served))
                assert answer.status_code == 401
                assert answer.json()["error"]["code"] == "key_revoked"
        print(f"{database}: revocation reached the other router after "
              + ", ".join(f"{s:.2f} s ({n} served)" for s, n in reached))  # fmt: skip
        assert max(seconds for seconds, _ in reached) < BOUND, reached
    finally:
        first.stop()
        second.stop()
