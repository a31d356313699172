"""Downloads from a loopback origin: what counts as a model, and the bandwidth cap."""

from __future__ import annotations

import hashlib
import time
from pathlib import Path

import aiohttp
import pytest

from llmlb.common.errors import CorruptDownload, UpstreamFailed
from llmlb.models.download import ModelFile, Source, download, fetch_files
from llmlb.models.partial import partial_path
from llmlb.models.progress import Progress
from llmlb.models.store import ModelStore, part_file
from tests.fakehub import FakeHub
from tests.support import write_tiny_gguf

MiB = 1 << 20


async def test_a_resumed_download_runs_at_the_cap_not_slower(tmp_path: Path) -> None:
    data = write_tiny_gguf(tmp_path / "source.gguf", megabytes=32).read_bytes()
    hub = FakeHub().start()
    try:
        hub.add("test/capped", "model.gguf", data)
        store = ModelStore(tmp_path / "models")
        partial = partial_path(store, "capped")
        partial.parent.mkdir(parents=True)
        already = 16 * MiB  # an earlier transfer got this far
        partial.write_bytes(data[:already])
        cap = 8 * MiB
        source = Source("origin", f"{hub.url}/test/capped/resolve/main/model.gguf")
        async with aiohttp.ClientSession() as session:
            started = time.monotonic()
            stored = await download(
                session, store, "capped", source, Progress("capped"),
                sha256=None, size_hint=len(data), bandwidth=cap,
            )  # fmt: skip
            elapsed = time.monotonic() - started
        assert stored.path.read_bytes() == data
        rate = (len(data) - already) / elapsed
        assert 0.75 * cap <= rate <= 1.25 * cap, f"{rate / MiB:.2f} MiB/s against a cap of 8"
    finally:
        hub.stop()


async def fetch(hub: FakeHub, store: ModelStore, name: str, data: bytes) -> object:
    hub.add(f"test/{name}", "model.gguf", data)
    source = Source("origin", f"{hub.url}/test/{name}/resolve/main/model.gguf")
    async with aiohttp.ClientSession() as session:
        return await download(
            session, store, name, source, Progress(name), sha256=None, size_hint=None
        )


async def test_without_a_catalog_sha256_a_truncated_gguf_is_refused(tmp_path: Path) -> None:
    whole = write_tiny_gguf(tmp_path / "whole.gguf", megabytes=4).read_bytes()
    store = ModelStore(tmp_path / "models")
    hub = FakeHub().start()
    try:
        with pytest.raises(CorruptDownload) as raised:
            await fetch(hub, store, "cut", whole[: len(whole) // 2])  # header fine, data short
        assert "truncated" in raised.value.message
        assert store.get("cut") is None
        assert not partial_path(store, "cut").exists()
        stored = await fetch(hub, store, "whole", whole)
        assert stored.sha256 == hashlib.sha256(whole).hexdigest()  # type: ignore[attr-defined]
    finally:
        hub.stop()


async def test_a_split_model_is_verified_part_by_part(tmp_path: Path) -> None:
    """A part whose sha256 is wrong is deleted alone: the good part stays, the model is not
    in the store, and the next attempt fetches only the missing part."""
    parts = [write_tiny_gguf(tmp_path / f"p{i}.gguf", 2, seed=i).read_bytes() for i in (1, 2)]
    names = ["m-00001-of-00002.gguf", "m-00002-of-00002.gguf"]
    store = ModelStore(tmp_path / "models")
    hub = FakeHub().start()
    try:
        for name, data in zip(names, parts, strict=True):
            hub.add("test/split", name, data)

        def files(second_sha: str) -> list[ModelFile]:
            shas = [hashlib.sha256(parts[0]).hexdigest(), second_sha]
            base = f"{hub.url}/test/split/resolve/main"
            return [
                ModelFile(part_file(i, 2), [Source("origin", f"{base}/{name}")], sha, len(data))
                for i, (name, data, sha) in enumerate(zip(names, parts, shas, strict=True), 1)
            ]

        async with aiohttp.ClientSession() as session:
            with pytest.raises(UpstreamFailed, match="expected 0000"):
                await fetch_files(session, store, "split", files("0" * 64), Progress("split"))
            folder = store.folder("split")
            assert (folder / part_file(1, 2)).read_bytes() == parts[0]
            assert not (folder / part_file(2, 2)).exists()
            assert not partial_path(store, "split", part_file(2, 2)).exists()
            assert store.get("split") is None
            progress = Progress("split")
            right = hashlib.sha256(parts[1]).hexdigest()
            stored = await fetch_files(session, store, "split", files(right), progress)
        assert [p.name for p in stored.parts] == [part_file(1, 2), part_file(2, 2)]
        assert stored.size_bytes == sum(map(len, parts)) == progress.bytes_total
        assert hub.gets[f"test/split/{names[0]}"] == 1  # the good part was not fetched again
        assert [p["sha256"] for p in stored.metadata["parts"]] == [
            hashlib.sha256(data).hexdigest() for data in parts
        ]
    finally:
        hub.stop()
