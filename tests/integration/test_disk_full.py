"""A disk that fills up during a download: a node whose store is a real 16 MiB tmpfs starts
a 12 MiB download with room to spare, then another writer takes the room. The download ends
at once with a clear 507, the partial file is gone (the disk is usable again), the node
keeps serving, and once there is room the same model downloads whole."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.fakehub import FakeHub, hub_entry
from tests.support import node_token, start_fleet_node, start_router, wait_until, write_tiny_gguf

MiB = 1 << 20
KEY = "test/twelve/model.gguf"


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root (CI and the dev machine run as root)")
    disk = tmp_path / "disk"
    disk.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", str(disk)], check=True)
    try:
        yield disk
    finally:
        subprocess.run(["umount", "--lazy", str(disk)], check=False)


def test_a_disk_that_fills_mid_download_fails_clearly_and_frees_itself(
    tmp_path: Path, small_disk: Path
) -> None:
    data = write_tiny_gguf(tmp_path / "twelve.gguf", megabytes=12).read_bytes()
    hub = FakeHub().start()
    hub.add("test/twelve", "model.gguf", data, hold_at=0.3)
    router_home = tmp_path / "router"
    router_home.mkdir()
    catalog = {"models": [hub_entry("tiny-twelve", "test/twelve", data)]}
    (router_home / "supported_models.json").write_text(json.dumps(catalog))
    env = {"HF_ENDPOINT": hub.url, "LLMLB_AUTO_DISTRIBUTE": "none"}
    router = start_router(router_home, tmp_path, "--allow-cpu-nodes", env=env)
    node = start_fleet_node(small_disk, tmp_path, router, router_home, "small-disk",
                            "--origin-access", env={"HF_ENDPOINT": hub.url})  # fmt: skip
    token = {"authorization": f"Bearer {node_token(router_home)}"}
    filler = small_disk / "other-writer"
    try:
        with httpx.Client(base_url=node.url, headers=token, timeout=60) as http:

            def download() -> dict[str, object]:
                return dict(http.get("/api/downloads/tiny-twelve").json())

            assert http.post("/api/pull", json={"model": "tiny-twelve"}).status_code == 202
            wait_until(lambda: hub.bytes_sent[KEY] >= 0.3 * len(data))  # held at 30 %
            # Another writer takes all but 1 MiB of what is left.
            filler.write_bytes(b"\0" * (shutil.disk_usage(small_disk).free - MiB))
            hub.files[KEY].released.set()
            wait_until(lambda: download()["state"] == "failed", 30)
            error = str(download()["error"])
            assert "filled up" in error and "partial file was deleted" in error, error
            assert hub.gets[KEY] == 1  # not retried into a full disk
            assert list((small_disk / "models").rglob("*.partial")) == []
            assert shutil.disk_usage(small_disk).free > 0.5 * MiB  # usable again

            assert http.get("/health").status_code == 200
            asked = {"model": "tiny-twelve", "messages": [{"role": "user", "content": "hi"}]}
            reply = http.post("/v1/chat/completions", json=asked)
            assert reply.status_code == 507, reply.text  # still no room: said so, not a 5xx
            assert reply.json()["error"]["code"] == "insufficient_storage"

            filler.unlink()  # the operator makes room
            assert http.post("/api/pull", json={"model": "tiny-twelve"}).status_code == 202
            wait_until(lambda: download()["state"] in ("completed", "failed"), 30)
            assert download()["state"] == "completed", download()
            stored = small_disk / "models" / "tiny-twelve" / "model.gguf"
            assert stored.read_bytes() == data
    finally:
        node.stop()
        router.stop()
        hub.stop()
