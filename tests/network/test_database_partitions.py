"""Routers, nodes and PostgreSQL on hosts of their own: a router cut off from its database
but not from its nodes, and routers that each lose part of the fleet while the database still
joins them (figures in docs/reliability.md)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.netlab import Host, Lab
from tests.network.fleet import Fleet
from tests.postgres import PostgresServer
from tests.support import wait_until

CUT_SECONDS = 20.0


@pytest.fixture
def database(lab: Lab) -> Iterator[tuple[Host, str]]:
    """PostgreSQL on a host of its own: the host, and an empty database's URL."""
    host = lab.host("db")
    server = PostgresServer(host.address, host.namespace).start()
    try:
        yield host, server.new_database()
    finally:
        server.stop()


def history_total(fleet: Fleet, router: int = 0) -> int:
    with fleet.admin(router) as http:
        reply = http.get("/api/requests", params={"limit": 1})
        return int(reply.json()["total"]) if reply.status_code == 200 else -1


def test_a_router_cut_off_from_its_database_serves_and_writes_the_history_after(
    lab: Lab, database: tuple[Host, str], model_home: Path, tmp_path: Path
) -> None:
    db_host, url = database
    fleet = Fleet(lab, tmp_path, model_home, "--heartbeat-interval", "1", database_url=url)
    fleet.add_node("node-a")
    fleet.wait_status("node-a", "ready")
    load = fleet.load(workers=2)
    try:
        wait_until(lambda: load.served_by("node-a") >= 4, 60)
        cut = time.monotonic()
        lab.block(fleet.router_host, db_host)  # (packets dropped: the database hangs, no refusal)
        time.sleep(CUT_SECONDS)
        lab.unblock(fleet.router_host, db_host)
        healed = time.monotonic()
        wait_until(lambda: load.served_by("node-a", after=healed) >= 4, 60)
    finally:
        outcomes = load.stop()
    answered = [o for o in outcomes if o.status == 200]
    during = [o for o in answered if cut <= o.started < healed]
    slowest = max(o.ended - o.started for o in outcomes)
    wait_until(lambda: history_total(fleet) >= len(answered), 60)
    caught_up = time.monotonic() - healed
    print(f"\n{len(outcomes)} requests, {len(during)} answered during the {CUT_SECONDS:.0f} s "
          f"cut, lost {len(outcomes) - len(answered)}; slowest {slowest:.1f} s; the history "
          f"held every answer {caught_up:.1f} s after the heal")  # fmt: skip
    assert len(answered) == len(outcomes)
    assert len(during) >= 10  # served from memory all along, not only after the heal
    assert history_total(fleet) == len(answered)


def test_a_router_cut_off_from_a_node_leaves_it_to_the_other_router(
    lab: Lab, database: tuple[Host, str], model_home: Path, tmp_path: Path
) -> None:
    """Two routers on one database, a node joined to both; the first loses the node (not the
    database): it stops sending it work, the second keeps serving it, and after the heal the
    first serves through it again."""
    _, url = database
    fleet = Fleet(lab, tmp_path, model_home, "--heartbeat-interval", "1", database_url=url,
                  routers=2)  # fmt: skip
    node = fleet.add_node("node-a")
    for router in (0, 1):
        fleet.wait_status("node-a", "ready", router=router)
    first_host = fleet.routers[0][0]
    lab.block(first_host, node)
    cut = time.monotonic()
    # The first router hears of the node only through the database now (the second writes
    # its heartbeats there): it must find out by itself that it cannot reach it.
    judged = fleet.wait_status("node-a", "offline", timeout=30, router=0)
    second = fleet.load(workers=1, router=1)
    try:
        wait_until(lambda: second.served_by("node-a", after=judged) >= 3, 60)
        with httpx.Client(base_url=fleet.router.url, timeout=30,
                          headers={"authorization": f"Bearer {fleet.key}"}) as http:  # fmt: skip
            started = time.monotonic()
            refused = http.post("/v1/chat/completions", json={
                "model": "gemma-3-270m", "max_tokens": 2,
                "messages": [{"role": "user", "content": "Hi"}]})  # fmt: skip
            refused_in = time.monotonic() - started
        lab.unblock(first_host, node)
        healed = time.monotonic()
        back = fleet.wait_status("node-a", "ready", timeout=30, router=0)
    finally:
        second.stop()
    with httpx.Client(base_url=fleet.router.url, timeout=60,
                      headers={"authorization": f"Bearer {fleet.key}"}) as http:  # fmt: skip
        again = http.post("/v1/chat/completions", json={
            "model": "gemma-3-270m", "max_tokens": 2,
            "messages": [{"role": "user", "content": "Hi"}]})  # fmt: skip
    print(f"\nthe first router judged the node unreachable {judged - cut:.1f} s after the cut; "
          f"a request to it then: {refused.status_code} in {refused_in:.1f} s; the second "
          f"served {second.served_by('node-a')}; back on the first {back - healed:.1f} s "
          "after the heal")  # fmt: skip
    assert refused.status_code == 503 and refused_in < 10, refused.text
    assert {o.status for o in second.outcomes} == {200}
    assert again.status_code == 200 and again.headers["x-llmlb-node"] == "node-a"
