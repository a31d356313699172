"""Routers, nodes and PostgreSQL on hosts of their own: a router cut off from its database
but not from its nodes, and routers that each lose part of the fleet while the database still
joins them (figures in docs/reliability.md)."""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from llmlb.models.store import ModelStore
from tests.fakehub import hub_entry
from tests.netlab import Host, Lab
from tests.network.fleet import HEARTBEAT, Fleet
from tests.postgres import PostgresServer
from tests.support import own_model_home, wait_until, write_tiny_gguf

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
    fleet = Fleet(lab, tmp_path, model_home, "--heartbeat-interval", HEARTBEAT, database_url=url)
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
    fleet = Fleet(lab, tmp_path, model_home, "--heartbeat-interval", HEARTBEAT, database_url=url,
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


def test_two_routers_each_seeing_half_the_fleet_then_healed(
    lab: Lab, database: tuple[Host, str], model_home: Path, tmp_path: Path
) -> None:
    """Router 1 loses node-b, router 2 loses node-a; the database still joins them. Each
    serves through the half it sees; a key revoked on one is refused by the other (how soon
    is measured); a model for node-a is refused by router 2 and run once by router 1; after
    the heal no node is forgotten and both routers serve through both nodes again."""
    _, url = database
    data = write_tiny_gguf(tmp_path / "tiny.gguf", 4, seed=9).read_bytes()
    entry = hub_entry("tiny-split", "test/split", data)
    for name in ("router-1", "router-2"):  # (the model in both routers' catalogs and stores)
        (tmp_path / name / "models").mkdir(parents=True)
        (tmp_path / name / "supported_models.json").write_text(json.dumps({"models": [entry]}))
        ModelStore(tmp_path / name / "models").add("tiny-split", tmp_path / "tiny.gguf",
                                                   sha256=entry["sha256"])  # fmt: skip
    fleet = Fleet(lab, tmp_path, model_home, "--heartbeat-interval", HEARTBEAT, database_url=url,
                  routers=2)  # fmt: skip
    homes = {n: own_model_home(model_home, tmp_path / f"{n}-home") for n in ("node-a", "node-b")}
    hosts = {n: fleet.add_node(n, home=homes[n]) for n in homes}
    for router in (0, 1):
        for name in hosts:
            fleet.wait_status(name, "ready", router=router)
    (first, _), (second, _) = fleet.routers
    lab.block(first, hosts["node-b"])
    lab.block(second, hosts["node-a"])
    split = time.monotonic()
    fleet.wait_status("node-b", "offline", timeout=30, router=0)
    fleet.wait_status("node-a", "offline", timeout=30, router=1)
    judged = time.monotonic() - split
    loads = [fleet.load(workers=1, router=r) for r in (0, 1)]
    try:
        wait_until(lambda: all(load.served_by(n) >= 3 for load, n in
                               zip(loads, ("node-a", "node-b"), strict=True)), 60)  # fmt: skip
        # A key made and revoked on router 1 while split: router 2 refuses it, and how soon.
        with fleet.admin(0) as one:
            made = one.post("/api/keys", json={"name": "short-lived", "scopes": ["api"]}).json()
        bearer = {"authorization": f"Bearer {made['secret']}"}
        with httpx.Client(base_url=fleet.routers[1][1].url, headers=bearer, timeout=10) as key:
            wait_until(lambda: key.get("/v1/models").status_code == 200, 30)
            with fleet.admin(0) as one:
                assert one.delete(f"/api/keys/{made['id']}").status_code in (200, 204)
            revoked = time.monotonic()
            wait_until(lambda: key.get("/v1/models").status_code == 401, 30, step=0.01)
            reach = time.monotonic() - revoked
        # A model for node-a: router 2, which cannot reach it, refuses at once; router 1
        # takes it, and router 2 must not run it as well.
        with fleet.admin(1) as two:
            node_a = next(n["id"] for n in two.get("/api/nodes").json()["data"]
                          if n["name"] == "node-a")  # fmt: skip
            body = {"model": "tiny-split", "target": "specific", "node_ids": [node_a]}
            refused = two.post("/api/models/distribute", json=body)
            assert refused.status_code == 503 and "node-a" in refused.text, refused.text
        with fleet.admin(0) as one:
            asked = one.post("/api/models/distribute", json=body)
            assert asked.status_code == 202, asked.text
    finally:
        split_outcomes = [load.stop() for load in loads]
    lab.unblock(first, hosts["node-b"])
    lab.unblock(second, hosts["node-a"])
    healed = time.monotonic()
    for router in (0, 1):
        for name in hosts:
            fleet.wait_status(name, "ready", timeout=60, router=router)
    rejoined = time.monotonic() - healed
    placed = homes["node-a"] / "models" / "tiny-split" / "model.gguf"
    wait_until(placed.exists, 60)
    with fleet.admin(0) as http:
        wait_until(lambda: all(t["state"] == "completed" for t in http.get("/api/tasks").json()[
            "data"] if t.get("model") == "tiny-split"), 60)  # fmt: skip
        tasks = [t for t in http.get("/api/tasks").json()["data"] if t.get("model") == "tiny-split"]
        listed = {n["name"]: n["status"] for n in http.get("/api/nodes").json()["data"]}
    after = [fleet.load(workers=2, router=r) for r in (0, 1)]
    try:
        wait_until(lambda: all(load.served_by(n) > 0 for load in after
                               for n in ("node-a", "node-b")), 60)  # fmt: skip
    finally:
        for load in after:
            load.stop()
    print(f"\nsplit: each router judged its lost node gone within {judged:.1f} s; served "
          f"{[len(o) for o in split_outcomes]} requests, all through their own half; a key "
          f"revoked on router 1 was refused by router 2 {reach * 1000:.0f} ms later; after the "
          f"heal both routers had both nodes ready in {rejoined:.1f} s; the task: "
          f"{[t['state'] for t in tasks]}")  # fmt: skip
    for outcomes, own in zip(split_outcomes, ("node-a", "node-b"), strict=True):
        assert {o.status for o in outcomes} == {200}
        assert {o.node for o in outcomes} == {own}
    assert reach < 2.0
    assert listed == {"node-a": "ready", "node-b": "ready"}  # no node forgotten
    assert len(tasks) == 1 and tasks[0]["state"] == "completed"  # not run twice
    assert hashlib.sha256(placed.read_bytes()).hexdigest() == entry["sha256"]
