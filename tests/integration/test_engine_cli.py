"""``llmlb doctor`` and ``llmlb engine install`` as an operator runs them: on this machine's
CPU, and "on an H100" through the stand-in NVML (tests/fake_gpus)."""

from __future__ import annotations

import importlib.metadata
import json
from pathlib import Path

from tests.support import llmlb

FAKE_NVML = str(Path(__file__).resolve().parents[1] / "fake_gpus")
H100 = {"name": "NVIDIA H100 80GB HBM3", "total": 80 << 30, "free": 79 << 30,
        "uuid": "GPU-5f1c0e2a-0b64-4c2f-9d0a-3c1e2f4a5b6c"}  # fmt: skip
ON_AN_H100 = {
    "PYTHONPATH": FAKE_NVML,
    "LLMLB_FAKE_NVML": json.dumps({"driver": 12080, "gpus": [H100]}),
    "COLUMNS": "250",
}


def test_doctor_on_a_gpu_machine_with_the_cpu_engine_says_what_to_run(tmp_path: Path) -> None:
    done = llmlb(tmp_path, "doctor", env=ON_AN_H100)
    assert done.returncode == 1  # a node here would refuse to start
    said = done.stdout
    assert "GPUs found: 1 (NVIDIA driver supports CUDA 12.8)" in said
    assert "NVIDIA H100 80GB HBM3 (cuda, GPU-5f1c0e2a" in said
    assert "its devices: CPU" in said
    assert "problem: found NVIDIA H100 80GB HBM3 (cuda)" in said
    assert "llmlb engine install cuda" in said and "whl/cu128" in said


def test_doctor_on_this_cpu_reports_the_features_and_the_budget(tmp_path: Path) -> None:
    done = llmlb(tmp_path, "doctor", "--allow-cpu", env={"COLUMNS": "250"})
    assert done.returncode == 0, done.stdout + done.stderr
    assert "GPUs found: 0" in done.stdout
    assert "CPU features: the CPU has" in done.stdout and "the engine uses" in done.stdout
    assert "memory budget:" in done.stdout and "(cpu)" in done.stdout
    assert "a node here would start" in done.stdout


def test_installing_the_engine_that_is_there_does_nothing(tmp_path: Path) -> None:
    done = llmlb(tmp_path, "engine", "install", "cpu")
    assert done.returncode == 0
    assert "already runs on cpu: nothing to do" in done.stdout


def test_an_index_out_of_reach_is_a_clear_error_and_the_engine_stays(tmp_path: Path) -> None:
    before = importlib.metadata.version("xllamacpp")
    # A closed port on loopback: no index answers. (pip's own configuration here names local
    # mirrors with the CPU build: the install must not fall back to them.)
    done = llmlb(tmp_path, "engine", "install", "--wheels", "http://127.0.0.1:9/whl",
                 env=ON_AN_H100)  # fmt: skip
    assert done.returncode == 1
    said = " ".join(done.stderr.split())
    assert "could not install the cuda engine from http://127.0.0.1:9/whl/cu128" in said
    assert "the engine installed before is unchanged" in said
    after = llmlb(tmp_path, "engine", "install", "cpu")
    assert "already runs on cpu" in after.stdout  # still the CPU build
    assert importlib.metadata.version("xllamacpp") == before
