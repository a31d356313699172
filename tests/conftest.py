from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from llmlb.models.smallmodel import SMALL_MODEL_NAME, install_small_model
from llmlb.models.store import ModelStore
from tests.postgres import PostgresServer
from tests.support import Process, start_node


@pytest.fixture(scope="session")
def model_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An llmlb home whose store holds the small real model (assembled once per session)."""
    home = tmp_path_factory.mktemp("home")
    install_small_model(ModelStore(home / "models"))
    return home


@pytest.fixture(scope="session")
def small_model_path(model_home: Path) -> Path:
    return model_home / "models" / SMALL_MODEL_NAME / "model.gguf"


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresServer]:
    """One real PostgreSQL server for the session (databases are made per test)."""
    server = PostgresServer().start()
    yield server
    server.stop()


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """Each router test runs on SQLite (a file in the test's home) and on PostgreSQL."""
    if request.param == "sqlite":
        return f"sqlite+aiosqlite:///{tmp_path / 'llmlb.db'}"
    server: PostgresServer = request.getfixturevalue("postgres")
    return server.new_database()


@pytest.fixture(scope="session")
def node(model_home: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Process]:
    """One real node with the real small model, shared by the whole session."""
    process = start_node(model_home, tmp_path_factory.mktemp("logs"), "--parallel", "4")
    yield process
    process.stop()


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """LLMLB_TEST_ORDER=reverse runs the suite backwards: a test that passes only after
    another one has run fails there (tests must not depend on their order)."""
    if os.environ.get("LLMLB_TEST_ORDER") == "reverse":
        items.reverse()
