"""Access state that routers on one database share: failed logins (one count for an address
however it is spelled, and for a name whichever router it tried), and keys revoked on one
router, refused by the other after one sync."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from llmlb.common.settings import RouterSettings
from llmlb.router.service import RouterService
from tests.inproc.conftest import InProcessRouter
from tests.inproc.test_accounts import ADMIN, VIEWER, accounts


@pytest.fixture
async def second(
    router: InProcessRouter, tmp_path: Path, database_url: str
) -> AsyncIterator[InProcessRouter]:
    """Another router on the first one's database."""
    home = tmp_path / "second"
    home.mkdir()
    settings = RouterSettings(home=home, auto_distribute="none", database_url=database_url)
    service = await RouterService.open(settings)
    await service.start()
    try:
        yield InProcessRouter(service, home)
    finally:
        await service.close()


async def test_failed_logins_on_two_routers_are_one_count(
    router: InProcessRouter, second: InProcessRouter
) -> None:
    await accounts(router)
    guess = {"username": ADMIN[0], "password": "guess-guess"}
    for index, where in enumerate([router, second] * 3):
        async with where.client((f"192.0.2.{20 + index}", 1)) as client:
            answer = await client.post("/api/auth/login", json=guess)
        assert answer.status_code == (401 if index < 5 else 429), index
    right = {"username": ADMIN[0], "password": ADMIN[1]}
    async with router.client(("192.0.2.99", 1)) as client:
        assert (await client.post("/api/auth/login", json=right)).status_code == 429


@pytest.mark.parametrize(
    "spellings",
    [
        ["192.0.2.9", "::ffff:192.0.2.9", "192.000.002.009", "::FFFF:c000:209",
         "0:0:0:0:0:ffff:192.0.2.9"],
        ["2001:db8::1", "2001:DB8:0:0:0:0:0:1", "2001:db8::2", "[2001:db8::3]",
         "2001:db8:0:0:ffff::9"],  # one /64: one host's addresses
    ],
)  # fmt: skip
async def test_one_address_in_any_spelling_is_one_count(
    router: InProcessRouter, spellings: list[str]
) -> None:
    await accounts(router)
    for index, spelling in enumerate(spellings):  # a different name each time: the address
        async with router.client((spelling, 1)) as client:
            guess = {"username": f"nobody{index}", "password": "guess-guess"}
            assert (await client.post("/api/auth/login", json=guess)).status_code == 401
    async with router.client((spellings[0], 1)) as client:
        right = {"username": VIEWER[0], "password": VIEWER[1]}
        assert (await client.post("/api/auth/login", json=right)).status_code == 429


async def test_a_key_revoked_on_one_router_is_refused_by_the_other_after_its_next_sync(
    router: InProcessRouter, second: InProcessRouter
) -> None:
    key, secret = await router.service.keys.create("shared", ["api"])
    bearer = {"authorization": f"Bearer {secret}"}
    async with second.client() as client:
        assert (await client.get("/v1/models", headers=bearer)).status_code == 200
        await router.service.keys.revoke(key.id)
        await second.service.keys.sync()  # what its key sync loop does every 0.5 s
        refused = await client.get("/v1/models", headers=bearer)
    assert refused.status_code == 401
    assert refused.json()["error"]["code"] == "key_revoked"
