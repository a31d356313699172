"""Who is in the fleet, and whether each node may serve.

- ``fleet``: Fleet, the one door handlers use: nodes joining and reporting, the operator"s
  changes, model names resolved.
- ``registry``: the in-memory index of nodes and their credentials.
- ``node_record``: one node as the router knows it.
- ``table``: the fleet"s rows in the database, written through and synced between routers.
- ``snapshots``: the balancer"s cached view of the fleet.
- ``endpoints``: Endpoints, other OpenAI-compatible servers in the fleet, added by the
  operator and polled by the router (no heartbeats).
- ``health``: black holes (heartbeats but no answers) and the prober.
- ``control``: NodeControl, the one client for the router"s control calls to nodes (pull,
  follow, remove, logs, probe).
"""

from typing import TYPE_CHECKING

from llmlb.common.exports import exported, lazy_exports

if TYPE_CHECKING:
    from llmlb.router.fleet.control import (
        NodeControl as NodeControl,
        NodeUnreached as NodeUnreached,
    )
    from llmlb.router.fleet.endpoints import Endpoints as Endpoints
    from llmlb.router.fleet.fleet import Fleet as Fleet
    from llmlb.router.fleet.health import PROBE_INTERVAL as PROBE_INTERVAL, Prober as Prober
    from llmlb.router.fleet.node_record import NodeRecord as NodeRecord
    from llmlb.router.fleet.registry import Registry as Registry

_OWNERS = {
    "control": ["NodeControl", "NodeUnreached"],
    "endpoints": ["Endpoints"],
    "fleet": ["Fleet"],
    "health": ["PROBE_INTERVAL", "Prober"],
    "node_record": ["NodeRecord"],
    "registry": ["Registry"],
}
__all__ = exported(_OWNERS)
__getattr__ = lazy_exports(__name__, _OWNERS)
