"""The node table: the fleet's rows in the database, which other routers and the management
CLI read and write. The registry keeps the hot copy in memory and writes through here."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from sqlalchemy import bindparam, delete, insert, select, update
from sqlalchemy.ext.asyncio import AsyncEngine

from llmlb.router.storage.db import GroupCommit, nodes

# What the periodic sync reads of every node (not the JSON columns: see Registry.load).
LIGHT_COLUMNS = (
    nodes.c.id, nodes.c.approved, nodes.c.draining, nodes.c.last_seen, nodes.c.assigned_version,
)  # fmt: skip


class NodeTable:
    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine
        # A burst of registrations (a fleet starting, a router restarting) shares transactions.
        self._writes = GroupCommit(engine)

    async def read(self, unwritten: set[str], memory: Any) -> tuple[list[Any], dict[str, Any]]:
        """Every row's light columns, and the whole rows of those that are new here, carry
        a heartbeat newer than memory's (written by another router) or a changed assignment.
        With one router that is none: a sync of 1,000 nodes decodes no JSON.

        ``memory(node_id)`` is the record this router holds, or None."""
        async with self._engine.connect() as connection:
            rows = list(await connection.execute(select(*LIGHT_COLUMNS)))
            fresh = []
            for row in rows:
                current = memory(row.id)
                if (
                    current is None
                    or (row.last_seen != current.last_seen and row.id not in unwritten)
                    or row.assigned_version != current.assigned_version
                ):
                    fresh.append(row.id)
            full = {}
            for start in range(0, len(fresh), 500):  # bounded IN lists
                chunk = fresh[start : start + 500]
                query = select(nodes).where(nodes.c.id.in_(chunk))
                full.update({row.id: row for row in await connection.execute(query)})
        return rows, full

    async def add(self, values: dict[str, Any]) -> None:
        """A new node's row (IntegrityError when another router added one at that address)."""
        await self._writes.execute(insert(nodes), values)

    async def registered_again(self, node_id: str, values: dict[str, Any]) -> None:
        await self._writes.execute(update(nodes).where(nodes.c.id == node_id), values)

    async def at_address(self, name: str, base_url: str) -> Any:
        async with self._engine.connect() as connection:
            query = select(nodes).where(nodes.c.name == name, nodes.c.base_url == base_url)
            return (await connection.execute(query)).first()

    async def heartbeats(self, rows: list[dict[str, Any]]) -> None:
        """``{"node", "seen", "report"}`` rows, in one statement."""
        statement = (
            update(nodes)
            .where(nodes.c.id == bindparam("node"))
            .values(last_seen=bindparam("seen"), load=bindparam("report"))
        )
        async with self._engine.begin() as connection:
            await connection.execute(statement, rows)

    async def delete_unchanged(self, stale: Iterable[tuple[str, float]]) -> list[str]:
        """Delete each ``(node_id, last_seen)`` row nobody wrote since (another router may
        have heard the node); the ids deleted."""
        deleted = []
        async with self._engine.begin() as connection:
            for node_id, last_seen in stale:
                result = await connection.execute(
                    delete(nodes).where(nodes.c.id == node_id, nodes.c.last_seen == last_seen)
                )
                if result.rowcount:
                    deleted.append(node_id)
        return deleted

    async def set(self, node_id: str, **values: Any) -> None:
        async with self._engine.begin() as connection:
            await connection.execute(update(nodes).where(nodes.c.id == node_id).values(**values))

    async def delete(self, node_id: str) -> None:
        async with self._engine.begin() as connection:
            await connection.execute(delete(nodes).where(nodes.c.id == node_id))

    async def assign(
        self, node_id: str, fallback: list[str], add: Iterable[str], remove: Iterable[str]
    ) -> tuple[list[str], int | None]:
        """Change the models the router wants on a node, from the list in the database
        (another router may have changed it since), in one transaction that locks the row
        where the database can: (the list now, its version; None without a row)."""
        dropped = set(remove)
        async with self._engine.begin() as connection:
            query = select(nodes.c.assigned, nodes.c.assigned_version).where(nodes.c.id == node_id)
            if connection.dialect.name == "postgresql":
                query = query.with_for_update()
            row = (await connection.execute(query)).first()
            stored = list(row.assigned or ()) if row is not None else list(fallback)
            wanted = [m for m in stored if m not in dropped]
            wanted += [m for m in add if m not in wanted]
            if wanted != stored:
                await connection.execute(
                    update(nodes).where(nodes.c.id == node_id)
                    .values(assigned=wanted, assigned_version=nodes.c.assigned_version + 1)
                )  # fmt: skip
        if row is None:
            return wanted, None
        return wanted, row.assigned_version + (wanted != stored)
