"""The ``llmlb`` command. The only place that exits the process with a status."""

from llmlb.cli import engine, fleet, models, probe, run, users  # noqa: F401  (they add their commands to main)
from llmlb.cli.base import main

__all__ = ["main"]
