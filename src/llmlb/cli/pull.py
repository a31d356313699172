"""Terminal progress for long model transfers (``llmlb models pull`` and ``distribute``)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import aiohttp
from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)

from llmlb.cli.local_admin import RemoteAdmin
from llmlb.models.catalog import Catalog
from llmlb.models.store import StoredModel
from llmlb.router.distribution import RouterModels


def _bar(console: Console) -> Progress:
    return Progress(
        TextColumn("{task.description}"), BarColumn(), DownloadColumn(),
        TransferSpeedColumn(), TimeRemainingColumn(), console=console,
    )  # fmt: skip


async def pull_with_progress(name: str, home: Path, console: Console) -> StoredModel:
    """Fetch ``name`` from its origin into ``home``'s store, drawing a progress bar."""
    async with aiohttp.ClientSession() as session:
        models = RouterModels(home, Catalog.load(home), session)
        name = models.canonical(name)  # as typed, it may be gpt-oss:20b
        download = models.pull(name)
        state = models.downloads.progress[name]
        with _bar(console) as bar:
            row = bar.add_task(name, total=None)
            while not download.done():
                bar.update(row, completed=state.bytes_done, total=state.bytes_total,
                           description=f"{name} ({state.state})")  # fmt: skip
                await asyncio.wait({download}, timeout=0.2)
            bar.update(row, completed=state.bytes_done, total=state.bytes_total)
        return download.result()


async def follow_tasks(
    admin: RemoteAdmin, task_ids: list[str], console: Console
) -> list[dict[str, Any]]:
    """Draw one bar per distribution task until every task has finished."""
    finished: dict[str, dict[str, Any]] = {}
    with _bar(console) as bar:
        rows = {task_id: bar.add_task(task_id[:8], total=None) for task_id in task_ids}
        while len(finished) < len(task_ids):
            for task_id, row in rows.items():
                if task_id in finished:
                    continue
                task = await admin.task(task_id)
                label = f"{task['model']} -> {str(task['node_id'])[:8]} ({task['state']})"
                bar.update(row, completed=task["bytes_done"], total=task["bytes_total"],
                           description=label)  # fmt: skip
                if task["state"] in ("completed", "failed"):
                    finished[task_id] = task
            await asyncio.sleep(0.5)
    return [finished[task_id] for task_id in task_ids]
