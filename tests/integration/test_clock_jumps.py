"""A router whose wall clock is stepped by two hours, forward and then back (as an NTP step
or an operator's `date -s` would), under steady load: every request is answered, the node
stays ready under the same id (never taken offline, forgotten or made to register again),
and the history holds every answer.

The router runs under Debian's libfaketime, which moves its wall clock at run time from a
file; its monotonic clock is left alone, as a real step leaves it.
"""

from __future__ import annotations

import glob
import threading
import time
from pathlib import Path

import httpx

from tests.fakenode import FakeNode
from tests.support import node_token, start_router, wait_until

BODY = {"model": "fake-model", "messages": [{"role": "user", "content": "hi"}]}
HOURS_2 = 7200


def libfaketime() -> str:
    found = glob.glob("/usr/lib/*/faketime/libfaketime.so.1")
    if not found:
        raise RuntimeError("libfaketime is missing: `make database` installs Debian's faketime")
    return found[0]


def test_a_router_rides_out_wall_clock_steps(tmp_path: Path) -> None:
    clock = tmp_path / "clock-offset"
    clock.write_text("+0\n")
    env = {
        # Offline after 6 s without a heartbeat (the node beats every 0.5 s): a step of hours
        # is far past that, a busy machine's pause is not.
        "LLMLB_AUTO_DISTRIBUTE": "none", "LLMLB_HEARTBEAT_INTERVAL": "2",
        # A node silent for 30 s would be forgotten: a step of hours must not count as that.
        "LLMLB_OFFLINE_NODE_EXPIRY": "30",
        # The offset file is read again at most once a second (not at every clock read).
        "LD_PRELOAD": libfaketime(), "FAKETIME_TIMESTAMP_FILE": str(clock),
        "FAKETIME_CACHE_DURATION": "1", "FAKETIME_DONT_FAKE_MONOTONIC": "1",
    }  # fmt: skip
    router = start_router(tmp_path, tmp_path, env=env)
    fake = FakeNode("steady").start()
    fake.join(router.url, node_token(tmp_path))
    answers: list[int] = []
    stop = threading.Event()

    def client() -> None:
        with httpx.Client(base_url=router.url, timeout=30) as http:
            while not stop.is_set():
                answers.append(http.post("/v1/chat/completions", json=BODY).status_code)

    def router_clock_ahead(http: httpx.Client) -> float:
        return float(http.get("/health").json()["time"]) - time.time()

    def rides_out(http: httpx.Client, offset: int) -> None:
        clock.write_text(f"{offset:+d}\n")
        wait_until(lambda: abs(router_clock_ahead(http) - offset) < 60)  # the step took
        beats, served = fake.heartbeats, len(answers)
        seen: set[tuple[str, str]] = set()  # every (id, status) the node list showed

        def steady_for_a_while() -> bool:
            seen.update((n["id"], n["status"]) for n in http.get("/api/nodes").json()["data"])
            return fake.heartbeats >= beats + 10 and len(answers) >= served + 20

        # Two sync rounds (2 s each) and 5 s of heartbeats, the node list read all along:
        # never offline, never another id.
        wait_until(steady_for_a_while, 30, step=0.05)
        assert seen == {(node_id, "ready")}

    try:
        with httpx.Client(base_url=router.url, timeout=10) as http:
            wait_until(lambda: len(http.get("/api/nodes").json()["data"]) == 1)
            node_id = fake.node_id
            thread = threading.Thread(target=client)
            thread.start()
            rides_out(http, +HOURS_2)
            rides_out(http, -HOURS_2)
            stop.set()
            thread.join(30)
            assert fake.node_id == node_id  # never forgotten, never registered again
            assert answers and set(answers) == {200}
            wait_until(lambda: http.get("/api/requests").json()["total"] == len(answers), 15)
    finally:
        stop.set()
        fake.stop()
        router.stop()
