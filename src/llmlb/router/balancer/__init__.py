"""Choosing a node for a request: pure functions and small state over node snapshots. This
package imports no I/O library (tests/unit/test_boundaries.py checks it), so every choice can
be tested with plain values.

- ``ranking``: a node"s score (load, cache, placement) and the order of candidates.
- ``prefixes``: which node has which prompt prefix in its cache (bounded, approximate).
- ``choice``: which nodes to rank for one request (the sample, the catalog fallback), and the
  first of them.
"""

from typing import TYPE_CHECKING

from llmlb.common.exports import exported, lazy_exports

if TYPE_CHECKING:
    from llmlb.router.balancer.choice import Chooser as Chooser, FleetView as FleetView
    from llmlb.router.balancer.prefixes import PrefixIndex as PrefixIndex
    from llmlb.router.balancer.ranking import NodeSnapshot as NodeSnapshot, rank as rank

_OWNERS = {
    "choice": ["Chooser", "FleetView"],
    "prefixes": ["PrefixIndex"],
    "ranking": ["NodeSnapshot", "rank"],
}
__all__ = exported(_OWNERS)
__getattr__ = lazy_exports(__name__, _OWNERS)
