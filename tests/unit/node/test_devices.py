"""Which GPUs a node serves on (node.devices, node.gpu): visible-device masks and --gpus on
machines of 1, 2 and 8 GPUs (through a stand-in for NVML that answers like the real one), and
whether the engine can drive what was found."""

from __future__ import annotations

import importlib
import json
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from llmlb.common.errors import LlmlbError
from llmlb.common.wire import Device
from llmlb.node import gpu as probes
from llmlb.node.devices import (
    EngineDevice,
    EngineMismatch,
    NoGPU,
    apply_mask,
    backend_of,
    match_engine,
    pin_engine,
    visible,
)

GiB = 1 << 30
FAKE_GPUS = Path(__file__).resolve().parents[2] / "fake_gpus"


def machine(*sizes: int, driver: int = 12040) -> dict[str, object]:
    return {
        "driver": driver,
        "gpus": [
            {"name": f"NVIDIA GPU {size}G", "total": size * GiB, "free": size * GiB - GiB,
             "uuid": f"GPU-{index:08x}-aaaa-bbbb-cccc-{index:012x}", "util": 10 * index}
            for index, size in enumerate(sizes)
        ],
    }  # fmt: skip


@pytest.fixture
def nvml(monkeypatch: pytest.MonkeyPatch) -> Iterator[pytest.MonkeyPatch]:
    """The stand-in NVML as ``pynvml``; the machine set with ``LLMLB_FAKE_NVML``."""
    monkeypatch.syspath_prepend(str(FAKE_GPUS))
    monkeypatch.delitem(sys.modules, "pynvml", raising=False)
    importlib.import_module("pynvml")
    yield monkeypatch
    sys.modules.pop("pynvml", None)


def probed(nvml: pytest.MonkeyPatch, *sizes: int) -> list[Device]:
    nvml.setenv("LLMLB_FAKE_NVML", json.dumps(machine(*sizes)))
    return probes.probe_nvidia()


UUIDS = ["GPU-0000aaaa-1", "GPU-0000bbbb-2", "GPU-1111cccc-3"]


@pytest.mark.parametrize(
    ("mask", "chosen"),
    [
        (None, [0, 1, 2]),  # unset: every device
        ("", []),  # empty: none
        ("2,0", [2, 0]),  # in the mask's order
        ("1", [1]),
        ("0,7,1", [0]),  # the list ends at the first index out of range
        ("0,0,1", [0]),  # ... and at a repeat
        ("GPU-1111", [2]),  # a UUID's unambiguous prefix
        ("GPU-0000", []),  # an ambiguous one ends the list at once
        ("gpu-0000bbbb-2, 0", [1, 0]),  # case and spaces as CUDA takes them
        ("-1,0", []),  # CUDA's way to hide every device
    ],
)
def test_a_visible_device_mask_as_the_runtimes_read_it(mask: str | None, chosen: list[int]) -> None:
    assert apply_mask(mask, UUIDS) == chosen


def test_one_gpu_is_reported_as_it_is(nvml: pytest.MonkeyPatch) -> None:
    (gpu,) = probed(nvml, 24)
    assert (gpu.kind, gpu.name, gpu.memory_total, gpu.memory_free) == (
        "cuda", "NVIDIA GPU 24G", 24 * GiB, 23 * GiB
    )  # fmt: skip
    assert gpu.uuid.startswith("GPU-00000000")


def test_a_node_pinned_to_one_gpu_reports_that_gpu_not_the_sum(nvml: pytest.MonkeyPatch) -> None:
    gpus = probed(nvml, 80, 80, 80, 80, 24, 24, 12, 12)
    assert len(gpus) == 8  # NVML lists every GPU of the machine
    shown = visible(gpus, {"CUDA_VISIBLE_DEVICES": "4"}, None)
    assert [g.memory_total for g in shown] == [24 * GiB]
    by_uuid = visible(gpus, {"CUDA_VISIBLE_DEVICES": gpus[6].uuid}, None)
    assert by_uuid == [gpus[6]]
    assert visible(gpus, {"CUDA_VISIBLE_DEVICES": "7,1"}, None) == [gpus[7], gpus[1]]
    assert visible(gpus, {}, None) == gpus


def test_gpus_selects_among_the_visible_ones_in_their_order(nvml: pytest.MonkeyPatch) -> None:
    gpus = probed(nvml, 24, 12, 80, 8)
    # CUDA shows 3,2,0 as devices 0,1,2: --gpus counts in what is visible, as the engine will.
    shown = visible(gpus, {"CUDA_VISIBLE_DEVICES": "3,2,0"}, "0,2")
    assert shown == [gpus[3], gpus[0]]
    assert visible(gpus, {}, gpus[2].uuid[:12]) == [gpus[2]]


def test_gpus_that_names_a_gpu_the_node_cannot_see_is_refused(nvml: pytest.MonkeyPatch) -> None:
    gpus = probed(nvml, 24, 24)
    with pytest.raises(LlmlbError, match="--gpus '1,5' names a GPU this node cannot see"):
        visible(gpus, {}, "1,5")
    with pytest.raises(LlmlbError, match="it sees 0: NVIDIA GPU 24G"):
        visible(gpus, {"CUDA_VISIBLE_DEVICES": "0"}, "1")


def test_the_engine_is_pinned_to_exactly_the_reported_gpus(nvml: pytest.MonkeyPatch) -> None:
    gpus = probed(nvml, 24, 12, 80)
    environ = {"CUDA_VISIBLE_DEVICES": "2,0"}
    pin_engine(visible(gpus, environ, "1"), environ)
    assert environ["CUDA_VISIBLE_DEVICES"] == gpus[0].uuid  # by id: no renumbering surprise


def test_no_nvml_means_no_nvidia_gpu(nvml: pytest.MonkeyPatch) -> None:
    nvml.delenv("LLMLB_FAKE_NVML", raising=False)
    assert probes.probe_nvidia() == []
    assert probes.cuda_driver_version() is None


def test_heartbeats_read_fresh_free_memory_of_the_reported_gpus(nvml: pytest.MonkeyPatch) -> None:
    gpus = probed(nvml, 24, 12, 80)
    meter = probes.NvidiaMeter([gpus[2].uuid, gpus[0].uuid])
    assert meter.sample() == (10.0, [79 * GiB, 23 * GiB])  # util 20 and 0; in reported order
    changed = machine(24, 12, 80)
    changed["gpus"][2]["free"] = 5 * GiB  # type: ignore[index]
    nvml.setenv("LLMLB_FAKE_NVML", json.dumps(changed))
    assert meter.sample()[1] == [5 * GiB, 23 * GiB]  # a model loaded since: the figure moves
    meter.close()


CPU = Device(kind="cpu", name="EPYC", memory_total=24 * GiB, memory_free=20 * GiB)
CPU_ENGINE = [EngineDevice("CPU", "AMD EPYC", is_gpu=False)]
CUDA_ENGINE = [EngineDevice("CUDA0", "NVIDIA GPU 24G", True), *CPU_ENGINE]
GPU = Device(kind="cuda", name="NVIDIA GPU 24G", memory_total=24 * GiB, memory_free=23 * GiB)


def test_a_gpu_the_engine_cannot_drive_is_refused_with_what_to_install() -> None:
    with pytest.raises(EngineMismatch) as refused:
        match_engine([GPU], CPU_ENGINE, "xllamacpp 1 (AVX2)", False, CPU, (12, 8))
    message = refused.value.message
    assert "found NVIDIA GPU 24G (cuda)" in message
    assert "its backends: cpu" in message
    assert "llmlb engine install cuda" in message
    assert "--index-url https://xorbitsai.github.io/xllamacpp/whl/cu128" in message
    assert "--allow-cpu" in message


def test_allow_cpu_serves_on_the_cpu_and_says_why() -> None:
    devices, engine = match_engine([GPU], CPU_ENGINE, "xllamacpp 1 (AVX2)", True, CPU, (12, 8))
    assert devices == [CPU]  # a CPU node: the router's CPU-node policy applies
    assert engine.backend == "cpu" and "NVIDIA GPU 24G" in engine.warning


def test_an_engine_that_drives_the_gpu_reports_its_backend() -> None:
    devices, engine = match_engine([GPU], CUDA_ENGINE, "xllamacpp 1 (AVX2)", False, CPU)
    assert devices == [GPU] and (engine.backend, engine.warning) == ("cuda", "")


def test_no_gpu_at_all_needs_allow_cpu() -> None:
    with pytest.raises(NoGPU, match="--allow-cpu"):
        match_engine([], CPU_ENGINE, "b", False, CPU)
    assert match_engine([], CPU_ENGINE, "b", True, CPU)[0] == [CPU]


def test_backends_are_named_from_the_engines_devices() -> None:
    names = ["CPU", "CUDA0", "CUDA1", "ROCm0", "Vulkan0", "Metal", "HIP0"]
    assert [backend_of(EngineDevice(n, "", n != "CPU")) for n in names] == [
        "cpu", "cuda", "cuda", "rocm", "vulkan", "metal", "rocm"
    ]  # fmt: skip


def test_a_gpu_in_mig_mode_is_its_instances(nvml: pytest.MonkeyPatch) -> None:
    described = machine(80, 24)
    h100 = described["gpus"][0]  # type: ignore[index]
    h100["mig"] = [
        {"name": "NVIDIA H100 MIG 3g.40gb", "total": 40 * GiB, "free": 39 * GiB,
         "uuid": "MIG-aaaaaaaa-0000-0000-0000-000000000001"},
        {"name": "NVIDIA H100 MIG 3g.40gb", "total": 40 * GiB, "free": 40 * GiB,
         "uuid": "MIG-aaaaaaaa-0000-0000-0000-000000000002"},
    ]  # fmt: skip
    nvml.setenv("LLMLB_FAKE_NVML", json.dumps(described))
    gpus = probes.probe_nvidia()
    assert [(g.name, g.memory_total // GiB) for g in gpus] == [
        ("NVIDIA H100 MIG 3g.40gb", 40), ("NVIDIA H100 MIG 3g.40gb", 40), ("NVIDIA GPU 24G", 24)
    ]  # fmt: skip
    # Pinned to one instance by its MIG UUID, as CUDA takes it.
    (instance,) = visible(
        gpus, {"CUDA_VISIBLE_DEVICES": "MIG-aaaaaaaa-0000-0000-0000-000000000002"}, None
    )
    assert instance.memory_free == 40 * GiB
    meter = probes.NvidiaMeter([instance.uuid])
    assert meter.sample() == (0.0, [40 * GiB])  # no utilisation for an instance; memory yes
    meter.close()


def test_amd_gpus_follow_hip_and_rocr_visible_devices(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.syspath_prepend(str(FAKE_GPUS))
    monkeypatch.delitem(sys.modules, "amdsmi", raising=False)
    cards = [{"name": f"AMD Instinct MI300X {i}", "total": 192 * GiB, "free": 190 * GiB,
              "uuid": f"GPU-amd0000{i}"} for i in range(4)]  # fmt: skip
    monkeypatch.setenv("LLMLB_FAKE_AMDSMI", json.dumps({"gpus": cards}))
    gpus = probes.probe_amd()
    sys.modules.pop("amdsmi", None)
    assert [(g.kind, g.uuid) for g in gpus] == [("rocm", f"GPU-amd0000{i}") for i in range(4)]
    # ROCR first, then HIP over what ROCR left, as the ROCm runtime applies them.
    environ = {"ROCR_VISIBLE_DEVICES": "3,1,0", "HIP_VISIBLE_DEVICES": "0,2"}
    shown = visible(gpus, environ, None)
    assert [g.name for g in shown] == ["AMD Instinct MI300X 3", "AMD Instinct MI300X 0"]
    pin_engine(shown, environ)  # the engine sees exactly those, by UUID, HIP's mask spent
    assert environ == {"ROCR_VISIBLE_DEVICES": "GPU-amd00003,GPU-amd00000"}
