"""Who a caller is, by address, as a real router sees it: ``X-Forwarded-For`` names the
client only when it comes from one of ``trusted_proxies``, so no caller can choose the address
that login lockouts count."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from tests.support import start_router


def failed_logins_from_new_addresses(url: str, tries: int) -> list[int]:
    """Wrong passwords for a new user name each time, each claiming a new address."""
    statuses = []
    with httpx.Client(base_url=url, timeout=30) as http:
        http.post("/api/users", json={"username": "someone", "password": "pass-pass-1",
                                      "role": "admin"}).raise_for_status()  # fmt: skip
        for index in range(tries):
            answer = http.post(
                "/api/auth/login", json={"username": f"guess{index}", "password": "nope-nope"},
                headers={"x-forwarded-for": f"198.51.100.{index + 1}"},
            )  # fmt: skip
            statuses.append(answer.status_code)
    return statuses


@pytest.mark.parametrize(("trusted", "expected"), [
    (None, [401] * 5 + [429]),  # one address, whatever it claims: locked after five
    ('["127.0.0.1"]', [401] * 6),  # a trusted proxy's clients: six addresses, none locked
])  # fmt: skip
def test_x_forwarded_for_counts_only_from_a_trusted_proxy(
    tmp_path: Path, trusted: str | None, expected: list[int]
) -> None:
    env = {"LLMLB_TRUSTED_PROXIES": trusted} if trusted else {}
    router = start_router(tmp_path, tmp_path, env=env)
    try:
        assert failed_logins_from_new_addresses(router.url, 6) == expected
    finally:
        router.stop()
