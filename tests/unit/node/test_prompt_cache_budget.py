"""llama.cpp's host-memory prompt cache is a node setting and counts in a RAM budget."""

from __future__ import annotations

from pathlib import Path

from llmlb.common.settings import NodeSettings
from llmlb.common.wire import Device
from llmlb.node.engine import _engine_params
from llmlb.node.service import NodeService
from tests.support import write_tiny_gguf

GPU = Device(kind="cuda", name="GPU", memory_total=24 << 30, memory_free=24 << 30)


def service(home: Path, devices: list[Device], prompt_cache_mib: int = 512) -> NodeService:
    settings = NodeSettings(home=home, allow_cpu=True, prompt_cache_mib=prompt_cache_mib)
    node = NodeService(settings, devices, 8 << 30)
    home.mkdir(parents=True, exist_ok=True)
    node.store.add("tiny", write_tiny_gguf(home / "tiny.gguf", megabytes=1), sha256="-",
                   metadata={"chat_template": "qa"})  # fmt: skip
    return node


async def test_a_cpu_node_counts_the_prompt_cache_in_its_memory(tmp_path: Path) -> None:
    without = await service(tmp_path / "a", [], prompt_cache_mib=0).inventory.spec_for(
        "tiny", "generate"
    )
    default = await service(tmp_path / "b", []).inventory.spec_for("tiny", "generate")
    assert default.prompt_cache_mib == 512
    assert default.memory_bytes - without.memory_bytes == 512 << 20
    assert _engine_params(default).cache_ram_mib == 512  # what llama.cpp is told
    assert _engine_params(without).cache_ram_mib == 0


async def test_a_gpu_node_keeps_host_memory_out_of_its_gpu_budget(tmp_path: Path) -> None:
    without = await service(tmp_path / "a", [GPU], prompt_cache_mib=0).inventory.spec_for(
        "tiny", "generate"
    )
    default = await service(tmp_path / "b", [GPU]).inventory.spec_for("tiny", "generate")
    assert default.memory_bytes == without.memory_bytes
    embed = await service(tmp_path / "c", [GPU]).inventory.spec_for("tiny", "embed")
    assert embed.prompt_cache_mib == 0  # embeddings reuse no prompts
