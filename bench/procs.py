"""Processes the benchmarks start, and what they cost: peak memory and CPU time."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parent.parent
CACHE = Path(os.environ.get("LLMLB_BENCH_CACHE", Path.home() / ".cache" / "llmlb-bench"))


def peak_rss_mib(pid: int) -> float:
    """The process's high-water mark of resident memory (VmHWM), in MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def rss_mib(pid: int) -> float:
    return float(psutil.Process(pid).memory_info().rss) / 2**20


def cpu_seconds(pid: int) -> float:
    """The process's CPU time and its live children's (nginx's worker is its master's child)."""
    process = psutil.Process(pid)
    total = 0.0
    for each in (process, *process.children(recursive=True)):
        times = each.cpu_times()
        total += times.user + times.system
    return total


def install_venv(venv: Path, package: str, log: Path) -> bool:
    """``package`` from PyPI into a virtualenv of its own (once: a ``.ready`` marker says it
    is done), never llmlb's; whether it is there."""
    if (venv / ".ready").exists():
        return True
    print(f"installing {package} into {venv} (once)", flush=True)
    with log.open("ab") as out:
        made = subprocess.run([sys.executable, "-m", "venv", str(venv)], stdout=out, stderr=out)
        if made.returncode == 0:
            made = subprocess.run([str(venv / "bin" / "pip"), "install", "--quiet", package],
                                  stdout=out, stderr=out)  # fmt: skip
    if made.returncode != 0:
        return False
    (venv / ".ready").touch()
    return True


def start_upstream(*args: str, log: Path) -> tuple[subprocess.Popen[bytes], int]:
    """``bench.upstream`` in a process of its own; (process, port)."""
    process = subprocess.Popen(
        [sys.executable, "-m", "bench.upstream", *args], cwd=ROOT,
        stdout=subprocess.PIPE, stderr=log.open("ab"),
    )  # fmt: skip
    assert process.stdout is not None
    line = process.stdout.readline().decode().split()
    if len(line) != 2 or line[0] != "listening":
        process.kill()
        raise RuntimeError(f"the bench upstream did not start: {log.read_text()[-2000:]}")
    return process, int(line[1])


def wait_for_line(process: subprocess.Popen[bytes], text: str, timeout: float) -> None:
    """Reads the process's stdout until a line containing ``text``."""
    assert process.stdout is not None
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = process.stdout.readline().decode()
        if text in line:
            return
        if not line and process.poll() is not None:
            break
    raise RuntimeError(f"{text!r} not seen within {timeout} s")


def stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
