"""How many CPUs the node may really use: those it may run on (its affinity), within its
cgroup's CPU quota (a container's CPU limit, a Kubernetes pod's, systemd's CPUQuota).

llama.cpp's threads spin while they wait: more of them than the quota allows starve each
other (README, "Container image": 0.6 tokens/s where 41 were possible). So the default
thread count is this figure, not the machine's cores. Linux only; elsewhere the cores.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

CGROUPS = Path("/sys/fs/cgroup")


def usable_cpus(root: Path = CGROUPS, membership: str | None = None) -> int:
    cores = (len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
             else os.cpu_count() or 1)  # fmt: skip
    quota = cgroup_quota(root, membership)
    return max(1, min(cores, math.ceil(quota)) if quota else cores)


def cgroup_quota(root: Path = CGROUPS, membership: str | None = None) -> float | None:
    """The CPUs the process's cgroup may use (quota / period), None when unlimited or
    unknown. ``membership`` is /proc/self/cgroup's text (tests give their own)."""
    if membership is None:
        try:
            membership = Path("/proc/self/cgroup").read_text()
        except OSError:
            return None
    limits = []
    for line in membership.splitlines():
        _, controllers, path = [*line.split(":", 2), "", ""][:3]
        relative = path.strip().lstrip("/")
        if controllers == "":  # cgroup v2: cpu.max = "QUOTA PERIOD" or "max PERIOD"
            for folder in {root / relative, root}:
                limits.append(_v2(folder / "cpu.max"))
        elif "cpu" in controllers.split(","):  # v1: cfs_quota_us / cfs_period_us
            for mount in ("cpu", "cpu,cpuacct", "cpuacct,cpu"):
                for folder in {root / mount / relative, root / mount}:
                    limits.append(_v1(folder))
    found = [limit for limit in limits if limit is not None]
    return min(found) if found else None


def _v2(path: Path) -> float | None:
    try:
        quota, period = path.read_text().split()[:2]
    except (OSError, ValueError):
        return None
    return None if quota == "max" else int(quota) / int(period)


def _v1(folder: Path) -> float | None:
    try:
        quota = int((folder / "cpu.cfs_quota_us").read_text())
        period = int((folder / "cpu.cfs_period_us").read_text())
    except (OSError, ValueError):
        return None
    return None if quota <= 0 or period <= 0 else quota / period
