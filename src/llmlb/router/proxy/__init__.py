"""A client request"s way to a node and back.

- ``forwarding``: Forwarder, what handlers call: read what routing needs, forward, record.
- ``routing``: what the router knows of a request, and the headers that go with it.
- ``admission``: one bounded wait line for capacity (nodes and cloud providers alike).
- ``failover``: Proxy: the choice, the wait, the tries on nodes in turn.
- ``decisions``: after each try, what next (pure functions, table-tested).
- ``transport``: the seam between failover and the wire (NodeTransport).
- ``relay``: a node"s answer on its way to the client.
- ``usage``: token counts read from an answer"s bytes.
- ``nodelink``, ``node_connection``, ``node_errors``: the hot path"s own HTTP/1.1 client for
  nodes: the pool, one connection, what can go wrong.
"""

from typing import TYPE_CHECKING

from llmlb.common.exports import exported, lazy_exports

if TYPE_CHECKING:
    from llmlb.router.proxy.admission import Capacity as Capacity, WaitLine as WaitLine
    from llmlb.router.proxy.failover import Proxy as Proxy
    from llmlb.router.proxy.forwarding import Forwarder as Forwarder
    from llmlb.router.proxy.nodelink import NodeLinks as NodeLinks

_OWNERS = {
    "admission": ["Capacity", "WaitLine"],
    "failover": ["Proxy"],
    "forwarding": ["Forwarder"],
    "nodelink": ["NodeLinks"],
}
__all__ = exported(_OWNERS)
__getattr__ = lazy_exports(__name__, _OWNERS)
