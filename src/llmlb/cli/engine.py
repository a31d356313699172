"""``llmlb engine install`` and ``llmlb doctor``: the inference engine that fits the machine,
and what a node here would use."""

from __future__ import annotations

import hashlib
import os
import platform
import subprocess
import sys
from pathlib import Path

import click
from rich.console import Console
from rich.markup import escape

from llmlb.cli.base import fail, main

CPUINFO = Path("/proc/cpuinfo")


@main.group()
def engine() -> None:
    """The inference engine (llama.cpp, through xllamacpp)."""


@engine.command("install")
@click.argument("backend", default="auto",
                type=click.Choice(["auto", "cpu", "native", "cuda", "rocm", "vulkan", "metal"]))  # fmt: skip
@click.option("--wheels", default=None, help="Wheel index root (a mirror of xllamacpp's)")
@click.option("--force", is_flag=True, help="Reinstall even when the engine already fits")
def install(backend: str, wheels: str | None, force: bool) -> None:
    """Install the engine build for this machine's GPUs (auto) or for BACKEND; ``native``
    builds one for this CPU, smoke-tests it, and only then installs it."""
    from llmlb.node.devices import backend_of, engine_devices
    from llmlb.node.engine_builds import (
        WHEELS,
        NoBuild,
        build_for,
        install_line,
        pip_environment,
    )
    from llmlb.node.gpu import cuda_driver_version, probe_gpus

    if backend == "native":
        _install_native(force)
        return
    gpus = probe_gpus()
    try:
        build = build_for(backend, gpus, cuda_driver_version(), platform.system())
    except NoBuild as exc:
        fail(exc.message)
    current = sorted({backend_of(d) for d in engine_devices() if d.is_gpu}) or ["cpu"]
    if build.backend in current and not force:
        click.echo(f"the installed engine already runs on {build.backend}: nothing to do")
        return
    root = wheels or os.environ.get("LLMLB_ENGINE_WHEELS") or WHEELS
    line = install_line(build, wheels=root)
    click.echo(f"installing the {build.backend} engine: python {' '.join(line[1:])}", err=True)
    done = subprocess.run(  # pip's progress bar on stdout, its errors kept for the message
        line, stderr=subprocess.PIPE, text=True, env=pip_environment(dict(os.environ))
    )
    if done.returncode != 0:
        where = build.url(root) or "pip's index"
        said = "\n".join(done.stderr.strip().splitlines()[-6:])
        fail(f"could not install the {build.backend} engine from {where}; the engine installed "
             f"before is unchanged. pip said:\n{said}")  # fmt: skip
    check = subprocess.run(
        [sys.executable, "-c", "import xllamacpp as x; print(sorted({d['name'].rstrip("
         "'0123456789').lower() for d in x.get_device_info()}))"],
        capture_output=True, text=True,
    )  # fmt: skip
    click.echo(f"installed; the engine's devices now: {check.stdout.strip() or check.stderr}")


def _install_native(force: bool) -> None:
    """Build xllamacpp (the installed version) from source for this CPU's instruction sets,
    load the small model with it and complete a few tokens, then install it; a build that
    fails either step leaves the installed engine as it was."""
    import importlib.metadata
    import tempfile

    import xllamacpp

    from llmlb.common.settings import default_home
    from llmlb.models.smallmodel import install_small_model
    from llmlb.models.store import ModelStore
    from llmlb.node.engine_builds import (
        SMOKE_TEST,
        features_available,
        features_used,
        native_cmake_args,
        native_wanted,
    )

    if platform.machine() not in ("x86_64", "AMD64") or not CPUINFO.exists():
        fail("native builds name x86-64 instruction sets; on this machine use the wheel "
             "(llmlb engine install cpu)")  # fmt: skip
    available = features_available(CPUINFO.read_text())
    missing = native_wanted(available) - features_used(xllamacpp.get_system_info())
    if not missing and not force:
        click.echo("the installed engine already uses every instruction set this CPU offers: "
                   "nothing to do")  # fmt: skip
        return
    version = importlib.metadata.version("xllamacpp")
    args = native_cmake_args(available)
    tag = hashlib.sha256(" ".join(args).encode()).hexdigest()[:12]
    folder = Path.home() / ".cache" / "llmlb" / "engine-wheels" / f"native-{version}-{tag}"
    wheels = sorted(folder.glob("xllamacpp-*.whl"))
    if not wheels:
        click.echo(f"building xllamacpp {version} for this CPU ({', '.join(sorted(available))}); "
                   "about 16 minutes on 2 cores", err=True)  # fmt: skip
        cmake = " ".join([*args, os.environ.get("CMAKE_ARGS", "")]).strip()
        built = subprocess.run(
            [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-binary", "xllamacpp",
             "-w", str(folder), f"xllamacpp=={version}"],
            env={**os.environ, "CMAKE_ARGS": cmake},
        )  # fmt: skip
        wheels = sorted(folder.glob("xllamacpp-*.whl"))
        if built.returncode != 0 or not wheels:
            fail("the build failed (its output is above); the installed engine is unchanged")
    wheel = wheels[-1]
    model = install_small_model(ModelStore(default_home() / "models"))
    with tempfile.TemporaryDirectory(prefix="llmlb-engine-") as trial:
        subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps",
                        "--target", trial, str(wheel)], check=True)  # fmt: skip
        smoke = subprocess.run(
            [sys.executable, "-c", SMOKE_TEST, str(model.path)],
            env={**os.environ, "PYTHONPATH": trial}, capture_output=True, text=True, timeout=600,
        )  # fmt: skip
    if smoke.returncode != 0:
        died = (f"died with signal {-smoke.returncode}" + (" (an illegal instruction: the CPU "
                "or the virtual machine refuses a set it advertises)" if smoke.returncode == -4
                else "")) if smoke.returncode < 0 else "failed"  # fmt: skip
        fail(f"the build for this CPU {died} in its smoke test; the installed engine is "
             f"unchanged (the wheel: {wheel}).\n{smoke.stderr[-1000:]}")  # fmt: skip
    click.echo(smoke.stdout.strip())
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--force-reinstall",
                    "--no-deps", str(wheel)], check=True)  # fmt: skip
    click.echo(f"installed the build for this CPU: {wheel.name}")


@main.command()
@click.option("--allow-cpu", is_flag=True, help="As the node's --allow-cpu")
@click.option("--gpus", default=None, help="As the node's --gpus")
def doctor(allow_cpu: bool, gpus: str | None) -> None:
    """What a node on this machine would use: GPUs, engine, CPU features, memory; and what
    to run where they do not match."""
    import psutil

    from llmlb.common.errors import LlmlbError
    from llmlb.node.devices import engine_build, engine_devices, match_engine, visible
    from llmlb.node.engine_builds import CPU_FEATURES, features_available, features_used
    from llmlb.node.gpu import cpu_device, cuda_driver_version, probe_gpus
    from llmlb.node.service import memory_budgets

    out = Console(highlight=False)
    found = probe_gpus()
    driver = cuda_driver_version()
    out.print(f"GPUs found: {len(found)}"
              + (f" (NVIDIA driver supports CUDA {driver[0]}.{driver[1]})" if driver else ""))  # fmt: skip
    for index, gpu in enumerate(found):
        out.print(f"  {index}: {escape(gpu.name)} ({gpu.kind}, {gpu.uuid or 'no uuid'}), "
                  f"{gpu.memory_free >> 20} of {gpu.memory_total >> 20} MiB free")  # fmt: skip
    problems: list[str] = []
    try:
        shown = visible(found, os.environ, gpus)
    except LlmlbError as exc:
        problems.append(exc.message)
        shown = found
    if shown != found:
        out.print(f"GPUs this node may use (visible-device settings, --gpus): "
                  f"{', '.join(escape(g.name) for g in shown) or 'none'}")  # fmt: skip
    devices = engine_devices()
    build = engine_build()
    out.print(f"engine: {escape(build)}")
    out.print(f"  its devices: {', '.join(f'{d.name} ({escape(d.description)})' for d in devices)}")
    used = features_used(_system_info())
    available = features_available(CPUINFO.read_text()) if CPUINFO.exists() else set()
    unused = [f for f in CPU_FEATURES if f in available and f not in used]
    out.print(f"CPU features: the CPU has {', '.join(sorted(available)) or 'unknown'}; the "
              f"engine uses {', '.join(sorted(used & set(CPU_FEATURES))) or 'none of them'}")  # fmt: skip
    if unused:
        out.print(f"  unused by this build: {', '.join(unused)}")
    ram = psutil.virtual_memory().total
    try:
        reported, info = match_engine(shown, devices, build, allow_cpu, cpu_device(), driver)
        budgets = memory_budgets(reported, ram)
        out.print("memory budget: " + " + ".join(f"{b >> 20} MiB" for b in budgets)
                  + f" ({'per GPU' if len(budgets) > 1 else reported[0].kind})")  # fmt: skip
        if info.warning:
            problems.append(info.warning)
    except LlmlbError as exc:
        problems.append(exc.message)
    for problem in problems:
        out.print(f"[red]problem:[/red] {escape(problem)}")
    if problems and not allow_cpu:
        sys.exit(1)
    out.print("a node here would start" + (" (on the CPU)" if problems else ""))


def _system_info() -> str:
    import xllamacpp

    return str(xllamacpp.get_system_info())
