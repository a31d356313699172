"""``llmlb serve --workers N``: N router processes on one port and one database.

- ``board``: what the workers tell each other on every request (requests in flight to each
  node, requests queued), in memory they all map.
- ``supervisor``: the parent process that binds the ports, starts the workers, restarts one
  that dies and stops them all.
"""

from llmlb.router.workers.board import Board, WorkerPlace

__all__ = ["Board", "WorkerPlace"]
