"""llama.cpp's own ``llama-server``, built on this machine for its CPU: the engine baseline.

The sources are those in PyPI's ``llama-cpp-python`` source distribution (PyPI is reachable
where GitHub may not be). The build names this CPU's instruction sets one by one, as
``llmlb engine install native`` does (``GGML_NATIVE=ON`` takes every set cpuid advertises, and
in a virtual machine that died with an illegal instruction); about 9 minutes on 2 cores, into
the bench cache, outside the repository, once.
"""

from __future__ import annotations

import subprocess
import sys
import tarfile
from pathlib import Path

from bench.procs import CACHE

SDIST_VERSION = "0.3.36"
FOLDER = CACHE / "llama-server-explicit"  # not the GGML_NATIVE=ON build of earlier runs


def _sources(log: Path) -> None:
    if (FOLDER / f"llama_cpp_python-{SDIST_VERSION}").exists():
        return
    FOLDER.mkdir(parents=True, exist_ok=True)
    with log.open("ab") as out:
        subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary",
                        ":all:", f"llama-cpp-python=={SDIST_VERSION}", "-d", str(FOLDER)],
                       stdout=out, stderr=out, check=True)  # fmt: skip
    archive = FOLDER / f"llama_cpp_python-{SDIST_VERSION}.tar.gz"
    with tarfile.open(archive) as tar:
        tar.extractall(FOLDER, filter="data")


def llama_server(log: Path, build: bool) -> Path | None:
    """The binary; built first when missing and ``build`` is set, else None."""
    sources = FOLDER / f"llama_cpp_python-{SDIST_VERSION}" / "vendor" / "llama.cpp"
    binary = sources / "build" / "bin" / "llama-server"  # linked to libraries beside it
    if binary.exists():
        return binary
    if not build:
        return None
    print("building llama.cpp's llama-server for this CPU (once; ~9 min on 2 cores)", flush=True)
    _sources(log)
    with log.open("ab") as out:
        for step in (
            ["cmake", "-S", str(sources), "-B", str(sources / "build"), *_cpu_options(),
             "-DLLAMA_CURL=OFF", "-DLLAMA_BUILD_TESTS=OFF", "-DLLAMA_BUILD_EXAMPLES=OFF",
             "-DCMAKE_BUILD_TYPE=Release"],
            ["cmake", "--build", str(sources / "build"), "--target", "llama-server", "-j"],
        ):  # fmt: skip
            if subprocess.run(step, stdout=out, stderr=out).returncode != 0:
                return None
    return binary if binary.exists() else None


def _cpu_options() -> list[str]:
    from llmlb.node.engine_builds import features_available, native_cmake_args

    return native_cmake_args(features_available(Path("/proc/cpuinfo").read_text()))


# Where `llmlb engine install native` (`make native`) keeps its wheels, one folder per build.
WHEELS = Path.home() / ".cache" / "llmlb" / "engine-wheels"
VENV = CACHE / "native-venv"


def native_python(log: Path) -> Path | None:
    """A Python whose llmlb runs on the engine ``make native`` built (a virtualenv of the bench
    cache, made once from the wheel ``make native`` left); None before ``make native``."""
    python = VENV / "bin" / "python"
    if (VENV / ".ready").exists():
        return python
    wheels = sorted(WHEELS.glob("native-*/xllamacpp-*.whl"))
    if not wheels:
        return None
    root = Path(__file__).resolve().parent.parent
    with log.open("ab") as out:
        for step in (
            [sys.executable, "-m", "venv", str(VENV)],
            [str(python), "-m", "pip", "install", "--quiet", "-e", str(root)],
            [str(python), "-m", "pip", "install", "--quiet", "--force-reinstall", "--no-deps",
             str(wheels[-1])],
        ):  # fmt: skip
            if subprocess.run(step, stdout=out, stderr=out).returncode != 0:
                return None
    (VENV / ".ready").touch()
    return python
