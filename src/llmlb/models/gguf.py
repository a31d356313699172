"""A small, fast reader for GGUF headers.

The ``gguf`` package parses the whole tokenizer into numpy arrays (13 s for a 270M model on
this machine); the node only needs a few scalar keys and a completeness check, so this reader
skips arrays without materialising them and never reads tensor data.
"""

from __future__ import annotations

import io
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

GGUF_MAGIC = b"GGUF"

# ggml tensor types: (elements per block, bytes per block). Unknown types skip the size check.
_TYPE_SIZES: dict[int, tuple[int, int]] = {
    0: (1, 4), 1: (1, 2), 2: (32, 18), 3: (32, 20), 6: (32, 22), 7: (32, 24), 8: (32, 34),
    9: (32, 40), 10: (256, 84), 11: (256, 110), 12: (256, 144), 13: (256, 176),
    14: (256, 210), 15: (256, 292), 16: (256, 66), 17: (256, 74), 18: (256, 98),
    19: (256, 50), 20: (32, 18), 21: (256, 110), 22: (256, 82), 23: (256, 136), 24: (1, 1),
    25: (1, 2), 26: (1, 4), 27: (1, 8), 28: (1, 8), 29: (256, 56), 30: (1, 2),
    34: (256, 54), 35: (256, 66), 39: (32, 17), 40: (64, 36), 41: (128, 18),
}  # fmt: skip

# GGUF value types -> struct format of a scalar.
_SCALARS: dict[int, str] = {
    0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q",
    11: "<q", 12: "<d",
}  # fmt: skip
_STRING = 8
_ARRAY = 9

# Arrays longer than this are skipped (tokenizer vocabularies); their length is kept.
_MAX_KEPT_ARRAY = 64


class GGUFError(ValueError):
    """The file is not a readable, complete GGUF model."""


@dataclass
class GGUFInfo:
    version: int
    metadata: dict[str, Any]
    tensor_count: int
    data_offset: int
    required_size: int | None
    file_size: int
    skipped_arrays: dict[str, int] = field(default_factory=dict)

    @property
    def architecture(self) -> str:
        return str(self.metadata.get("general.architecture", ""))

    def arch_value(self, key: str) -> Any:
        return self.metadata.get(f"{self.architecture}.{key}")

    @property
    def chat_template(self) -> str | None:
        value = self.metadata.get("tokenizer.chat_template")
        return str(value) if value else None

    @property
    def context_length(self) -> int | None:
        value = self.arch_value("context_length")
        return int(value) if value else None

    @property
    def embedding_length(self) -> int | None:
        value = self.arch_value("embedding_length")
        return int(value) if value else None


class _Reader:
    def __init__(self, stream: BinaryIO, file_size: int, available: int | None = None) -> None:
        self._stream = stream
        self.file_size = file_size
        self._available = file_size if available is None else available  # bytes at hand
        self.position = 0

    def _check(self, size: int) -> None:
        # A length from a corrupt header can be anything up to 2**64: check it against the
        # file before asking for the memory (found by bench/distribution.py: MemoryError).
        if size > self.file_size - self.position:
            raise GGUFError("file ends inside the GGUF header (truncated or corrupt)")
        if size > self._available - self.position:
            raise GGUFIncomplete(f"the header goes on past byte {self._available}")

    def read(self, size: int) -> bytes:
        self._check(size)
        data = self._stream.read(size)
        if len(data) != size:
            raise GGUFError("file ends inside the GGUF header (truncated)")
        self.position += size
        return data

    def skip(self, size: int) -> None:
        self._check(size)
        self._stream.seek(size, 1)
        self.position += size

    def unpack(self, fmt: str) -> Any:
        return struct.unpack(fmt, self.read(struct.calcsize(fmt)))[0]

    def string(self) -> str:
        length = self.unpack("<Q")
        return self.read(length).decode("utf-8", errors="replace")

    def value(self, value_type: int) -> Any:
        if value_type in _SCALARS:
            return self.unpack(_SCALARS[value_type])
        if value_type == _STRING:
            return self.string()
        raise GGUFError(f"unknown GGUF value type {value_type}")


class GGUFIncomplete(GGUFError):
    """The bytes at hand end inside the header: read more of the file."""


def read_gguf(path: Path) -> GGUFInfo:
    """Read a GGUF file's header and check that the file holds all of its tensor data."""
    file_size = path.stat().st_size
    with path.open("rb") as stream:
        try:
            info = _read_header(_Reader(stream, file_size), str(path))
        except GGUFIncomplete as exc:
            raise GGUFError(f"{path}: {exc}") from None
    if info.required_size is not None and info.required_size > file_size:
        raise GGUFError(
            f"{path} is truncated: its tensors need {info.required_size} bytes, the file has "
            f"{file_size}"
        )
    return info


def read_gguf_header(head: bytes, file_size: int, where: str = "the file") -> GGUFInfo:
    """The header of a GGUF file of ``file_size`` bytes from its first bytes (``head``, e.g.
    a Range request's): GGUFIncomplete when they end inside the header."""
    return _read_header(_Reader(io.BytesIO(head), file_size, len(head)), where)


def _read_header(reader: _Reader, where: str) -> GGUFInfo:
    if reader.read(4) != GGUF_MAGIC:
        raise GGUFError(f"{where} is not a GGUF file (bad magic)")
    version = reader.unpack("<I")
    if version < 2:
        raise GGUFError(f"{where} uses GGUF version {version}; 2 or later is required")
    tensor_count = reader.unpack("<Q")
    kv_count = reader.unpack("<Q")
    metadata: dict[str, Any] = {}
    skipped: dict[str, int] = {}
    for _ in range(kv_count):
        key = reader.string()
        value_type = reader.unpack("<I")
        if value_type != _ARRAY:
            metadata[key] = reader.value(value_type)
            continue
        item_type = reader.unpack("<I")
        count = reader.unpack("<Q")
        if count <= _MAX_KEPT_ARRAY:
            metadata[key] = [reader.value(item_type) for _ in range(count)]
        else:
            skipped[key] = count
            _skip_array(reader, item_type, count)
    ends: list[int] = []
    for _ in range(tensor_count):
        reader.string()
        n_dims = reader.unpack("<I")
        elements = 1
        for _ in range(n_dims):
            elements *= reader.unpack("<Q")
        tensor_type = reader.unpack("<I")
        offset = reader.unpack("<Q")
        sizes = _TYPE_SIZES.get(tensor_type)
        ends.append(offset + elements // sizes[0] * sizes[1] if sizes else offset)
    alignment = int(metadata.get("general.alignment", 32))
    data_offset = -(-reader.position // alignment) * alignment
    required = data_offset + max(ends, default=0)
    return GGUFInfo(version, metadata, tensor_count, data_offset, required, reader.file_size,
                    skipped)  # fmt: skip


def _skip_array(reader: _Reader, item_type: int, count: int) -> None:
    if item_type in _SCALARS:
        reader.skip(struct.calcsize(_SCALARS[item_type]) * count)
    elif item_type == _STRING:
        for _ in range(count):
            reader.skip(reader.unpack("<Q"))
    else:
        raise GGUFError(f"unsupported GGUF array item type {item_type}")
