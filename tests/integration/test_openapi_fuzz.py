"""Schemathesis against the router's and the node's own OpenAPI documents
(``/openapi.json``): requests generated from every operation's schema, with a key that
passes authentication, on a real router with a node behind it and on a real node with the
small model. No input is a 5xx. A bounded budget (``OPENAPI_EXAMPLES`` cases per operation,
8 in CI) keeps it to seconds."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings

from tests.fakenode import FakeNode
from tests.support import Process, node_token, start_node, start_router, wait_until

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


def fuzz_every_operation(base_url: str, key: str) -> int:
    """Drive every operation of the document at ``base_url``; the requests sent. Fails
    listing the 5xx answers (schemathesis's own pytest plugin does not run on this pytest,
    so the operations are driven here)."""
    schema = schemathesis.openapi.from_url(base_url + "/openapi.json")
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
            response = case.call(base_url=base_url, timeout=60,
                                 headers={"authorization": f"Bearer {key}"})  # fmt: skip
            if response.status_code >= 500:
                failures.append(f"{case.method} {case.formatted_path} -> "
                                f"{response.status_code} {response.text[:200]}")  # fmt: skip

        fuzz()
    assert failures == [], "\n".join(failures[:20])
    return tried


def test_no_generated_request_is_a_router_server_error(
    fuzzed_router: tuple[Process, str],
) -> None:
    router, key = fuzzed_router
    assert fuzz_every_operation(router.url, key) >= 40 * min(EXAMPLES, 2)


def test_no_generated_request_is_a_node_server_error(model_home: Path, tmp_path: Path) -> None:
    key = "llmlb_node-key-for-the-fuzz"
    node = start_node(model_home, tmp_path, "--ctx-size", "512", name="fuzzed-node",
                      env={"LLMLB_NODE_TOKEN": key, "LLMLB_DEFAULT_MAX_TOKENS": "4"})  # fmt: skip
    try:
        assert fuzz_every_operation(node.url, key) >= 8 * min(EXAMPLES, 2)
    finally:
        node.stop()


def test_the_document_lists_every_route(fuzzed_router: tuple[Process, str]) -> None:
    router, _ = fuzzed_router
    document = httpx.get(router.url + "/openapi.json").json()
    assert {"/v1/chat/completions", "/api/keys", "/v0/models/blob/{name}",
            "/api/nodes/{node_id}/heartbeat"} <= set(document["paths"])  # fmt: skip
    chat = document["paths"]["/v1/chat/completions"]["post"]
    assert chat["security"] == [{"bearer": ["api"]}]
    assert "messages" in document["components"]["schemas"]["ChatRequest"]["properties"]
