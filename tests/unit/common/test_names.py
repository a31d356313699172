"""Names as people type them (Ollama's ``model:tag``) and the one store name each maps to."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from llmlb.common.names import InvalidModelName, canonical_name, store_name
from llmlb.models.catalog import Catalog, CatalogError
from llmlb.router.distribution.policy import tier_for

GIB = 2**30


@pytest.mark.parametrize(
    ("typed", "stored"),
    [
        ("gpt-oss:20b", "gpt-oss-20b"),
        ("llama3.2:1b", "llama3.2-1b"),
        ("llama3.2:latest", "llama3.2"),
        ("qwen3-coder:30b", "qwen3-coder-30b"),
        ("gemma-3-270m", "gemma-3-270m"),
    ],
)
def test_a_tag_becomes_part_of_one_safe_name(typed: str, stored: str) -> None:
    assert store_name(typed) == stored
    assert ":" not in stored  # a Windows path cannot hold one


@pytest.mark.parametrize(
    "typed", ["../etc:passwd", "a:b:c", "gpt-oss:", ":20b", "x:../../y", "C:\\x", "a/b:1", ""]
)
def test_names_stay_validated(typed: str) -> None:
    with pytest.raises(InvalidModelName) as refused:
        store_name(typed)
    assert repr(typed) in refused.value.message  # as the user typed it, not as mapped


def test_the_shipped_catalog_answers_to_the_names_ollama_users_type() -> None:
    catalog = Catalog.load(None)
    for typed, entry in [
        ("gpt-oss:20b", "gpt-oss-20b"), ("gpt-oss:latest", "gpt-oss-20b"),
        ("gpt-oss", "gpt-oss-20b"), ("gpt-oss-safeguard:20b", "gpt-oss-safeguard-20b"),
        ("qwen3-coder:30b", "qwen3-coder-30b-a3b"), ("qwen3-coder", "qwen3-coder-30b-a3b"),
        ("llama3.2:1b", "llama-3.2-1b-instruct-q4_k_m"),
        ("llama3.2", "llama-3.2-3b-instruct-q4_k_m"), ("gemma3:270m", "gemma-3-270m"),
    ]:  # fmt: skip
        assert catalog.resolve(typed) == entry, typed
        assert catalog.get(typed) is not None and typed in catalog
    assert catalog.resolve("unknown:7b") == "unknown-7b"  # unknown stays unknown
    assert catalog.get("unknown:7b") is None


def test_an_operators_catalog_may_name_models_with_tags(tmp_path: Path) -> None:
    (tmp_path / "supported_models.json").write_text(json.dumps({"models": [
        {"name": "house-model:7b", "aliases": ["house-model"],
         "origin": {"url": "https://example.invalid/h.gguf"}, "size_bytes": 1000},
    ]}))  # fmt: skip
    catalog = Catalog.load(tmp_path)  # used to stop the router from starting
    assert catalog.resolve("house-model:7b") == catalog.resolve("house-model") == "house-model-7b"
    assert "house-model:7b" in catalog.aliases_of("house-model-7b")


@pytest.mark.parametrize(
    ("models", "tiers", "message"),
    [
        ([{"name": "mine", "aliases": ["gpt-oss:20b"]}], None, "already names 'gpt-oss-20b'"),
        ([{"name": "mine", "aliases": ["../x"]}], None, "invalid model name"),
        ([], [{"min_gpu_memory_bytes": 0, "model": "nope:1b"}], "tier 'nope:1b'"),
    ],
)
def test_a_clash_or_a_bad_name_in_an_override_is_named(
    tmp_path: Path, models: list[dict[str, object]], tiers: object, message: str
) -> None:
    for model in models:
        model["origin"] = {"url": "https://example.invalid/m.gguf"}
    table = {"models": models} | ({"tiers": tiers} if tiers is not None else {})
    (tmp_path / "supported_models.json").write_text(json.dumps(table))
    with pytest.raises(CatalogError, match=message):
        Catalog.load(tmp_path)


@pytest.mark.parametrize(
    ("free", "model"),
    [
        (80 * GIB, "gpt-oss-120b"), (72 * GIB, "gpt-oss-120b"), (70 * GIB, "gpt-oss-20b"),
        (24 * GIB, "gpt-oss-20b"), (16 * GIB, "gpt-oss-20b"),
        (12 * GIB, "llama-3.1-8b-instruct-q4_k_m"), (8 * GIB, "llama-3.1-8b-instruct-q4_k_m"),
        (6 * GIB, "llama-3.2-3b-instruct-q4_k_m"), (4 * GIB, "gemma-3-270m"), (0, "gemma-3-270m"),
    ],
)  # fmt: skip
def test_the_shipped_tiers_give_the_largest_model_that_fits(free: int, model: str) -> None:
    catalog = Catalog.load(None)
    by_name = {entry.name: entry for entry in catalog.entries()}
    tier = tier_for(catalog.tiers, by_name, free)
    assert tier is not None and tier.model == model
    if free:
        assert by_name[model].memory_needed() <= free


def test_a_tier_whose_model_does_not_fit_at_a_long_context_gives_way() -> None:
    catalog = Catalog.load(None)
    by_name = {entry.name: entry for entry in catalog.entries()}
    # 16 GiB holds gpt-oss 20b at 4k tokens of context, not at 128k (6 GiB of KV cache more),
    # and at 128k neither do the 8B nor the 3B: the smallest model is what is left.
    short = tier_for(catalog.tiers, by_name, 16 * GIB, 4096)
    assert short is not None and short.model == "gpt-oss-20b"
    long = tier_for(catalog.tiers, by_name, 16 * GIB, 131072)
    assert long is not None and long.model == "gemma-3-270m"
    assert by_name["gpt-oss-20b"].memory_needed(131072) > 16 * GIB


def test_the_tiers_setting_replaces_the_catalogs() -> None:
    from llmlb.models.catalog import tiers_from_setting

    catalog = Catalog.load(None, tiers=tiers_from_setting({0: "llama3.2:1b"}))
    assert [(t.min_gpu_memory_bytes, t.model) for t in catalog.tiers] == [
        (0, "llama-3.2-1b-instruct-q4_k_m")
    ]
    assert canonical_name("x:latest") == "x"
