"""One memory model for planning (catalog) and serving (node)."""

from __future__ import annotations

from pathlib import Path

from llmlb.models.catalog import CatalogEntry
from llmlb.models.gguf import read_gguf
from llmlb.models.memory import kv_cache_bytes, memory_needed
from llmlb.models.store import StoredModel
from llmlb.node.service import estimate_memory


def test_a_figure_given_by_the_operator_wins_everywhere() -> None:
    assert memory_needed(1000, kv_cache=500, required=7) == 7
    entry = CatalogEntry.model_validate(
        {"name": "m", "origin": {"url": "http://x/m.gguf"}, "size_bytes": 1000,
         "required_memory_bytes": 7}
    )  # fmt: skip
    assert entry.memory_needed() == 7


def test_planning_without_the_header_assumes_a_kv_cache_of_a_tenth() -> None:
    entry = CatalogEntry.model_validate(
        {"name": "m", "origin": {"url": "http://x/m.gguf"}, "size_bytes": 1000}
    )
    assert entry.memory_needed() == memory_needed(1000) == 1200


def test_the_node_uses_the_same_model_with_the_real_kv_cache(small_model_path: Path) -> None:
    info = read_gguf(small_model_path)
    size = small_model_path.stat().st_size
    model = StoredModel("gemma-3-270m", small_model_path, size, {})
    estimate = estimate_memory(model, info, 4096)
    layers = int(info.arch_value("block_count"))
    kv_heads = int(info.arch_value("attention.head_count_kv"))
    key_len = int(info.arch_value("attention.key_length"))
    value_len = int(info.arch_value("attention.value_length"))
    kv = kv_cache_bytes(4096, layers, kv_heads, key_len, value_len)
    assert estimate == int(size * 1.1) + kv
    assert estimate == memory_needed(size, kv_cache=kv)
