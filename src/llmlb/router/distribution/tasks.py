"""Model transfer tasks: pending -> in_progress -> completed | failed, with live progress.

A ``node_pull`` asks a node to fetch a model (``POST {node}/api/pull``) and follows it by
polling the node's download progress every second; a node that restarts meanwhile is asked
again and resumes its partial file (the model is on its assigned list as well). A
``router_pull`` fetches a model into the router's own store. At most ``max_concurrent``
tasks run at once across the fleet, the rest wait. Tasks live in the database, so a router
restart picks them up again (the node resumes its partial file). Every change is published
on the event bus for ``/api/events``.

Several routers on one database: a task belongs to the router that runs it (``owner``) for
``lease_seconds`` at a time, renewed while it runs. When a router dies its ``node_pull``
tasks are taken over by another once the lease runs out; its ``router_pull`` tasks fill its
own store, so only it resumes them (a router restarted in the same home keeps its id).
A lease runs out when its renewals stop: the others watch ``lease_until`` change on their
own monotonic clocks, so routers whose wall clocks differ (or jump) take no live task over.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from pathlib import Path
from typing import Any

from sqlalchemy import insert, select, update
from sqlalchemy.ext.asyncio import AsyncEngine

from llmlb.common.errors import LlmlbError, NotFound, UpstreamFailed
from llmlb.router.distribution.model_store import RouterModels
from llmlb.router.fleet.control import NodeControl, NodeUnreached
from llmlb.router.fleet.registry import Registry
from llmlb.router.storage.db import tasks
from llmlb.router.telemetry.events import EventBus

log = logging.getLogger(__name__)

POLL_SECONDS = 1.0
NODE_LOST_SECONDS = 60.0
ACTIVE = ("pending", "in_progress")


ROUTER_ID_FILE = "router_id"


def router_id(home: Path) -> str:
    """This router's id, kept in its home: a router restarted there owns its tasks again."""
    path = home / ROUTER_ID_FILE
    try:
        return path.read_text().strip()
    except FileNotFoundError:
        identity = str(uuid.uuid4())
        home.mkdir(parents=True, exist_ok=True)
        path.write_text(identity + "\n")
        return identity


def _row(row: Any) -> dict[str, Any]:
    return {str(k): v for k, v in row._mapping.items()}


class _TaskLost(Exception):
    """Another router took the task over (this one's lease ran out)."""


class TaskManager:
    def __init__(
        self,
        engine: AsyncEngine,
        registry: Registry,
        models: RouterModels,
        control: NodeControl,
        bus: EventBus,
        *,
        max_concurrent: int,
        owner: str = "",
        lease_seconds: float = 15.0,
    ) -> None:
        self.owner = owner or str(uuid.uuid4())
        self.lease_seconds = lease_seconds
        self._engine = engine
        self._registry = registry
        self._models = models
        self._control = control
        self._bus = bus
        self._slots = asyncio.Semaphore(max_concurrent)
        self._running: dict[str, asyncio.Task[None]] = {}
        # Other routers' tasks: id -> (the lease_until last read, when it was first read
        # with that value, monotonic).
        self._watched: dict[str, tuple[float | None, float]] = {}

    async def create(self, kind: str, model: str, node_id: str | None) -> dict[str, Any]:
        now = time.time()
        task = {
            "id": str(uuid.uuid4()),
            "kind": kind,
            "model": model,
            "node_id": node_id,
            "state": "pending",
            "bytes_done": 0,
            "bytes_total": None,
            "speed": 0.0,
            "eta_seconds": None,
            "error": None,
            "created_at": now,
            "updated_at": now,
            "owner": self.owner,
            "lease_until": now + self.lease_seconds,
        }
        async with self._engine.begin() as connection:
            await connection.execute(insert(tasks).values(**task))
        self._bus.publish({"type": "task", **task})
        self._launch(task)
        return task

    async def get(self, task_id: str) -> dict[str, Any]:
        async with self._engine.connect() as connection:
            row = (await connection.execute(select(tasks).where(tasks.c.id == task_id))).first()
        if row is None:
            raise NotFound(f"no task with id {task_id!r}", code="task_not_found")
        return _row(row)

    async def list(self, state: str | None = None, limit: int = 200) -> list[dict[str, Any]]:
        query = select(tasks).order_by(tasks.c.created_at.desc()).limit(limit)
        if state is not None:
            query = query.where(tasks.c.state == state)
        async with self._engine.connect() as connection:
            return [_row(row) for row in await connection.execute(query)]

    async def resume(self) -> None:
        """Run every unfinished task this router owns (after a restart) or may take over
        (a ``node_pull`` whose owner's lease ran out); renew the leases of those it runs."""
        now = time.time()
        async with self._engine.begin() as connection:
            await connection.execute(
                update(tasks)
                .where(tasks.c.owner == self.owner, tasks.c.state.in_(ACTIVE))
                .values(lease_until=now + self.lease_seconds)
            )
            rows = list(await connection.execute(select(tasks).where(tasks.c.state.in_(ACTIVE))))
        active = [_row(row) for row in rows]
        self._watched = {
            t["id"]: self._watched[t["id"]] for t in active if t["id"] in self._watched
        }
        for task in active:
            if task["id"] in self._running:
                continue
            mine = task["owner"] == self.owner
            # Tasks from before owners existed belong to whoever finds them.
            orphan = task["owner"] is None or (task["kind"] == "node_pull" and self._lapsed(task))
            if (mine or orphan) and await self._claim(task, now):
                verb = "resuming" if mine else f"taking over from router {task['owner']}"
                log.info("%s task %s (%s of %s)", verb, task["id"], task["kind"], task["model"])
                self._launch(task)

    def _lapsed(self, task: dict[str, Any]) -> bool:
        """Whether another router's lease on the task went unrenewed for ``lease_seconds``
        of this router's monotonic time (its value is compared, never its clock time)."""
        now = time.monotonic()
        seen = self._watched.get(task["id"])
        if seen is None or seen[0] != task["lease_until"]:
            self._watched[task["id"]] = (task["lease_until"], now)
            return False
        return now - seen[1] > self.lease_seconds

    async def _claim(self, task: dict[str, Any], now: float) -> bool:
        """Make the task this router's, unless another router claimed it first."""
        async with self._engine.begin() as connection:
            result = await connection.execute(
                update(tasks)
                .where(tasks.c.id == task["id"], tasks.c.owner == task["owner"]
                       if task["owner"] is not None else tasks.c.owner.is_(None),
                       # not renewed since it was read (a renewal in between: still alive)
                       tasks.c.lease_until == task["lease_until"]
                       if task["lease_until"] is not None else tasks.c.lease_until.is_(None))
                .values(owner=self.owner, lease_until=now + self.lease_seconds)
            )  # fmt: skip
        task.update(owner=self.owner, lease_until=now + self.lease_seconds)
        return bool(result.rowcount)

    async def close(self) -> None:
        for running in list(self._running.values()):
            running.cancel()
        for running in list(self._running.values()):
            with contextlib.suppress(BaseException):
                await running

    def _launch(self, task: dict[str, Any]) -> None:
        runner = asyncio.create_task(self._run(task))
        self._running[task["id"]] = runner
        runner.add_done_callback(lambda _: self._running.pop(task["id"], None))

    async def _save(self, task: dict[str, Any], **changes: Any) -> None:
        task.update(changes, updated_at=time.time())
        async with self._engine.begin() as connection:
            result = await connection.execute(
                update(tasks)
                .where(tasks.c.id == task["id"], tasks.c.owner == self.owner)
                .values(**{k: task[k] for k in changes}, updated_at=task["updated_at"])
            )
        if not result.rowcount:
            raise _TaskLost
        self._bus.publish({"type": "task", **task})

    async def _run(self, task: dict[str, Any]) -> None:
        async with self._slots:
            try:
                await self._save(task, state="in_progress")
                if task["kind"] == "router_pull":
                    await self._follow_router_pull(task)
                else:
                    await self._follow_node_pull(task)
            except asyncio.CancelledError:
                raise  # router shutting down: the task stays in_progress and resumes later
            except _TaskLost:
                log.info("task %s is run by another router now", task["id"])
                return
            except Exception as exc:
                message = (
                    exc.message if isinstance(exc, LlmlbError) else f"{type(exc).__name__}: {exc}"
                )
                with contextlib.suppress(_TaskLost):
                    await self._save(task, state="failed", error=message, speed=0.0)
                log.warning("task %s failed: %s", task["id"], message)

    async def _follow_router_pull(self, task: dict[str, Any]) -> None:
        download = self._models.pull(task["model"])
        progress = self._models.downloads.progress[task["model"]]
        while not download.done():
            await self._save_progress(task, progress.to_dict())
            await asyncio.wait({download}, timeout=POLL_SECONDS)
        stored = download.result()
        await self._save(
            task,
            state="completed",
            bytes_done=stored.size_bytes,
            bytes_total=stored.size_bytes,
            speed=0.0,
            eta_seconds=0.0,
        )

    async def _follow_node_pull(self, task: dict[str, Any]) -> None:
        node = self._registry.get(task["node_id"])
        waited = 0.0
        while not node.live:  # after a router restart: until the node has heartbeated again
            if waited > NODE_LOST_SECONDS:
                raise UpstreamFailed(f"node {node.name} has not been seen since the router started")
            await asyncio.sleep(POLL_SECONDS)
            waited += POLL_SECONDS
        await self._control.pull(node, task["model"])
        lost_since: float | None = None
        while True:
            await asyncio.sleep(POLL_SECONDS)
            try:
                progress = await self._control.download(node, task["model"])
                if progress is None:  # the node restarted: ask again, it resumes
                    await self._control.pull(node, task["model"])
                    continue
                lost_since = None
            except NodeUnreached:
                lost_since = lost_since or time.monotonic()
                if time.monotonic() - lost_since > NODE_LOST_SECONDS:
                    raise
                continue
            state = progress.get("state")
            if state == "completed":
                await self._save(
                    task,
                    state="completed",
                    bytes_done=progress["bytes_done"],
                    bytes_total=progress["bytes_total"],
                    speed=0.0,
                    eta_seconds=0.0,
                )
                return
            if state == "failed":
                raise UpstreamFailed(f"node {node.name}: {progress.get('error')}")
            await self._save_progress(task, progress)

    async def _save_progress(self, task: dict[str, Any], progress: dict[str, Any]) -> None:
        await self._save(
            task,
            bytes_done=int(progress.get("bytes_done") or 0),
            bytes_total=progress.get("bytes_total"),
            speed=float(progress.get("speed_bytes_per_s") or 0.0),
            eta_seconds=progress.get("eta_seconds"),
        )
