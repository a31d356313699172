"""What can go wrong on the hop to a node, as the router's node client raises it.

- ``NodeUnreachable``: no connection could be made (the node is down);
- ``NodeHungUp``: the connection closed before the answer began (often a pooled one the node
  had already closed: worth one more try on a new connection to the same node);
- ``NodeCutOff``: the answer began and then broke off (the node failed while answering);
- ``NodeBadAnswer``: bytes that are not a well-formed HTTP/1.1 answer, or not one a node may
  send (a status outside 100-599, headers past the bound, endless interim answers);
- ``NodeMixedUp``: an answer that is not for the request sent (``router.proxy.nodelink``);
- ``NodeStalled``: the fleet called the exchange off (``NodeLinks.call_off``).
An answer that stalls for the read timeout raises ``TimeoutError``.
"""

from __future__ import annotations


class NodeLinkError(ConnectionError):
    """The node could not be reached or broke the exchange."""


class NodeUnreachable(NodeLinkError):
    """No connection could be made: refused, no route, name unknown, TLS refused, timed out."""


class NodeHungUp(NodeLinkError):
    """The connection closed (or failed) before the answer began."""


class NodeCutOff(NodeLinkError):
    """The answer began, then the connection closed (or failed) before its end."""


class NodeBadAnswer(NodeLinkError):
    """What came back was not a well-formed HTTP/1.1 answer."""


class NodeStalled(NodeLinkError):
    """Called off by the fleet while waiting for the answer: the node heartbeats but does not
    get the requests sent to it (``router.fleet.health``)."""


class NodeMixedUp(NodeBadAnswer):
    """The answer's ids are not the request's: it was for another request (a stale or extra
    answer on a reused connection), and is never delivered."""
