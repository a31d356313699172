"""A key's tokens per minute, counted from the usage the node reports: once a key has used
its allowance its next request waits (429, type ``tokens``, with Retry-After)."""

from __future__ import annotations

from pathlib import Path

import httpx

from tests.fakenode import FakeNode
from tests.support import node_token, start_router, wait_until

BODY = {"model": "fake-model", "messages": [{"role": "user", "content": "hi"}]}


def test_a_key_runs_out_of_tokens_per_minute(tmp_path: Path) -> None:
    router = start_router(tmp_path, tmp_path, env={"LLMLB_AUTO_DISTRIBUTE": "none"})
    fake = FakeNode("counted").start()  # every answer: 3 prompt + 4 output tokens
    try:
        fake.join(router.url, node_token(tmp_path))
        with httpx.Client(base_url=router.url, timeout=30) as http:
            wait_until(lambda: len(http.get("/api/nodes").json()["data"]) == 1)
            made = http.post("/api/keys", json={"limits": {"tokens_per_minute": 10}})
            http.headers["authorization"] = f"Bearer {made.json()['secret']}"
            first = http.post("/v1/chat/completions", json=BODY)
            second = http.post("/v1/chat/completions", json=BODY)  # 3 of 10 left: let in
            third = http.post("/v1/chat/completions", json=BODY)  # 7 + 7 > 10: refused
            stream = http.post("/v1/chat/completions", json={**BODY, "stream": True})
        assert (first.status_code, second.status_code) == (200, 200)
        assert third.status_code == 429 and stream.status_code == 429
        error = third.json()["error"]
        assert error["type"] == "tokens" and error["code"] == "rate_limit_exceeded"
        # 4 tokens short at 10 a minute: back in about 24 s.
        assert 20 <= int(third.headers["retry-after"]) <= 30
        assert fake.requests == 2  # the refused ones never reached the node
    finally:
        fake.stop()
        router.stop()
