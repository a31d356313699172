"""What deployments rely on when routers start: a node token handed in from a secret store
(two routers starting together on one database with it), and ``/startup`` for probes."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

import pytest
from pydantic import SecretStr, ValidationError
from sqlalchemy import func, make_url, select
from sqlalchemy.exc import DBAPIError

from llmlb.common.errors import LlmlbError
from llmlb.common.settings import RouterSettings
from llmlb.router.access.keys import hash_secret
from llmlb.router.service import RouterService
from llmlb.router.storage.db import api_keys, open_database
from tests.inproc.conftest import InProcessRouter
from tests.postgres import PostgresServer

TOKEN = "llmlb_" + "k" * 40  # as `openssl rand -hex 32` would give, in the compose .env


def settings_at(home: Path, database_url: str, **more: object) -> RouterSettings:
    home.mkdir(exist_ok=True)
    return RouterSettings(
        home=home,
        auto_distribute="none",
        database_url=database_url,
        **more,  # type: ignore[arg-type]
    )


async def test_two_routers_starting_together_share_the_configured_node_token(
    tmp_path: Path, database_url: str
) -> None:
    first, second = await asyncio.gather(*(
        RouterService.open(settings_at(tmp_path / name, database_url, node_token=TOKEN))
        for name in ("a", "b")
    ))  # fmt: skip
    try:
        await asyncio.gather(first.start(), second.start())
        for service in (first, second):
            key = await service.keys.verify(TOKEN)
            assert key is not None and key.scopes == {"node"}
            assert service.provisioning.node_token_path.read_text().strip() == TOKEN
        async with first.engine.connect() as connection:
            rows = await connection.execute(
                select(func.count()).where(api_keys.c.secret_hash == hash_secret(TOKEN))
            )
            assert rows.scalar() == 1
    finally:
        await asyncio.gather(first.close(), second.close())


async def test_a_restart_with_the_token_keeps_it(tmp_path: Path, database_url: str) -> None:
    for _ in range(2):
        service = await RouterService.open(settings_at(tmp_path, database_url, node_token=TOKEN))
        try:
            await service.start()
            assert await service.keys.verify(TOKEN) is not None
        finally:
            await service.close()


async def test_a_revoked_configured_token_stops_the_start_with_the_reason(
    tmp_path: Path, database_url: str
) -> None:
    service = await RouterService.open(settings_at(tmp_path, database_url, node_token=TOKEN))
    try:
        await service.start()
        key = await service.keys.verify(TOKEN)
        assert key is not None
        await service.keys.revoke(key.id)
    finally:
        await service.close()
    again = await RouterService.open(settings_at(tmp_path, database_url, node_token=TOKEN))
    try:
        with pytest.raises(LlmlbError, match="revoked or expired"):
            await again.start()
    finally:
        await again.close()


def test_a_weak_node_token_is_refused_by_the_settings(tmp_path: Path) -> None:
    with pytest.raises(ValidationError, match="at least 32 characters"):
        RouterSettings(home=tmp_path, node_token=SecretStr("short"))


async def test_startup_answers_503_until_the_router_has_started(
    tmp_path: Path, database_url: str
) -> None:
    service = await RouterService.open(settings_at(tmp_path, database_url))
    try:
        started = InProcessRouter(service, tmp_path)
        async with started.client() as client:
            assert (await client.get("/startup")).status_code == 503
            await service.start()
            answer = await client.get("/startup")
            assert answer.status_code == 200 and answer.json() == {"started": True}
    finally:
        await service.close()


async def wait_for(predicate: Callable[[], bool]) -> None:
    async with asyncio.timeout(60):
        while not predicate():  # noqa: ASYNC110 (a log line: no event to wait on)
            await asyncio.sleep(0.05)


async def test_a_router_waits_for_a_database_server_that_starts_after_it(
    postgres: PostgresServer, caplog: pytest.LogCaptureFixture
) -> None:
    """As in compose or Kubernetes, where PostgreSQL starts beside the routers."""
    url = postgres.new_database()
    postgres.pause()
    try:
        opening = asyncio.create_task(open_database(url, wait_seconds=120))
        await wait_for(lambda: "not reachable yet" in caplog.text)
        assert not opening.done()
    finally:
        postgres.resume()
    engine = await opening
    try:
        async with engine.connect() as connection:
            assert (
                await connection.execute(select(func.count()).select_from(api_keys))
            ).scalar() == 0
    finally:
        await engine.dispose()


async def test_a_wrong_database_password_fails_at_once(
    postgres: PostgresServer, caplog: pytest.LogCaptureFixture
) -> None:
    url = make_url(postgres.new_database()).set(username="nobody", password="wrong")
    with pytest.raises(DBAPIError):
        await open_database(url.render_as_string(hide_password=False), wait_seconds=120)
    assert "not reachable yet" not in caplog.text  # no waiting on what will not change
