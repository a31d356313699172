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
            name = pynvml.nvmlDeviceGetName(handle)
            memory = pynvml.nvmlDeviceGetMemoryInfo(handle)
            devices.append(
                Device(
                    kind="cuda",
                    name=name.decode() if isinstance(name, bytes) else str(name),
                    memory_total=int(memory.total),
                    memory_free=int(memory.free),
                )
            )
        return devices
    finally:
        pynvml.nvmlShutdown()


class NvidiaMeter:
    """GPU busy percentage for heartbeats. NVML is initialised once, not per heartbeat."""

    def __init__(self) -> None:
        self._nvml: Any = None
        self._failed = False

    def utilization(self) -> float:
        """Mean busy percentage over NVIDIA devices (0 where NVML is absent)."""
        if self._nvml is None and not self._failed:
            try:
                import pynvml

                pynvml.nvmlInit()
                self._nvml = pynvml
            except Exception:
                self._failed = True
        if self._nvml is None:
            return 0.0
        nvml = self._nvml
        try:
            count = nvml.nvmlDeviceGetCount()
            busy = [
                nvml.nvmlDeviceGetUtilizationRates(nvml.nvmlDeviceGetHandleByIndex(i)).gpu
                for i in range(count)
            ]
        except Exception:
            return 0.0
        return float(sum(busy) / len(busy)) if busy else 0.0

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
            devices.append(
                Device(
                    kind="rocm",
                    name=str(info.get("market_name", "AMD GPU")),
                    memory_total=total,
                    memory_free=total - used,
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
