"""Schemathesis against the router's own OpenAPI document (``/openapi.json``): requests
generated from every operation's schema, with a key that passes authentication, on a real
router with a node behind it. No input is a 5xx. A bounded budget (``OPENAPI_EXAMPLES``
cases per operation, 8 in CI) keeps it to seconds."""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings

from tests.fakenode import FakeNode
from tests.support import Process, node_token, start_router, wait_until

EXAMPLES = int(os.environ.get("OPENAPI_EXAMPLES", "8"))
# Never-ending streams: the live event feed.
ENDLESS = {"/api/events"}


@pytest.fixture(scope="module")
def fuzzed_router(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Process, str]]:
    home = tmp_path_factory.mktemp("openapi-router")
    router = start_router(home, home, env={"LLMLB_AUTO_DISTRIBUTE": "none"})
    fake = FakeNode("fuzzed").start()
    fake.join(router.url, node_token(home))
    with httpx.Client(base_url=router.url) as http:
        wait_until(lambda: len(http.get("/api/nodes").json()["data"]) == 1)
        key = http.post("/api/keys", json={"name": "fuzz", "scopes": ["admin"]}).json()["secret"]
    yield router, key
    fake.stop()
    router.stop()


def test_no_generated_request_is_a_server_error(fuzzed_router: tuple[Process, str]) -> None:
    """Every operation of the document, fuzzed in turn (schemathesis's own pytest plugin
    does not run on this pytest, so the operations are driven here)."""
    router, key = fuzzed_router
    schema = schemathesis.openapi.from_url(router.url + "/openapi.json")
    failures: list[str] = []
    tried = 0
    for result in schema.get_all_operations():
        operation = result.ok()  # type: ignore[union-attr]  # an invalid operation raises here
        if operation.path in ENDLESS:
            continue

        @settings(max_examples=EXAMPLES, deadline=None, database=None,
                  suppress_health_check=list(HealthCheck))  # fmt: skip
        @given(case=operation.as_strategy())
        def fuzz(case: Any) -> None:
            nonlocal tried
            tried += 1
            response = case.call(base_url=router.url, timeout=30,
                                 headers={"authorization": f"Bearer {key}"})  # fmt: skip
            if response.status_code >= 500:
                failures.append(f"{case.method} {case.formatted_path} -> "
                                f"{response.status_code} {response.text[:200]}")  # fmt: skip

        fuzz()
    assert tried >= 40 * min(EXAMPLES, 2)  # every operation was exercised
    assert failures == [], "\n".join(failures[:20])


def test_the_document_lists_every_route(fuzzed_router: tuple[Process, str]) -> None:
    router, _ = fuzzed_router
    document = httpx.get(router.url + "/openapi.json").json()
    assert {"/v1/chat/completions", "/api/keys", "/v0/models/blob/{name}",
            "/api/nodes/{node_id}/heartbeat"} <= set(document["paths"])  # fmt: skip
    chat = document["paths"]["/v1/chat/completions"]["post"]
    assert chat["security"] == [{"bearer": ["api"]}]
    assert "messages" in document["components"]["schemas"]["ChatRequest"]["properties"]
