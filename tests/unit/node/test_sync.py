"""The node's room check (node.sync): downloads under way hold their room."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from llmlb.common.errors import InsufficientStorage
from llmlb.common.settings import NodeSettings
from llmlb.models.progress import Progress
from llmlb.models.store import ModelStore, StoredModel
from llmlb.node.resolver import ModelResolver
from llmlb.node.sync import ModelSync


async def test_a_started_download_holds_its_room_against_the_next(tmp_path: Path) -> None:
    settings = NodeSettings(home=tmp_path, store_limit=150)
    resolver = ModelResolver(settings, ModelStore(settings.models_dir))
    sync = ModelSync(settings, resolver, set)
    sync.assigned = ["first", "second"]
    release = asyncio.Event()

    async def held(progress: Progress) -> StoredModel:
        await release.wait()
        raise asyncio.CancelledError

    await sync.make_room("first", {"size_bytes": 100})
    resolver.downloads.start("first", held)  # as ModelResolver.pull does, with no await between
    with pytest.raises(InsufficientStorage, match="no room for 'second'"):
        await sync.make_room("second", {"size_bytes": 100})
    await resolver.close()  # the first download ends: its room is free again
    await sync.make_room("second", {"size_bytes": 100})
