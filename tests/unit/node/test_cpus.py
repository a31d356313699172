"""The node's default thread count: the CPUs its cgroup's quota allows, not the machine's
cores (node.cpus), on cgroup v2 and v1 layouts written in a temporary folder."""

from __future__ import annotations

import os
from pathlib import Path

from llmlb.node.cpus import cgroup_quota, usable_cpus

CORES = len(os.sched_getaffinity(0))


def write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def test_a_v2_limit_in_the_process_cgroup_or_at_the_namespace_root(tmp_path: Path) -> None:
    write(tmp_path / "kubepods/pod1/cpu.max", "150000 100000\n")  # a 1.5-CPU limit
    membership = "0::/kubepods/pod1\n"
    assert cgroup_quota(tmp_path, membership) == 1.5
    assert usable_cpus(tmp_path, membership) == min(CORES, 2)  # rounded up, never above cores
    write(tmp_path / "kubepods/pod1/cpu.max", "max 100000\n")
    assert cgroup_quota(tmp_path, membership) is None
    write(tmp_path / "cpu.max", "50000 100000\n")  # a container: its cgroup is the root
    assert cgroup_quota(tmp_path, "0::/\n") == 0.5
    assert usable_cpus(tmp_path, "0::/\n") == 1


def test_a_v1_cfs_quota_and_no_limit_at_all(tmp_path: Path) -> None:
    write(tmp_path / "cpu,cpuacct/docker/abc/cpu.cfs_quota_us", "300000\n")
    write(tmp_path / "cpu,cpuacct/docker/abc/cpu.cfs_period_us", "100000\n")
    membership = "4:memory:/docker/abc\n2:cpu,cpuacct:/docker/abc\n"
    assert cgroup_quota(tmp_path, membership) == 3.0
    assert usable_cpus(tmp_path, membership) == min(CORES, 3)
    write(tmp_path / "cpu,cpuacct/docker/abc/cpu.cfs_quota_us", "-1\n")  # unlimited
    assert cgroup_quota(tmp_path, membership) is None
    assert usable_cpus(tmp_path / "nothing-here", "garbage\n") == CORES
