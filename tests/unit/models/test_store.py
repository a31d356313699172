"""The model store: names can never leave the models folder; files land atomically."""

from pathlib import Path

import pytest

from llmlb.common.errors import CorruptMetadata
from llmlb.common.names import InvalidModelName, validate_name
from llmlb.models.store import ModelStore, sha256_file

BAD_NAMES = ["../etc", "..", "a/b", "/abs", "a\x00b", ".hidden", "a..b", "", "x" * 129, "a\\b"]


@pytest.mark.parametrize("name", BAD_NAMES)
def test_bad_names_are_refused(name: str, tmp_path: Path) -> None:
    with pytest.raises(InvalidModelName):
        validate_name(name)
    with pytest.raises(InvalidModelName):
        ModelStore(tmp_path).get(name)


@pytest.mark.parametrize("name", ["gemma-3-270m", "llama-3.2-1b-instruct_q4_k_m", "M"])
def test_good_names_pass(name: str) -> None:
    assert validate_name(name) == name


def test_add_links_records_sha256_and_lists(tmp_path: Path) -> None:
    source = tmp_path / "file.gguf"
    source.write_bytes(b"GGUF" + b"\0" * 100)
    store = ModelStore(tmp_path / "models")
    model = store.add("tiny", source, metadata={"chat_template": "qa"})
    assert model.path == tmp_path / "models" / "tiny" / "model.gguf"
    assert model.sha256 == sha256_file(source)
    assert model.metadata["chat_template"] == "qa"
    assert source.stat().st_nlink == 2  # hard-linked, not copied
    assert [m.name for m in store.list()] == ["tiny"]
    assert not list((tmp_path / "models" / "tiny").glob("*.partial"))


def test_a_partial_file_is_not_a_model(tmp_path: Path) -> None:
    folder = tmp_path / "models" / "half"
    folder.mkdir(parents=True)
    (folder / "model.gguf.partial").write_bytes(b"GGUF")
    store = ModelStore(tmp_path / "models")
    assert store.get("half") is None
    assert store.list() == []


def test_a_corrupt_metadata_file_is_an_error_naming_it(tmp_path: Path) -> None:
    store = ModelStore(tmp_path)
    for name in ("good", "broken"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "model.gguf").write_bytes(b"GGUF")
    (tmp_path / "good" / "metadata.json").write_text('{"sha256": "abc"}')
    (tmp_path / "broken" / "metadata.json").write_text("{not json")
    with pytest.raises(CorruptMetadata) as raised:
        store.get("broken")
    assert str(tmp_path / "broken" / "metadata.json") in raised.value.message
    # One broken folder does not hide the others from the listing.
    assert [m.name for m in store.list()] == ["good"]
    assert store.get("good").sha256 == "abc"  # type: ignore[union-attr]


def test_metadata_changes_are_seen(tmp_path: Path) -> None:
    store = ModelStore(tmp_path)
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "model.gguf").write_bytes(b"GGUF")
    store.write_metadata("m", {"sha256": "one"})
    assert store.get("m").sha256 == "one"  # type: ignore[union-attr]
    store.write_metadata("m", {"sha256": "two", "extra": 1})
    assert store.get("m").sha256 == "two"  # type: ignore[union-attr]
