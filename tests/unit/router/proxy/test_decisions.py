"""What follows each try of a request on a node (router.proxy.decisions), case by case."""

from __future__ import annotations

import pytest

from llmlb.router.proxy.decisions import marks_unreachable, should_retry_here, should_try_next
from llmlb.router.proxy.node_errors import (
    NodeBadAnswer,
    NodeCutOff,
    NodeHungUp,
    NodeMixedUp,
    NodeStalled,
    NodeUnreachable,
)

MODEL_NOT_FOUND = b'{"error":{"code":"model_not_found","message":"no such model"}}'
MODEL_NOT_SUPPORTED = b'{"error":{"code":"model_not_supported","message":"not here"}}'
ROUTE_NOT_FOUND = b'{"detail":"Not Found"}'

# outcome (a status or a failure before the answer began), body, next node?, same node again?
# fresh connection?, node marked unreachable?
CASES: list[tuple[str, int | BaseException, bytes, bool, bool, bool]] = [
    ("a good answer goes to the client", 200, b"{}", False, False, False),
    ("a client's mistake goes to the client", 400, b"{}", False, False, False),
    ("a rate limit goes to the client", 429, b"{}", False, False, False),
    ("the node lacks the model: the client hears so", 404, MODEL_NOT_FOUND, False, False, False),
    ("the model cannot run there: the client hears so", 404, MODEL_NOT_SUPPORTED,
     False, False, False),
    ("a 404 without a model code is a missing route", 404, ROUTE_NOT_FOUND, True, False, False),
    ("the node refused the router's key", 401, b"{}", True, False, False),
    ("the node forbade the router", 403, b"{}", True, False, False),
    ("the node failed", 500, b"{}", True, False, False),
    ("the node is overloaded", 503, b"{}", True, False, False),
    ("the node is down", NodeUnreachable("refused"), b"", True, False, True),
    ("a pooled connection the node had closed", NodeHungUp("closed"), b"", True, True, False),
    ("an answer for another request", NodeMixedUp("ids differ"), b"", True, True, False),
    ("a malformed answer", NodeBadAnswer("status 999"), b"", True, False, False),
    ("an answer that broke off", NodeCutOff("eof"), b"", True, False, False),
    ("the fleet called the exchange off", NodeStalled("stalled"), b"", True, False, False),
    ("the node was silent past the timeout", TimeoutError(), b"", True, False, False),
    ("the client left", KeyboardInterrupt(), b"", False, False, False),
    ("a bug in the router is not the node's fault", ValueError("bug"), b"", False, False, False),
]  # fmt: skip


@pytest.mark.parametrize(
    ("outcome", "body", "next_node", "same_node", "unreachable"),
    [case[1:] for case in CASES],
    ids=[case[0] for case in CASES],
)
def test_what_follows_a_try(
    outcome: int | BaseException, body: bytes, next_node: bool, same_node: bool,
    unreachable: bool,
) -> None:  # fmt: skip
    assert should_try_next(outcome, body) is next_node
    if isinstance(outcome, BaseException):
        assert should_retry_here(outcome) is same_node
        assert marks_unreachable(outcome) is unreachable
