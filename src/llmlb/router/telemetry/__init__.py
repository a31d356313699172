"""What happened and what is happening.

- ``history``: one row per request, written in batches off the request path.
- ``metrics``: Prometheus metrics, in a registry of the router"s own.
- ``overview``: the fleet at a glance and each node"s recent trends.
- ``events``: the live event bus the dashboard follows.
- ``audit``: the changes made through the admin API, who made them and how they ended.
"""

from typing import TYPE_CHECKING

from llmlb.common.exports import exported, lazy_exports

if TYPE_CHECKING:
    from llmlb.router.telemetry.audit import (
        AuditFilter as AuditFilter,
        AuditTrail as AuditTrail,
    )
    from llmlb.router.telemetry.events import EventBus as EventBus
    from llmlb.router.telemetry.history import (
        COUNT_CAP as COUNT_CAP,
        History as History,
        HistoryFilter as HistoryFilter,
        RequestRecord as RequestRecord,
        Who as Who,
    )
    from llmlb.router.telemetry.metrics import RouterMetrics as RouterMetrics
    from llmlb.router.telemetry.overview import (
        PUBLISH_SECONDS as PUBLISH_SECONDS,
        SAMPLE_SECONDS as SAMPLE_SECONDS,
        Overview as Overview,
    )

_OWNERS = {
    "audit": ["AuditFilter", "AuditTrail"],
    "events": ["EventBus"],
    "history": ["COUNT_CAP", "History", "HistoryFilter", "RequestRecord", "Who"],
    "metrics": ["RouterMetrics"],
    "overview": ["PUBLISH_SECONDS", "SAMPLE_SECONDS", "Overview"],
}
__all__ = exported(_OWNERS)
__getattr__ = lazy_exports(__name__, _OWNERS)
