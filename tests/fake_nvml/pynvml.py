"""A stand-in for ``pynvml`` (nvidia-ml-py) that answers like the real one for the GPUs
described in ``$LLMLB_FAKE_NVML``: JSON ``{"driver": 12040, "gpus": [{"name", "total",
"free", "uuid", "util"}]}``. Tests put this folder first on ``PYTHONPATH`` (a node
subprocess) or in ``sys.modules`` (unit tests) to try multi-GPU machines without one.

Only the calls llmlb makes exist; each behaves as NVML documents it: names and UUIDs are
``str``, memory in bytes, ``nvmlInit`` raises when there is no driver (here: no variable).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Any


class NVMLError(Exception):
    pass


class NVMLError_LibraryNotFound(NVMLError):
    pass


@dataclass
class _Memory:
    total: int
    free: int
    used: int


@dataclass
class _Utilization:
    gpu: int
    memory: int


_state: dict[str, Any] = {"inits": 0}


def _machine() -> dict[str, Any]:
    described = os.environ.get("LLMLB_FAKE_NVML")
    if described is None:
        raise NVMLError_LibraryNotFound("NVML Shared Library Not Found")
    machine: dict[str, Any] = json.loads(described)
    return machine


def nvmlInit() -> None:
    _machine()
    _state["inits"] += 1


def nvmlShutdown() -> None:
    _state["inits"] -= 1


def _gpu(handle: int) -> dict[str, Any]:
    if _state["inits"] <= 0:
        raise NVMLError("Uninitialized")
    gpu: dict[str, Any] = _machine()["gpus"][handle]
    return gpu


def nvmlDeviceGetCount() -> int:
    return len(_machine()["gpus"])


def nvmlDeviceGetHandleByIndex(index: int) -> int:
    if not 0 <= index < nvmlDeviceGetCount():
        raise NVMLError("Invalid Argument")
    return index


def nvmlDeviceGetName(handle: int) -> str:
    return str(_gpu(handle)["name"])


def nvmlDeviceGetUUID(handle: int) -> str:
    return str(_gpu(handle)["uuid"])


def nvmlDeviceGetMemoryInfo(handle: int) -> _Memory:
    gpu = _gpu(handle)
    return _Memory(total=gpu["total"], free=gpu["free"], used=gpu["total"] - gpu["free"])


def nvmlDeviceGetUtilizationRates(handle: int) -> _Utilization:
    return _Utilization(gpu=int(_gpu(handle).get("util", 0)), memory=0)


def nvmlSystemGetCudaDriverVersion() -> int:
    return int(_machine().get("driver", 12040))
