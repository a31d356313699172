"""After each try of a request on a node, what next: pure functions of what came back, so
that every case is a line of a table test (``tests/unit/router/proxy/test_decisions.py``).

- A failure before the answer began that another node may not have (the node is down,
  hung up, sent a bad answer, stalled, or was silent too long) moves the request to the
  next node, never the same one twice.
- A pooled connection the node had closed, or one holding an earlier request's answer, is
  not the node's fault: the same node once more, on a fresh connection.
- An answer that is the node's problem, not the client's (a 5xx; 401/403: it refused the
  router's key; a 404 that is not about the model: it lacks the route) moves the request on;
  any other answer goes to the client as it is.
"""

from __future__ import annotations

from llmlb.router.proxy.node_errors import NodeHungUp, NodeLinkError, NodeMixedUp, NodeUnreachable


def should_try_next(outcome: int | BaseException, body: bytes = b"") -> bool:
    """Whether the request goes on to the next node: ``outcome`` is the node's status (with
    the answer's ``body``) or the failure raised before the answer began."""
    if isinstance(outcome, BaseException):
        return isinstance(outcome, NodeLinkError | TimeoutError)
    if outcome >= 500 or outcome in (401, 403):
        return True
    return outcome == 404 and b'"model_not_' not in body


def should_retry_here(error: BaseException) -> bool:
    """Whether the same node gets the request once more, on a fresh connection."""
    return isinstance(error, NodeHungUp | NodeMixedUp)


def marks_unreachable(error: BaseException) -> bool:
    """Whether the node gets no traffic until a probe gets through: a fresh connection to
    it failed (a pooled one that fails says nothing of the node)."""
    return isinstance(error, NodeUnreachable)
