"""A stand-in for ``pynvml`` (nvidia-ml-py) that answers like the real one for the GPUs
described in ``$LLMLB_FAKE_NVML``: JSON ``{"driver": 12040, "gpus": [{"name", "total",
"free", "uuid", "util", "mig": [{"name", "total", "free", "uuid"}]}]}`` (a GPU with a
``mig`` list is in MIG mode, and those are its instances). Tests put this folder first on
``PYTHONPATH`` (a node subprocess) or in ``sys.modules`` (unit tests) to try multi-GPU
machines without one.

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


NVML_DEVICE_MIG_ENABLE = 1
NVML_DEVICE_MIG_DISABLE = 0
_MIG = 1000  # handles of MIG instances: _MIG * (parent + 1) + index


def _device(handle: int) -> dict[str, Any]:
    if handle >= _MIG:
        parent, index = divmod(handle, _MIG)
        instance: dict[str, Any] = _gpu(parent - 1)["mig"][index]
        return instance
    return _gpu(handle)


def nvmlDeviceGetMigMode(handle: int) -> tuple[int, int]:  # (current, pending)
    mode = NVML_DEVICE_MIG_ENABLE if "mig" in _gpu(handle) else NVML_DEVICE_MIG_DISABLE
    return mode, mode


def nvmlDeviceGetMaxMigDeviceCount(handle: int) -> int:
    return 7 if "mig" in _gpu(handle) else 0


def nvmlDeviceGetMigDeviceHandleByIndex(handle: int, index: int) -> int:
    if index >= len(_gpu(handle).get("mig", [])):
        raise NVMLError("Not Found")  # as NVML answers for an empty instance slot
    return _MIG * (handle + 1) + index


def nvmlDeviceGetCount() -> int:
    return len(_machine()["gpus"])


def nvmlDeviceGetHandleByIndex(index: int) -> int:
    if not 0 <= index < nvmlDeviceGetCount():
        raise NVMLError("Invalid Argument")
    return index


def nvmlDeviceGetName(handle: int) -> str:
    return str(_device(handle)["name"])


def nvmlDeviceGetUUID(handle: int) -> str:
    return str(_device(handle)["uuid"])


def nvmlDeviceGetMemoryInfo(handle: int) -> _Memory:
    gpu = _device(handle)
    return _Memory(total=gpu["total"], free=gpu["free"], used=gpu["total"] - gpu["free"])


def nvmlDeviceGetUtilizationRates(handle: int) -> _Utilization:
    if handle >= _MIG:
        raise NVMLError("Not Supported")  # NVML has no utilisation for MIG instances
    return _Utilization(gpu=int(_gpu(handle).get("util", 0)), memory=0)


def nvmlSystemGetCudaDriverVersion() -> int:
    return int(_machine().get("driver", 12040))
