"""The GGUF header reader on tiny files written with the ``gguf`` package."""

from pathlib import Path

import numpy as np
import pytest
from gguf import GGUFWriter

from llmlb.models.gguf import GGUFError, read_gguf


def write_tiny(path: Path, tokens: int = 1000) -> Path:
    writer = GGUFWriter(str(path), "llama")
    writer.add_name("Tiny Test Instruct")
    writer.add_context_length(256)
    writer.add_embedding_length(8)
    writer.add_block_count(1)
    writer.add_token_list([f"t{i}" for i in range(tokens)])
    writer.add_chat_template("{{ messages }}")
    writer.add_tensor("w", np.ones((4, 8), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def test_reads_scalar_metadata_and_skips_long_arrays(tmp_path: Path) -> None:
    info = read_gguf(write_tiny(tmp_path / "tiny.gguf"))
    assert info.architecture == "llama"
    assert info.metadata["general.name"] == "Tiny Test Instruct"
    assert info.context_length == 256
    assert info.embedding_length == 8
    assert info.chat_template == "{{ messages }}"
    assert info.skipped_arrays == {"tokenizer.ggml.tokens": 1000}
    assert info.tensor_count == 1
    assert info.required_size == info.file_size


def test_truncated_file_is_reported_with_sizes(tmp_path: Path) -> None:
    path = write_tiny(tmp_path / "tiny.gguf")
    data = path.read_bytes()
    path.write_bytes(data[:-16])
    with pytest.raises(GGUFError, match=rf"truncated: .* need {len(data)} bytes"):
        read_gguf(path)


def test_file_cut_inside_the_header(tmp_path: Path) -> None:
    path = write_tiny(tmp_path / "tiny.gguf")
    path.write_bytes(path.read_bytes()[:40])
    with pytest.raises(GGUFError, match="truncated"):
        read_gguf(path)


def test_not_a_gguf_file(tmp_path: Path) -> None:
    path = tmp_path / "x.gguf"
    path.write_bytes(b"<html>not a model</html>")
    with pytest.raises(GGUFError, match="not a GGUF file"):
        read_gguf(path)


def test_a_corrupt_length_is_an_error_not_a_huge_allocation(tmp_path: Path) -> None:
    """Found by bench/distribution.py: garbage after the magic read as a 2**60-byte key name
    raised MemoryError, and the download failed with an empty reason."""
    path = tmp_path / "corrupt.gguf"
    header = b"GGUF" + (3).to_bytes(4, "little") + (1).to_bytes(8, "little")
    path.write_bytes(
        header + (1).to_bytes(8, "little") + (1 << 60).to_bytes(8, "little") + b"x" * 64
    )
    with pytest.raises(GGUFError, match="truncated or corrupt"):
        read_gguf(path)
