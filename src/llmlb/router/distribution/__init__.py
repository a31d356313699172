"""Which models go where, and getting them there.

- ``policy``: which catalog models a node should hold (auto-distribution; pure functions).
- ``distributor``: assignment at registration, the operator"s distribution, removal.
- ``tasks``: transfer tasks (pending, in progress, completed or failed) with live progress.
- ``model_store``: the router"s own model store (RouterModels): the catalog, files on the
  router, pulls from origins, blobs for nodes.
- ``registrations``: models operators register from Hugging Face, kept in the database and
  added to every router's catalog.
"""

from typing import TYPE_CHECKING

from llmlb.common.exports import exported, lazy_exports

if TYPE_CHECKING:
    from llmlb.router.distribution.distributor import Distributor as Distributor
    from llmlb.router.distribution.model_store import RouterModels as RouterModels
    from llmlb.router.distribution.registrations import Registrations as Registrations
    from llmlb.router.distribution.tasks import (
        ACTIVE as ACTIVE,
        TaskManager as TaskManager,
        router_id as router_id,
    )

_OWNERS = {
    "distributor": ["Distributor"],
    "model_store": ["RouterModels"],
    "registrations": ["Registrations"],
    "tasks": ["ACTIVE", "TaskManager", "router_id"],
}
__all__ = exported(_OWNERS)
__getattr__ = lazy_exports(__name__, _OWNERS)
