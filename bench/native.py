"""llama.cpp's own ``llama-server``, built on this machine for its CPU: the engine baseline.

The sources are those in PyPI's ``llama-cpp-python`` source distribution (PyPI is reachable
where GitHub may not be). The build (``-DGGML_NATIVE=ON``, about 9 minutes on 2 cores) goes to
the bench cache, outside the repository, once.
"""

from __future__ import annotations

import subprocess
import sys
import tarfile
from pathlib import Path

from bench.procs import CACHE

SDIST_VERSION = "0.3.36"
# As in the Makefile's `native`: a CPU may list AMX while the kernel or a sandbox refuses it
# to processes (here: SIGILL in ggml's AMX kernels), so the native build leaves it out.
NO_AMX = "-mno-amx-tile -mno-amx-int8 -mno-amx-bf16"
FOLDER = CACHE / "llama-server"


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
            ["cmake", "-S", str(sources), "-B", str(sources / "build"), "-DGGML_NATIVE=ON",
             "-DLLAMA_CURL=OFF", "-DLLAMA_BUILD_TESTS=OFF", "-DLLAMA_BUILD_EXAMPLES=OFF",
             "-DCMAKE_BUILD_TYPE=Release", f"-DCMAKE_C_FLAGS={NO_AMX}",
             f"-DCMAKE_CXX_FLAGS={NO_AMX}"],
            ["cmake", "--build", str(sources / "build"), "--target", "llama-server", "-j"],
        ):  # fmt: skip
            if subprocess.run(step, stdout=out, stderr=out).returncode != 0:
                return None
    return binary if binary.exists() else None


WHEELS = Path.home() / ".cache" / "llmlb" / "native-wheels"  # where `make native` builds
VENV = CACHE / "native-venv"


def native_python(log: Path) -> Path | None:
    """A Python whose llmlb runs on the engine ``make native`` built (a virtualenv of the bench
    cache, made once from the wheel ``make native`` left); None before ``make native``."""
    python = VENV / "bin" / "python"
    if (VENV / ".ready").exists():
        return python
    wheels = sorted(WHEELS.glob("xllamacpp-*.whl"))
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
