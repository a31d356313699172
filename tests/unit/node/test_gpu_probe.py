"""GPU probe parsers on recorded tool output."""

from llmlb.common.wire import Device
from llmlb.node.gpu import parse_rocm_smi, parse_system_profiler
from llmlb.node.service import default_memory_budget

ROCM_SMI = {
    "card0": {
        "Card Series": "AMD Instinct MI210",
        "VRAM Total Memory (B)": "68702699520",
        "VRAM Total Used Memory (B)": "10960896",
    },
    "system": {"Driver version": "6.7.0"},
}

SYSTEM_PROFILER = {
    "SPDisplaysDataType": [
        {
            "_name": "Apple M2 Max",
            "sppci_model": "Apple M2 Max",
            "sppci_vendor": "sppci_vendor_apple",
        }
    ]
}


def test_rocm_smi_json() -> None:
    assert parse_rocm_smi(ROCM_SMI) == [
        Device(
            kind="rocm",
            name="AMD Instinct MI210",
            memory_total=68702699520,
            memory_free=68702699520 - 10960896,
        )
    ]


def test_system_profiler_reports_unified_memory() -> None:
    devices = parse_system_profiler(SYSTEM_PROFILER, ram_total=64 * 2**30, ram_free=40 * 2**30)
    assert devices == [
        Device(kind="metal", name="Apple M2 Max", memory_total=64 * 2**30, memory_free=40 * 2**30)
    ]


def test_default_budget_is_gpu_memory_else_most_of_ram() -> None:
    gpus = [
        Device(kind="cuda", name="A", memory_total=24 * 2**30, memory_free=20 * 2**30),
        Device(kind="cuda", name="B", memory_total=24 * 2**30, memory_free=1),
    ]
    assert default_memory_budget(gpus, ram_total=10**12) == 48 * 2**30
    cpu = [Device(kind="cpu", name="x86_64", memory_total=100, memory_free=50)]
    assert default_memory_budget(cpu, ram_total=1000) == 800
