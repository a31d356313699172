"""No secret ever leaves in a log line, the request history, the metrics or an error
message: the admin password, API keys (good, revoked and wrong ones), the node key and the
cloud providers' keys are all used (at debug log level), then looked for everywhere."""

from __future__ import annotations

from pathlib import Path

import httpx

from tests.fakeclouds import KEYS, FakeClouds
from tests.fakenode import FakeNode
from tests.support import node_token, start_router, wait_until

ADMIN_PASSWORD = "admin-pw-0d4f1c9e7b"
WRONG_KEY = "llmlb_wrong-key-6b1e2f0a9c"


def test_secrets_never_show(tmp_path: Path) -> None:
    clouds = FakeClouds().start()
    env = {**clouds.env(), "LLMLB_ADMIN_PASSWORD": ADMIN_PASSWORD,
           "LLMLB_AUTO_DISTRIBUTE": "none", "LLMLB_LOG_LEVEL": "debug"}  # fmt: skip
    router = start_router(tmp_path, tmp_path, env=env)
    fake = FakeNode("quiet").start()
    seen: list[str] = []
    try:
        token = node_token(tmp_path)
        fake.join(router.url, token)
        admin = {"authorization": f"Bearer {ADMIN_PASSWORD}"}
        with httpx.Client(base_url=router.url, timeout=30) as http:
            wait_until(lambda: len(http.get("/api/nodes", headers=admin).json()["data"]) == 1)
            made = http.post("/api/keys", json={"name": "client"}, headers=admin).json()
            key = made["secret"]
            revoked = http.post("/api/keys", json={"name": "gone"}, headers=admin).json()
            http.delete(f"/api/keys/{revoked['id']}", headers=admin)
            ask = {"messages": [{"role": "user", "content": "hi"}]}
            for bearer in (key, WRONG_KEY, revoked["secret"], ADMIN_PASSWORD, token):
                for model in ("fake-model", "openai:gpt-4o-mini", "anthropic:claude-x"):
                    answer = http.post("/v1/chat/completions", json={**ask, "model": model},
                                       headers={"authorization": f"Bearer {bearer}"})  # fmt: skip
                    seen.append(answer.text + str(answer.headers))
            wrong = {"username": "admin", "password": "wrong" + ADMIN_PASSWORD}
            login = http.post("/api/auth/login", json=wrong)
            seen.append(login.text)
            for path in ("/metrics", "/api/requests", "/api/requests/export", "/api/logs",
                         "/api/nodes", "/api/keys", "/api/stats/overview"):  # fmt: skip
                seen.append(http.get(path, headers=admin, params={"limit": 1000}).text)
        seen.append(router.log_path.read_text())
        everything = "\n".join(seen)
        assert "fake-model" in everything and "openai:gpt-4o-mini" in everything  # it looked
        for secret in (ADMIN_PASSWORD, key, revoked["secret"], WRONG_KEY, token, *KEYS.values()):
            assert secret not in everything, f"a secret ({secret[:6]}...) leaked"
    finally:
        fake.stop()
        router.stop()
        clouds.stop()
