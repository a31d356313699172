"""GPU probe: NVIDIA through NVML, AMD through amdsmi or rocm-smi, Apple through system_profiler.

Each probe returns [] when its vendor's tooling is absent, so the first one that finds devices
wins. Parsing is split from the calls so it can be tested on recorded output.
"""

from __future__ import annotations

import contextlib
import json
import logging
import platform
import shutil
import subprocess
from typing import Any

import psutil

from llmlb.common.wire import Device

log = logging.getLogger(__name__)


def probe_nvidia() -> list[Device]:
    """Every NVIDIA GPU on the machine (NVML ignores CUDA_VISIBLE_DEVICES: node.devices
    applies it)."""
    try:
        import pynvml
    except ImportError:
        return []
    try:
        pynvml.nvmlInit()
    except Exception:  # NVMLError_LibraryNotFound, DriverNotLoaded, ...: no NVIDIA GPU here.
        return []
    try:
        devices = []
        for index in range(pynvml.nvmlDeviceGetCount()):
            handle = pynvml.nvmlDeviceGetHandleByIndex(index)
            # A GPU in MIG mode serves through its instances: each is a device of its own to
            # CUDA (named by its MIG- UUID in CUDA_VISIBLE_DEVICES), with its own memory.
            devices += [_nvidia_device(pynvml, h) for h in _mig_instances(pynvml, handle)] or [
                _nvidia_device(pynvml, handle)
            ]
        return devices
    finally:
        pynvml.nvmlShutdown()


def _nvidia_device(pynvml: Any, handle: Any) -> Device:
    memory = pynvml.nvmlDeviceGetMemoryInfo(handle)
    return Device(
        kind="cuda",
        name=_text(pynvml.nvmlDeviceGetName(handle)),
        memory_total=int(memory.total),
        memory_free=int(memory.free),
        uuid=_text(pynvml.nvmlDeviceGetUUID(handle)),
    )


def _mig_instances(pynvml: Any, handle: Any) -> list[Any]:
    """The MIG instances of a GPU in MIG mode; [] for one that is not."""
    try:
        current, _ = pynvml.nvmlDeviceGetMigMode(handle)
        if current != pynvml.NVML_DEVICE_MIG_ENABLE:
            return []
        slots = pynvml.nvmlDeviceGetMaxMigDeviceCount(handle)
    except Exception:  # NVML_ERROR_NOT_SUPPORTED: a GPU without MIG
        return []
    instances = []
    for slot in range(slots):
        with contextlib.suppress(Exception):  # an empty slot: NVML_ERROR_NOT_FOUND
            instances.append(pynvml.nvmlDeviceGetMigDeviceHandleByIndex(handle, slot))
    return instances


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def cuda_driver_version() -> tuple[int, int] | None:
    """The newest CUDA version the NVIDIA driver supports, e.g. (12, 4); None without NVML."""
    try:
        import pynvml

        pynvml.nvmlInit()
    except Exception:
        return None
    try:
        version = int(pynvml.nvmlSystemGetCudaDriverVersion())  # 12040 for 12.4
        return version // 1000, version % 1000 // 10
    except Exception:
        return None
    finally:
        pynvml.nvmlShutdown()


class NvidiaMeter:
    """GPU use and free memory for heartbeats, from NVML: initialised once and the handles of
    the reported GPUs kept, so a heartbeat costs a few NVML calls, not a probe."""

    def __init__(self, uuids: list[str] | None = None) -> None:
        self._uuids = uuids or []
        self._nvml: Any = None
        self._handles: list[Any] = []
        self._failed = False

    def _open(self) -> Any:
        if self._nvml is None and not self._failed:
            try:
                import pynvml

                pynvml.nvmlInit()
                count = pynvml.nvmlDeviceGetCount()
                handles = []
                for index in range(count):
                    handle = pynvml.nvmlDeviceGetHandleByIndex(index)
                    handles += _mig_instances(pynvml, handle) or [handle]
                if self._uuids:  # the reported GPUs, in the reported order
                    by_uuid = {_text(pynvml.nvmlDeviceGetUUID(h)): h for h in handles}
                    handles = [by_uuid[u] for u in self._uuids if u in by_uuid]
                self._nvml, self._handles = pynvml, handles
            except Exception:
                self._failed = True
        return self._nvml

    def utilization(self) -> float:
        """Mean busy percentage over the GPUs (0 where NVML is absent)."""
        return self.sample()[0]

    def sample(self) -> tuple[float, list[int]]:
        """(mean busy percentage, free bytes of each GPU); (0, []) where NVML is absent."""
        nvml = self._open()
        if nvml is None or not self._handles:
            return 0.0, []
        try:
            free = [int(nvml.nvmlDeviceGetMemoryInfo(h).free) for h in self._handles]
        except Exception:
            return 0.0, []
        busy = []
        for handle in self._handles:
            with contextlib.suppress(Exception):  # none for a MIG instance
                busy.append(nvml.nvmlDeviceGetUtilizationRates(handle).gpu)
        return (float(sum(busy) / len(busy)) if busy else 0.0), free

    def close(self) -> None:
        if self._nvml is not None:
            with contextlib.suppress(Exception):
                self._nvml.nvmlShutdown()
            self._nvml = None


def probe_amd() -> list[Device]:
    try:
        import amdsmi
    except ImportError:
        return _probe_rocm_smi()
    try:
        amdsmi.amdsmi_init()
    except Exception:
        return _probe_rocm_smi()
    try:
        devices = []
        for handle in amdsmi.amdsmi_get_processor_handles():
            info = amdsmi.amdsmi_get_gpu_asic_info(handle)
            total = amdsmi.amdsmi_get_gpu_memory_total(handle, amdsmi.AmdSmiMemoryType.VRAM)
            used = amdsmi.amdsmi_get_gpu_memory_usage(handle, amdsmi.AmdSmiMemoryType.VRAM)
            uuid = ""
            with contextlib.suppress(Exception):
                uuid = str(amdsmi.amdsmi_get_gpu_device_uuid(handle))
            devices.append(
                Device(
                    kind="rocm",
                    name=str(info.get("market_name", "AMD GPU")),
                    memory_total=total,
                    memory_free=total - used,
                    uuid=uuid,
                )
            )
        return devices
    finally:
        amdsmi.amdsmi_shut_down()


def _probe_rocm_smi() -> list[Device]:
    if shutil.which("rocm-smi") is None:
        return []
    try:
        out = subprocess.run(
            ["rocm-smi", "--showproductname", "--showmeminfo", "vram", "--json"],
            capture_output=True, text=True, timeout=10, check=True,
        ).stdout  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        return []
    return parse_rocm_smi(json.loads(out))


def parse_rocm_smi(data: dict[str, Any]) -> list[Device]:
    devices = []
    for card, fields in sorted(data.items()):
        if not card.startswith("card") or not isinstance(fields, dict):
            continue
        total = int(fields.get("VRAM Total Memory (B)", 0))
        used = int(fields.get("VRAM Total Used Memory (B)", 0))
        name = str(fields.get("Card Series") or fields.get("Card series") or "AMD GPU")
        devices.append(Device(kind="rocm", name=name, memory_total=total, memory_free=total - used))
    return devices


def probe_apple() -> list[Device]:
    if platform.system() != "Darwin" or shutil.which("system_profiler") is None:
        return []
    try:
        out = subprocess.run(
            ["system_profiler", "SPDisplaysDataType", "-json"],
            capture_output=True, text=True, timeout=20, check=True,
        ).stdout  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        return []
    memory = psutil.virtual_memory()
    return parse_system_profiler(json.loads(out), memory.total, memory.available)


def parse_system_profiler(data: dict[str, Any], ram_total: int, ram_free: int) -> list[Device]:
    """Apple silicon shares RAM with the GPU, so the GPU's memory is the machine's RAM."""
    devices = []
    for gpu in data.get("SPDisplaysDataType", []):
        name = str(gpu.get("sppci_model") or gpu.get("_name") or "Apple GPU")
        if "Apple" in name or gpu.get("sppci_vendor", "").endswith("apple"):
            devices.append(
                Device(kind="metal", name=name, memory_total=ram_total, memory_free=ram_free)
            )
    return devices


def cpu_device() -> Device:
    memory = psutil.virtual_memory()
    return Device(
        kind="cpu", name=platform.processor() or platform.machine(),
        memory_total=memory.total, memory_free=memory.available,
    )  # fmt: skip


def probe_gpus() -> list[Device]:
    for probe in (probe_nvidia, probe_amd, probe_apple):
        try:
            devices = probe()
        except Exception:  # a broken vendor library must not stop the node from starting
            log.exception("GPU probe %s failed", probe.__name__)
            continue
        if devices:
            return devices
    return []
