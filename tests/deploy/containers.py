"""Containers on this machine, for the image and compose tests and ``make image``.

This machine reaches no container registry, so the Dockerfile's base is substituted by one
made from Debian's packages (``deploy/images/debian-base.sh``), and the stack's PostgreSQL,
Prometheus and nginx by images of Debian's packages with the official images' interface
(``tests/deploy/images``). podman runs with runc and cgroupfs (crun cannot use this kind of
machine's cgroups) and with ulimits within this machine's hard limits; ``env()`` carries that
as a containers.conf, so the commands themselves are the ones an operator types.

``python -m tests.deploy.containers build`` builds the image (``make image``).
"""

from __future__ import annotations

import os
import resource
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
BASE = os.environ.get("LLMLB_IMAGE_BASE", "localhost/llmlb-base:bookworm")
IMAGE = os.environ.get("LLMLB_IMAGE", "localhost/llmlb:test")
IMAGES = Path(__file__).resolve().parent / "images"
TOOLS = ("podman", "mmdebstrap", "runc")
BUILD_SECONDS = 1200
# Docker's image format: OCI's has no HEALTHCHECK, and podman builds OCI unless told.
FORMAT = ("--format", "docker")


def env() -> dict[str, str]:
    nofile = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    nproc = min(resource.getrlimit(resource.RLIMIT_NPROC)[1], 32768)  # more is refused here
    conf = Path(tempfile.gettempdir()) / "llmlb-tests-containers.conf"
    conf.write_text(
        "[containers]\n"
        f'default_ulimits = ["nofile={nofile}:{nofile}", "nproc={nproc}:{nproc}"]\n'
        "[engine]\n"
        'runtime = "runc"\ncgroup_manager = "cgroupfs"\nevents_logger = "file"\n'
    )
    return {**os.environ, "CONTAINERS_CONF": str(conf)}


def missing_tools() -> list[str]:
    return [tool for tool in TOOLS if shutil.which(tool) is None]


def podman(
    *args: str, timeout: float = 120, check: bool = True
) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(["podman", *args], capture_output=True, text=True, env=env(),
                          timeout=timeout)  # fmt: skip
    if check and done.returncode != 0:
        raise RuntimeError(f"podman {' '.join(args)} failed ({done.returncode}):\n{done.stderr}")
    return done


def image_exists(tag: str) -> bool:
    return podman("image", "exists", tag, check=False).returncode == 0


def ensure_base() -> str:
    """The Dockerfile's base, made from Debian's packages when not here yet (~30 s)."""
    if not image_exists(BASE):
        subprocess.run([str(REPO / "deploy/images/debian-base.sh"), BASE], check=True, env=env(),
                       timeout=600)  # fmt: skip
    return BASE


def commit() -> str:
    found = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short=12", "HEAD"],
                           capture_output=True, text=True)  # fmt: skip
    return found.stdout.strip()


def build_image(tag: str = IMAGE) -> str:
    """``docker build`` of the repository's Dockerfile over the local base."""
    podman("build", *FORMAT, "--build-arg", f"BASE={ensure_base()}", "--build-arg",
           f"LLMLB_COMMIT={commit()}", "-t", tag, str(REPO), timeout=BUILD_SECONDS)  # fmt: skip
    podman("image", "prune", "-f", check=False)  # the builds this one replaced
    return tag


def build_helper_image(name: str) -> str:
    """A stand-in for an official image (postgres, prometheus, nginx) from Debian's packages,
    on the same base: ``tests/deploy/images/<name>.Containerfile``."""
    tag = f"localhost/llmlb-test-{name}:latest"
    podman("build", *FORMAT, "--build-arg", f"BASE={ensure_base()}", "-f",
           str(IMAGES / f"{name}.Containerfile"), "-t", tag, str(IMAGES),
           timeout=BUILD_SECONDS)  # fmt: skip
    return tag


if __name__ == "__main__":
    if sys.argv[1:] != ["build"]:
        sys.exit("usage: python -m tests.deploy.containers build")
    if missing_tools():
        sys.exit(f"missing {', '.join(missing_tools())}: make container-tools installs them")
    built = build_image(os.environ.get("LLMLB_IMAGE", "localhost/llmlb:latest"))
    size = podman("image", "inspect", "--format", "{{.Size}}", built).stdout.strip()
    print(f"built {built} ({int(size) / 2**20:.0f} MiB) over {BASE}")
