"""One memory model for planning (the router, from the catalog) and serving (the node, from
the GGUF header)."""

from __future__ import annotations

from pathlib import Path

import pytest

from llmlb.models.catalog import Catalog, CatalogEntry, serving_metadata
from llmlb.models.gguf import read_gguf
from llmlb.models.memory import kv_bytes_per_token, kv_bytes_per_token_of, memory_needed
from llmlb.models.store import StoredModel
from llmlb.node.inventory import estimate_memory


def test_a_figure_given_by_the_operator_wins_everywhere() -> None:
    assert memory_needed(1000, kv_cache=500, required=7) == 7
    entry = CatalogEntry.model_validate(
        {"name": "m", "origin": {"url": "http://x/m.gguf"}, "size_bytes": 1000,
         "required_memory_bytes": 7, "kv_bytes_per_token": 10}
    )  # fmt: skip
    assert entry.memory_needed() == entry.memory_needed(100_000) == 7


def test_planning_without_header_figures_assumes_a_kv_cache_of_a_tenth() -> None:
    entry = CatalogEntry.model_validate(
        {"name": "m", "origin": {"url": "http://x/m.gguf"}, "size_bytes": 1000}
    )
    assert entry.memory_needed() == memory_needed(1000) == 1200


@pytest.mark.parametrize("ctx_size", [1024, 4096, 32768])
def test_the_plan_for_the_shipped_small_model_is_what_its_node_will_take(
    small_model_path: Path, ctx_size: int
) -> None:
    """The router plans from the catalog entry; the node estimates from the file's header,
    with the metadata the catalog gave it. Both must say the same, at any context size."""
    entry = Catalog.load(None).get("gemma-3-270m")
    assert entry is not None
    info = read_gguf(small_model_path)
    assert entry.kv_bytes_per_token == kv_bytes_per_token_of(info)
    size = small_model_path.stat().st_size
    assert entry.size_bytes == size
    stored = StoredModel("gemma-3-270m", small_model_path, size, serving_metadata(entry.public()))
    assert entry.memory_needed(ctx_size) == estimate_memory(stored, info, ctx_size)
    # Weights, a tenth for compute buffers, and the KV cache of the whole context.
    layers = int(info.arch_value("block_count"))
    kv_heads = int(info.arch_value("attention.head_count_kv"))
    key_len = int(info.arch_value("attention.key_length"))
    value_len = int(info.arch_value("attention.value_length"))
    per_token = kv_bytes_per_token(layers, kv_heads, key_len, value_len)
    assert estimate_memory(stored, info, ctx_size) == int(size * 1.1) + ctx_size * per_token


def test_every_shipped_entry_can_be_planned_at_the_default_context() -> None:
    for entry in Catalog.load(None).entries():
        assert entry.size_bytes and entry.kv_bytes_per_token, entry.name
        assert entry.memory_needed() > entry.size_bytes
