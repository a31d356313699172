"""A node whose router is not there: it serves, and its probes say what it is waiting for."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.support import Process, free_port, start_node, wait_until


@pytest.fixture(scope="module")
def orphan(model_home: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Process]:
    router = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    process = start_node(
        model_home, tmp_path_factory.mktemp("orphan"), "--router", router, "--token", "t",
        name="orphan",
    )  # fmt: skip
    yield process
    process.stop()


def test_startup_is_503_until_the_node_has_registered(orphan: Process) -> None:
    answer = httpx.get(orphan.url + "/startup")
    assert answer.status_code == 503
    assert "registration with the router" in answer.json()["waiting_for"]


def test_health_says_the_router_is_lost(orphan: Process) -> None:
    def lost() -> bool:
        router = httpx.get(orphan.url + "/health").json()["router"]
        return router["error"] is not None

    wait_until(lost, timeout=10)
    health = httpx.get(orphan.url + "/health").json()
    assert health["status"] == "degraded"
    assert health["router"]["connected"] is False
    assert "unreachable" in health["router"]["error"]
