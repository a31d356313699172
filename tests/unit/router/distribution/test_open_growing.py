"""A node tailing the router's download: the ``.partial`` file it was pointed at may be renamed
into place (or deleted, on failure) before the router opens it. It then gets the finished
file, or the download's failure, not a 500 in the middle of its 206."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any, cast

import pytest

from llmlb.common.errors import UpstreamFailed
from llmlb.router.distribution.model_store import open_growing


def _download(outcome: Exception | None) -> asyncio.Task[Any]:
    async def run() -> None:
        if outcome is not None:
            raise outcome

    return asyncio.create_task(run())


async def test_a_partial_file_renamed_into_place_is_read_as_the_finished_file(
    tmp_path: Path,
) -> None:
    (tmp_path / "model.gguf").write_bytes(b"GGUF finished")
    task = _download(None)
    with await open_growing(tmp_path / "model.gguf.partial", cast(Any, task)) as stream:
        assert stream.read() == b"GGUF finished"


async def test_a_partial_file_deleted_by_a_failed_download_is_that_failure(
    tmp_path: Path,
) -> None:
    task = _download(OSError("disk full"))
    with pytest.raises(UpstreamFailed, match=r"download of .* failed"):
        await open_growing(tmp_path / "model.gguf.partial", cast(Any, task))


async def test_a_missing_finished_file_is_not_guessed_at(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        await open_growing(tmp_path / "model.gguf", cast(Any, _download(None)))
