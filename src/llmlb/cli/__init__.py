"""The ``llmlb`` command. The only place that exits the process with a status."""

from llmlb.cli import (  # noqa: F401  (they add their commands to main)
    endpoints,
    engine,
    fleet,
    logs,
    models,
    probe,
    registered,
    run,
    users,
)
from llmlb.cli.base import main

__all__ = ["main"]
