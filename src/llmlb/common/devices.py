"""Compute devices as nodes report them to the router."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Literal

DeviceKind = Literal["cuda", "rocm", "metal", "cpu"]


@dataclass(frozen=True)
class Device:
    kind: DeviceKind
    name: str
    memory_total: int
    memory_free: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def is_gpu(self) -> bool:
        return self.kind != "cpu"
