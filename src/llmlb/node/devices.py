"""The devices a node serves on: the GPUs it may use, and whether its engine can drive them.

**Which GPUs.** CUDA reads ``CUDA_VISIBLE_DEVICES``, ROCm ``ROCR_VISIBLE_DEVICES`` then
``HIP_VISIBLE_DEVICES``: a comma-separated list of device indices or UUIDs (an unambiguous
prefix will do), in the order the process is to see them. The runtimes stop at the first
entry they cannot use (an index out of range, an unknown or ambiguous UUID, a repeat) and keep
the entries before it; an empty value hides every device. NVML and amdsmi ignore these
variables and list every device on the machine, so the node applies them itself (a node pinned
to one GPU reports that GPU, not all of them), then ``--gpus`` (the same syntax, over what is
visible). The engine is then pinned to exactly the devices reported, by UUID where there is one.

**Whether the engine can drive them.** llama.cpp lists the devices of the backends it was
built with (``xllamacpp.get_device_info()``). A node that found a GPU with an engine that has
no GPU backend would budget GPU memory and run everything on the CPU; it refuses to start
instead, naming the GPU, the engine's backends and the command that installs the right
engine. ``--allow-cpu`` runs it on the CPU anyway, as a CPU node (the router's CPU-node policy
applies), with the reason in its log and in every heartbeat (``EngineInfo.warning``).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, MutableMapping, Sequence
from dataclasses import dataclass

from llmlb.common.errors import LlmlbError
from llmlb.common.wire import Device, EngineInfo
from llmlb.node.engine_builds import install_hint

log = logging.getLogger(__name__)

# In the order the runtimes apply them: ROCm's ROCR layer first, then HIP over what it left.
MASKS = {"cuda": ("CUDA_VISIBLE_DEVICES",), "rocm": ("ROCR_VISIBLE_DEVICES", "HIP_VISIBLE_DEVICES")}


class NoGPU(LlmlbError):
    """The node found no GPU and was not told it may run on the CPU."""


class EngineMismatch(LlmlbError):
    """The node found a GPU that its engine cannot drive."""


def _index_of(entry: str, uuids: Sequence[str]) -> int | None:
    if entry.isdigit():
        index = int(entry)
        return index if index < len(uuids) else None
    lowered = entry.lower()
    matches = [i for i, uuid in enumerate(uuids) if uuid and uuid.lower().startswith(lowered)]
    return matches[0] if len(matches) == 1 else None


def apply_mask(mask: str | None, uuids: Sequence[str]) -> list[int]:
    """Indices of the devices (with ``uuids``, in enumeration order) that ``mask`` lets
    through, in the mask's order; every one when ``mask`` is None."""
    if mask is None:
        return list(range(len(uuids)))
    chosen: list[int] = []
    for raw in mask.split(","):
        index = _index_of(raw.strip(), uuids) if raw.strip() else None
        if index is None or index in chosen:
            break  # as the runtimes do: the list ends at the first entry they cannot use
        chosen.append(index)
    return chosen


def visible(gpus: list[Device], environ: Mapping[str, str], select: str | None) -> list[Device]:
    """The probed ``gpus`` this node may use: its vendor's visible-device variables, then
    ``select`` (``--gpus``) over what they leave."""
    kind = gpus[0].kind if gpus else "cpu"
    shown = list(gpus)
    for variable in MASKS.get(kind, ()):
        shown = [shown[i] for i in apply_mask(environ.get(variable), [g.uuid for g in shown])]
    if select is not None:
        picked = apply_mask(select, [g.uuid for g in shown])
        if len(picked) != len([e for e in select.split(",") if e.strip()]):
            raise LlmlbError(
                f"--gpus {select!r} names a GPU this node cannot see; it sees "
                + (", ".join(f"{i}: {g.name} ({g.uuid or 'no uuid'})" for i, g in enumerate(shown))
                   or "none")
            )  # fmt: skip
        shown = [shown[i] for i in picked]
    return shown


def pin_engine(gpus: list[Device], environ: MutableMapping[str, str]) -> None:
    """Show the engine exactly ``gpus``, in their order (before it first lists its devices)."""
    if not gpus or any(not g.uuid for g in gpus):
        return  # without ids the masks were applied by index, and stay as they are
    first, *later = MASKS.get(gpus[0].kind, ("",))
    if first:
        environ[first] = ",".join(g.uuid for g in gpus)
    for variable in later:  # already applied: the list above is what they left
        environ.pop(variable, None)


@dataclass(frozen=True)
class EngineDevice:
    """One device as llama.cpp lists it (``xllamacpp.get_device_info()``)."""

    name: str  # CPU, CUDA0, ROCm0, Vulkan0, Metal, ...
    description: str
    is_gpu: bool


def backend_of(device: EngineDevice) -> str:
    """``cuda``, ``rocm``, ``vulkan``, ``metal``, ``cpu``... from the device's name."""
    name = device.name.rstrip("0123456789").lower()
    return {"hip": "rocm", "mtl": "metal"}.get(name, name)


def engine_devices() -> list[EngineDevice]:
    import xllamacpp  # the engine: imported where it is used

    gpu_types = (1, 2)  # ggml_backend_dev_type: GPU, IGPU
    return [
        EngineDevice(
            str(d.get("name", "")),
            str(d.get("description", "")),
            int(d.get("type", 0)) in gpu_types,
        )
        for d in xllamacpp.get_device_info()
    ]


def engine_build() -> str:
    import xllamacpp

    features = [
        part.split("=")[0].split(":")[-1].strip()
        for part in xllamacpp.get_system_info().split("|")
        if part.strip().endswith("= 1")
    ]
    version = getattr(xllamacpp, "__version__", "unknown")
    return f"xllamacpp {version} ({' '.join(features)})"[:200]


def match_engine(
    gpus: list[Device], engine: list[EngineDevice], build: str, allow_cpu: bool,
    cpu: Device, cuda_driver: tuple[int, int] | None = None,
) -> tuple[list[Device], EngineInfo]:  # fmt: skip
    """The devices to report and the engine's description; raises EngineMismatch for GPUs
    the engine cannot drive (NoGPU for none) unless ``allow_cpu``."""
    engine_gpus = [d for d in engine if d.is_gpu]
    backends = sorted({backend_of(d) for d in engine}) or ["none"]
    if gpus and engine_gpus:
        backend = backend_of(engine_gpus[0])
        if len(engine_gpus) != len(gpus):
            seen = ", ".join(d.description or d.name for d in engine_gpus)
            log.warning("the engine sees %d GPU(s) (%s), the node reports %d: check the "
                        "visible-device settings", len(engine_gpus), seen, len(gpus))  # fmt: skip
        return gpus, EngineInfo(backend=backend, build=build)
    info = EngineInfo(backend="cpu", build=build)
    if gpus:
        names = ", ".join(f"{g.name} ({g.kind})" for g in gpus)
        problem = (
            f"found {names}, but the inference engine has no GPU backend (its backends: "
            f"{', '.join(backends)}), so every model would run on the CPU. Install the engine "
            f"for this GPU: {install_hint(gpus[0], cuda_driver)}"
        )
        if not allow_cpu:
            raise EngineMismatch(problem + "; or run with --allow-cpu to serve on the CPU anyway.")
        warning = problem + "; serving on the CPU as --allow-cpu asks."
        log.warning("%s", warning)
        return [cpu], info.model_copy(update={"warning": warning[:1000]})
    if not allow_cpu:
        raise NoGPU(
            "no GPU found (looked for NVIDIA via NVML, AMD via amdsmi/rocm-smi, Apple via "
            "system_profiler). Run with --allow-cpu (or LLMLB_ALLOW_CPU=1) to serve on the CPU."
        )
    log.warning("no GPU found: running on the CPU (%s) as --allow-cpu asks", cpu.name)
    return [cpu], info


def detect_devices(allow_cpu: bool, select: str | None = None) -> tuple[list[Device], EngineInfo]:
    """The GPUs this node may use and its engine can drive (or the CPU), and the engine."""
    from llmlb.node.gpu import cpu_device, cuda_driver_version, probe_gpus

    gpus = visible(probe_gpus(), os.environ, select)
    for gpu in gpus:
        log.info("GPU: %s (%s, %s), %d MiB", gpu.name, gpu.kind, gpu.uuid or "no uuid",
                 gpu.memory_total // 2**20)  # fmt: skip
    pin_engine(gpus, os.environ)
    driver = cuda_driver_version() if gpus and gpus[0].kind == "cuda" else None
    return match_engine(gpus, engine_devices(), engine_build(), allow_cpu, cpu_device(), driver)
