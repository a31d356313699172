"""Which build of the inference engine a machine needs, and the command that installs it.

xllamacpp (llama.cpp for Python) publishes a CPU build on PyPI (with Metal on macOS) and GPU
builds on indexes of its own: CUDA per toolkit line, ROCm, Vulkan. A CUDA build runs where
the NVIDIA driver supports its CUDA version or newer, so the build follows the driver (NVML
reports the newest CUDA version the driver supports). The version installed stays the one
llmlb was installed with: only the build changes.

The install uses the GPU index alone (``--no-deps``: xllamacpp has no dependencies), with
pip's configuration files and index settings left out (``pip_environment``): with PyPI, a
mirror or a wheel folder as an extra source, an unreachable GPU index would quietly reinstall
the CPU build.
"""

from __future__ import annotations

import importlib.metadata
import os
import platform
import re
import sys
from dataclasses import dataclass

from llmlb.common.errors import LlmlbError
from llmlb.common.wire import Device

WHEELS = "https://xorbitsai.github.io/xllamacpp/whl"
# xllamacpp's published CUDA builds, newest first: (the CUDA version a driver must support,
# the index's name). A driver supports every CUDA version up to its own.
CUDA_BUILDS = ((13, 2, "cu132"), (12, 8, "cu128"), (12, 4, "cu124"))
ROCM_BUILD = "rocm-6.4.1"
BACKENDS = ("auto", "cpu", "native", "cuda", "rocm", "vulkan", "metal")


class NoBuild(LlmlbError):
    """No published engine build fits this machine."""


@dataclass(frozen=True)
class Build:
    backend: str  # cpu, cuda, rocm, vulkan, metal
    index: str | None  # the wheel index's name under WHEELS; None: PyPI (or pip's own index)

    def url(self, wheels: str = WHEELS) -> str | None:
        return None if self.index is None else f"{wheels.rstrip('/')}/{self.index}"


def cuda_build(driver: tuple[int, int] | None) -> Build:
    """The newest CUDA build the driver supports."""
    if driver is None:
        return Build("cuda", CUDA_BUILDS[-1][2])  # the oldest: the likeliest to run
    for major, minor, name in CUDA_BUILDS:
        if driver >= (major, minor):
            return Build("cuda", name)
    raise NoBuild(
        f"the NVIDIA driver supports CUDA {driver[0]}.{driver[1]}, and llama.cpp's CUDA builds "
        f"need {CUDA_BUILDS[-1][0]}.{CUDA_BUILDS[-1][1]} or newer: update the driver"
    )


def build_for(
    backend: str, gpus: list[Device], cuda_driver: tuple[int, int] | None, system: str
) -> Build:
    """The build ``backend`` asks for (``auto``: the one the machine's GPUs need)."""
    if backend == "auto":
        kinds = {g.kind for g in gpus}
        backend = (
            "cuda" if "cuda" in kinds else "rocm" if "rocm" in kinds
            else "metal" if system == "Darwin" else "cpu"
        )  # fmt: skip
    if backend == "cuda":
        return cuda_build(cuda_driver)
    if backend == "rocm":
        return Build("rocm", ROCM_BUILD)
    if backend == "vulkan":
        return Build("vulkan", "vulkan")
    if backend in ("cpu", "metal"):
        if backend == "metal" and system != "Darwin":
            raise NoBuild("the Metal build is macOS's: this machine runs " + system)
        return Build(backend, None)
    raise NoBuild(f"unknown engine backend {backend!r}; one of {', '.join(BACKENDS)}")


def install_line(build: Build, python: str = "", wheels: str = WHEELS) -> list[str]:
    """The pip command that installs ``build`` of the installed xllamacpp version."""
    version = importlib.metadata.version("xllamacpp")
    line = [python or sys.executable, "-m", "pip", "install", "--force-reinstall", "--no-deps",
            "--retries", "1", f"xllamacpp=={version}"]  # fmt: skip
    url = build.url(wheels)
    return line + (["--index-url", url] if url else [])


# pip's settings that add places to install from; the rest (certificates, proxies, timeouts)
# still apply.
_INDEX_SETTINGS = ("PIP_INDEX_URL", "PIP_EXTRA_INDEX_URL", "PIP_FIND_LINKS", "PIP_NO_INDEX")


def pip_environment(environ: dict[str, str]) -> dict[str, str]:
    """The environment for an install from one index and nowhere else."""
    kept = {k: v for k, v in environ.items() if k.upper() not in _INDEX_SETTINGS}
    return kept | {"PIP_CONFIG_FILE": os.devnull}


def install_hint(gpu: Device, cuda_driver: tuple[int, int] | None) -> str:
    """What to run to get an engine for ``gpu``, for a message."""
    try:
        build = build_for(gpu.kind, [gpu], cuda_driver, platform.system())
    except NoBuild as exc:
        return exc.message
    pip = " ".join(install_line(build, python="python")[1:])
    return f"llmlb engine install {build.backend} (that is: python {pip})"


_FEATURE = re.compile(r"([A-Z0-9_]+) = 1")
CPU_FEATURES = ("AVX", "AVX2", "FMA", "F16C", "AVX512", "AVX512_VBMI", "AVX512_VNNI",
                "AVX512_BF16", "AMX_INT8")  # fmt: skip
# /proc/cpuinfo's names for the features llama.cpp reports
_CPUINFO = {"AVX": "avx", "AVX2": "avx2", "FMA": "fma", "F16C": "f16c", "AVX512": "avx512f",
            "AVX512_VBMI": "avx512vbmi", "AVX512_VNNI": "avx512_vnni",
            "AVX512_BF16": "avx512_bf16", "AMX_INT8": "amx_int8"}  # fmt: skip


def features_used(system_info: str) -> set[str]:
    """The CPU features an engine build uses (``xllamacpp.get_system_info()``)."""
    return set(_FEATURE.findall(system_info))


def features_available(cpuinfo: str) -> set[str]:
    """The CPU features the processor offers (``/proc/cpuinfo``'s flags), by llama.cpp's names."""
    flags: set[str] = set()
    for line in cpuinfo.splitlines():
        if line.startswith("flags"):
            flags |= set(line.split(":", 1)[1].split())
            break
    return {name for name, flag in _CPUINFO.items() if flag in flags}


# A build for this CPU names its instruction sets one by one (``GGML_NATIVE=OFF``): with
# ``GGML_NATIVE=ON`` the compiler takes every set cpuid advertises, and in a virtual machine
# that can be more than a process may use (seen here: an illegal instruction at the thread
# pool's start, AMX on or off). /proc/cpuinfo's flags are what the kernel lets processes use.
_CMAKE_OPTION = {"AVX": "GGML_AVX", "AVX2": "GGML_AVX2", "FMA": "GGML_FMA", "F16C": "GGML_F16C",
                 "AVX512": "GGML_AVX512", "AVX512_VBMI": "GGML_AVX512_VBMI",
                 "AVX512_VNNI": "GGML_AVX512_VNNI", "AVX512_BF16": "GGML_AVX512_BF16"}  # fmt: skip
# Sources llama.cpp's build would otherwise fetch, and AMX (its kernels need a kernel's leave).
_NATIVE_FIXED = ["-DGGML_NATIVE=OFF", "-DLLAMA_LLGUIDANCE=OFF", "-DLLAMA_BUILD_BORINGSSL=OFF",
                 "-DLLAMA_OPENSSL=OFF", "-DGGML_AMX_TILE=OFF", "-DGGML_AMX_INT8=OFF",
                 "-DGGML_AMX_BF16=OFF"]  # fmt: skip


def native_cmake_args(available: set[str]) -> list[str]:
    """CMake options for a build that uses exactly the instruction sets ``available``."""
    chosen = [f"-D{option}={'ON' if feature in available else 'OFF'}"
              for feature, option in _CMAKE_OPTION.items()]  # fmt: skip
    return _NATIVE_FIXED + chosen


def native_wanted(available: set[str]) -> set[str]:
    """The features a build for this CPU uses (what the installed build must have, at least,
    for a native install to have nothing to do)."""
    return available & set(_CMAKE_OPTION)


# Loads the model in argv[1] with the engine found first on sys.path and completes a few
# tokens: a build that cannot run on this CPU dies here, not in a node.
SMOKE_TEST = """
import sys, xllamacpp
params = xllamacpp.CommonParams()
params.model.path = sys.argv[1]
params.n_ctx, params.n_parallel, params.verbosity = 256, 1, -1
params.hostnames, params.port, params.api_keys = ["127.0.0.1"], 0, ["smoke-test"]
server = xllamacpp.Server(params)
answer = server.handle_completions({"prompt": "The capital of France is", "max_tokens": 4})
assert answer["usage"]["completion_tokens"] > 0, answer
print("smoke test:", repr(answer["choices"][0]["text"]))
"""
