"""A stand-in for ROCm's ``amdsmi`` that answers like the real one for the GPUs described in
``$LLMLB_FAKE_AMDSMI``: JSON ``{"gpus": [{"name", "total", "free", "uuid"}]}``. Only the
calls llmlb makes exist; ``amdsmi_init`` raises without the variable, as without a driver.
"""

from __future__ import annotations

import enum
import json
import os
from typing import Any


class AmdSmiException(Exception):
    pass


class AmdSmiMemoryType(enum.IntEnum):
    VRAM = 0
    VIS_VRAM = 1
    GTT = 2


def _gpus() -> list[dict[str, Any]]:
    described = os.environ.get("LLMLB_FAKE_AMDSMI")
    if described is None:
        raise AmdSmiException("AMDSMI_STATUS_DRIVER_NOT_LOADED")
    gpus: list[dict[str, Any]] = json.loads(described)["gpus"]
    return gpus


def amdsmi_init() -> None:
    _gpus()


def amdsmi_shut_down() -> None:
    pass


def amdsmi_get_processor_handles() -> list[int]:
    return list(range(len(_gpus())))


def amdsmi_get_gpu_asic_info(handle: int) -> dict[str, Any]:
    return {"market_name": _gpus()[handle]["name"], "vendor_id": "0x1002"}


def amdsmi_get_gpu_memory_total(handle: int, kind: AmdSmiMemoryType) -> int:
    return int(_gpus()[handle]["total"])


def amdsmi_get_gpu_memory_usage(handle: int, kind: AmdSmiMemoryType) -> int:
    gpu = _gpus()[handle]
    return int(gpu["total"] - gpu["free"])


def amdsmi_get_gpu_device_uuid(handle: int) -> str:
    return str(_gpus()[handle]["uuid"])
