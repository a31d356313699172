"""Models registered from Hugging Face (a loopback hub that answers the tree API and Range
reads as the hub does): the file chosen, the header read, the entry kept in the database for
every router, edited and removed; a repository that does not exist or has no GGUF is a 4xx
at registration."""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from llmlb.common.settings import RouterSettings
from llmlb.router.service import RouterService
from tests.fakehub import COMMIT, PAGE_SIZE, FakeHub
from tests.inproc.conftest import InProcessRouter

TEMPLATE = "{% for m in messages %}{{ m.content }}{% endfor %}{% if tools %}{{ tools }}{% endif %}"


def tiny_model(path: Path, seed: int) -> bytes:
    """A small GGUF with the header keys a registration reads (and a big vocabulary, so the
    header is read in more than one Range request)."""
    import numpy as np
    from gguf import GGUFWriter

    writer = GGUFWriter(str(path), "llama")
    writer.add_name(f"tiny {seed}")
    writer.add_context_length(8192)
    writer.add_embedding_length(64)
    writer.add_block_count(2)
    writer.add_head_count(4)
    writer.add_head_count_kv(2)
    writer.add_chat_template(TEMPLATE)
    writer.add_token_list([f"token-{i:07d}-{'x' * 20}" for i in range(70_000)])
    writer.add_tensor("w", np.random.default_rng(seed).random(4096, dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path.read_bytes()


@pytest.fixture(scope="module")
def hub(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FakeHub]:
    folder = tmp_path_factory.mktemp("hub")
    hub = FakeHub().start()
    for index, quant in enumerate(("Q8_0", "Q4_K_M", "IQ4_XS")):
        data = tiny_model(folder / f"{quant}.gguf", index)
        hub.add("unsloth/Tiny-GGUF", f"Tiny-{quant}.gguf", data)
    # (Each part of a split GGUF is a GGUF of its own, the first with the whole header.)
    for part in (1, 2):
        data = tiny_model(folder / f"split-{part}.gguf", 6 + part)
        hub.add("org/Split-GGUF", f"Split-Q4_K_M-0000{part}-of-00002.gguf", data)
    hub.add("org/NoModels", "notes.txt", b"nothing to serve")
    for index in range(PAGE_SIZE + 5):  # a listing longer than a page
        hub.add("org/Many-GGUF", f"extra/readme-{index:03d}.txt", b"x")
    hub.add("org/Many-GGUF", "zz/Many-Q4_K_M.gguf", tiny_model(folder / "many.gguf", 9))
    yield hub
    hub.stop()


@pytest.fixture(autouse=True)
def hub_endpoint(hub: FakeHub, monkeypatch: pytest.MonkeyPatch) -> None:
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "ENDPOINT", hub.url)


async def register(router: InProcessRouter, **body: Any) -> tuple[int, dict[str, Any]]:
    async with router.client() as client:
        answer = await client.post("/api/models/register", json=body)
    return answer.status_code, answer.json()


async def test_a_repository_becomes_a_catalog_entry_with_its_default_quantisation(
    router: InProcessRouter, hub: FakeHub
) -> None:
    status, entry = await register(router, model="hf.co/unsloth/Tiny-GGUF")
    assert status == 201, entry
    assert entry["name"] == "tiny-q4_k_m" and entry["chosen"] == "Q4_K_M, the default"
    hub_file = hub.files["unsloth/Tiny-GGUF/Tiny-Q4_K_M.gguf"]
    assert entry["sha256"] == hub_file.sha256 and entry["size_bytes"] == len(hub_file.data)
    # From the header, read with Range requests (a few, not the whole file).
    assert entry["context_length"] == 8192 and entry["chat_template"] == TEMPLATE
    assert entry["kv_bytes_per_token"] == 2 * 2 * (16 + 16) * 2
    assert entry["capabilities"] == ["chat", "completion", "tools"]
    # Pinned to the commit the hub served it from (a later upload under the same name is
    # another file).
    assert entry["origin"]["hub"] == {"repo": "unsloth/Tiny-GGUF", "file": "Tiny-Q4_K_M.gguf",
                                      "revision": COMMIT}  # fmt: skip
    async with router.client() as client:
        models = {m["id"]: m for m in (await client.get("/v1/models")).json()["data"]}
        assert models["tiny-q4_k_m"]["in_catalog"] is True
        listed = (await client.get("/api/models/registered")).json()["data"]
        assert [m["name"] for m in listed] == ["tiny-q4_k_m"]
        # Ollama's way of naming it reaches it (no node holds it yet: 503, not 404).
        chat = {"model": "hf.co/unsloth/Tiny-GGUF:Q4_K_M", "messages": [
            {"role": "user", "content": "hi"}]}  # fmt: skip
        assert (await client.post("/v1/chat/completions", json=chat)).status_code == 503


async def test_quantisations_files_and_split_models(router: InProcessRouter) -> None:
    status, entry = await register(router, model="hf.co/unsloth/Tiny-GGUF:iq4_xs")
    assert status == 201 and entry["name"] == "tiny-iq4_xs"
    status, entry = await register(
        router, model="unsloth/Tiny-GGUF/Tiny-Q8_0.gguf", name="tiny:q8", aliases=["tiny8"]
    )
    assert status == 201 and entry["name"] == "tiny-q8" and entry["aliases"][-1] == "tiny8"
    status, entry = await register(router, model="https://huggingface.co/org/Split-GGUF")
    assert status == 201, entry
    assert [p["file"] for p in entry["parts"]] == ["Split-Q4_K_M-00001-of-00002.gguf",
                                                   "Split-Q4_K_M-00002-of-00002.gguf"]  # fmt: skip
    status, entry = await register(router, model="org/Many-GGUF")  # past the first page
    assert status == 201 and entry["origin"]["hub"]["file"] == "zz/Many-Q4_K_M.gguf"


@pytest.mark.parametrize(
    ("body", "status", "code"),
    [
        ({"model": "hf.co/nobody/Nothing-GGUF"}, 404, "repository_not_found"),
        ({"model": "hf.co/org/NoModels"}, 400, "no_gguf"),
        ({"model": "hf.co/unsloth/Tiny-GGUF:Q2_K"}, 400, "no_gguf"),
        ({"model": "hf.co/unsloth"}, 400, None),
        ({"model": "hf.co/unsloth/Tiny-GGUF", "name": "../../etc"}, 400, "invalid_model_name"),
        ({"model": "hf.co/unsloth/Tiny-GGUF", "name": "gemma-3-270m"}, 409, "model_exists"),
        ({"model": "hf.co/unsloth/Tiny-GGUF", "aliases": ["gpt-oss"]}, 409, "model_exists"),
        ({"model": "hf.co/unsloth/Tiny-GGUF", "extra": True}, 400, None),
        ({"model": "https://huggingface.co/unsloth/Tiny-GGUF/resolve/../x.gguf"}, 400, None),
    ],
)
async def test_what_cannot_be_registered_is_a_4xx_at_once(
    router: InProcessRouter, body: dict[str, Any], status: int, code: str | None
) -> None:
    answered, error = await register(router, **body)
    assert answered == status, error
    if code is not None:
        assert error["error"]["code"] == code
    if status == 400 and "Q2_K" in body["model"]:
        assert "it has: IQ4_XS, Q4_K_M, Q8_0" in error["error"]["message"]


async def test_an_entry_is_edited_and_removed_and_the_catalog_follows(
    router: InProcessRouter,
) -> None:
    await register(router, model="hf.co/unsloth/Tiny-GGUF")
    async with router.client() as client:
        edited = await client.patch("/api/models/registered/tiny-q4_k_m", json={
            "aliases": ["tiny"], "tier_min_gpu_memory_bytes": 1 << 30})  # fmt: skip
        assert edited.status_code == 200, edited.text
        assert router.service.catalog.resolve("tiny") == "tiny-q4_k_m"
        assert any(t.model == "tiny-q4_k_m" for t in router.service.catalog.tiers)
        refused = await client.patch("/api/models/registered/tiny-q4_k_m", json={"origin": {}})
        assert refused.status_code == 400 and refused.json()["error"]["param"] == "origin"
        for tier in (True, -1, 2**70, "16GiB"):
            odd = await client.patch("/api/models/registered/tiny-q4_k_m",
                                     json={"tier_min_gpu_memory_bytes": tier})  # fmt: skip
            assert odd.status_code == 400, (tier, odd.text)
        shipped = await client.delete("/api/models/registered/gemma-3-270m")
        assert shipped.status_code == 404  # shipped entries are not changed here
        assert (await client.delete("/api/models/registered/tiny")).status_code == 204
        assert "tiny-q4_k_m" not in router.service.catalog
        chat = {"model": "tiny", "messages": [{"role": "user", "content": "hi"}]}
        assert (await client.post("/v1/chat/completions", json=chat)).status_code == 404


@pytest.fixture
async def second_router(router: InProcessRouter, tmp_path: Path) -> AsyncIterator[RouterService]:
    settings = RouterSettings(home=tmp_path / "second", auto_distribute="none",
                              database_url=router.service.settings.database_url)  # fmt: skip
    service = await RouterService.open(settings)
    await service.start()
    yield service
    await service.close()


async def test_every_router_on_the_database_sees_a_registration_and_a_restart_keeps_it(
    router: InProcessRouter, second_router: RouterService
) -> None:
    status, _ = await register(router, model="hf.co/unsloth/Tiny-GGUF:Q8_0")
    assert status == 201
    assert "tiny-q8_0" not in second_router.catalog
    await second_router.registrations.sync()  # (its periodic read)
    assert "tiny-q8_0" in second_router.catalog
    restarted = await RouterService.open(router.service.settings)
    await restarted.start()
    try:
        assert restarted.catalog.get("tiny-q8_0") is not None
        assert hashlib.sha256(b"").hexdigest() != restarted.catalog.get("tiny-q8_0").sha256  # type: ignore[union-attr]
    finally:
        await restarted.close()
