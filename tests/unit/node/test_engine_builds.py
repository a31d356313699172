"""Which engine build a machine needs (node.engine_builds), and how it is installed."""

from __future__ import annotations

import os

import pytest

from llmlb.common.wire import Device
from llmlb.node.engine_builds import (
    NoBuild,
    build_for,
    features_available,
    features_used,
    install_line,
    native_cmake_args,
    pip_environment,
)

NVIDIA = Device(kind="cuda", name="NVIDIA L4", memory_total=24 << 30, memory_free=23 << 30)
AMD = Device(kind="rocm", name="AMD MI300X", memory_total=192 << 30, memory_free=190 << 30)


@pytest.mark.parametrize(
    ("asked", "gpus", "driver", "system", "backend", "index"),
    [
        ("auto", [NVIDIA], (13, 2), "Linux", "cuda", "cu132"),
        ("auto", [NVIDIA], (12, 9), "Linux", "cuda", "cu128"),
        ("auto", [NVIDIA], (12, 4), "Linux", "cuda", "cu124"),
        ("auto", [NVIDIA], None, "Linux", "cuda", "cu124"),  # no driver figure: the oldest
        ("auto", [AMD], None, "Linux", "rocm", "rocm-6.4.1"),
        ("auto", [], None, "Darwin", "metal", None),  # PyPI's macOS build has Metal
        ("auto", [], None, "Linux", "cpu", None),
        ("vulkan", [AMD], None, "Linux", "vulkan", "vulkan"),
        ("cpu", [NVIDIA], (12, 8), "Linux", "cpu", None),  # the operator's choice stands
    ],
)
def test_the_build_follows_the_hardware_and_the_driver(
    asked: str, gpus: list[Device], driver: tuple[int, int] | None, system: str,
    backend: str, index: str | None,
) -> None:  # fmt: skip
    build = build_for(asked, gpus, driver, system)
    assert (build.backend, build.index) == (backend, index)


def test_a_driver_too_old_for_every_build_is_told_to_update() -> None:
    with pytest.raises(NoBuild, match=r"supports CUDA 12\.2.*update the driver"):
        build_for("auto", [NVIDIA], (12, 2), "Linux")
    with pytest.raises(NoBuild, match="Metal build is macOS's"):
        build_for("metal", [], None, "Linux")


def test_the_install_keeps_the_version_and_uses_the_one_index_alone() -> None:
    line = install_line(build_for("cuda", [NVIDIA], (12, 8), "Linux"), python="py")
    assert line[:3] == ["py", "-m", "pip"] and "--no-deps" in line
    assert line[-2:] == ["--index-url", "https://xorbitsai.github.io/xllamacpp/whl/cu128"]
    assert any(part.startswith("xllamacpp==") for part in line)  # the version llmlb has
    environ = pip_environment({"PIP_EXTRA_INDEX_URL": "file:///mirror", "PIP_FIND_LINKS": "/w",
                               "PIP_CERT": "/ca.pem", "PATH": "/bin"})  # fmt: skip
    assert environ == {"PIP_CERT": "/ca.pem", "PATH": "/bin", "PIP_CONFIG_FILE": os.devnull}


def test_cpu_features_are_read_as_llama_cpp_names_them() -> None:
    used = features_used("CPU : SSE3 = 1 | AVX = 1 | AVX2 = 1 | AVX512 = 0 | FMA = 1 | ")
    assert used == {"SSE3", "AVX", "AVX2", "FMA"}
    cpuinfo = "processor : 0\nflags : fpu avx avx2 fma avx512f avx512_vnni\nflags : avx512_bf16\n"
    assert features_available(cpuinfo) == {"AVX", "AVX2", "FMA", "AVX512", "AVX512_VNNI"}


def test_a_build_for_this_cpu_names_its_instruction_sets_and_never_native_or_amx() -> None:
    args = native_cmake_args({"AVX", "AVX2", "FMA", "F16C", "AVX512", "AVX512_VNNI"})
    assert "-DGGML_NATIVE=OFF" in args  # cpuid may advertise more than a process may use
    assert {"-DGGML_AVX512=ON", "-DGGML_AVX512_VNNI=ON", "-DGGML_AVX2=ON"} <= set(args)
    assert {"-DGGML_AVX512_BF16=OFF", "-DGGML_AVX512_VBMI=OFF", "-DGGML_AMX_INT8=OFF"} <= set(args)
    plain = native_cmake_args({"AVX", "AVX2", "FMA", "F16C"})
    assert "-DGGML_AVX512=OFF" in plain
