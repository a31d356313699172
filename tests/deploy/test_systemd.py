"""The systemd units (deploy/systemd): valid to systemd itself, hardened, and stopping as
llmlb drains. ``systemd-analyze verify`` needs the command to exist, so each unit is checked
with its ExecStart pointed at this environment's ``llmlb``."""

from __future__ import annotations

import configparser
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from llmlb.common.settings import NodeSettings

UNITS = Path(__file__).resolve().parents[2] / "deploy" / "systemd"
LLMLB = str(Path(sys.executable).parent / "llmlb")


def unit(name: str) -> dict[str, str]:
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.optionxform = str  # type: ignore[assignment, method-assign]
    parser.read(UNITS / name)
    return dict(parser["Service"])


@pytest.mark.parametrize("name", ["llmlb-router.service", "llmlb-node.service"])
def test_systemd_accepts_the_unit(name: str, tmp_path: Path) -> None:
    assert shutil.which("systemd-analyze"), "make test installs systemd (make deploy-tools)"
    text = (UNITS / name).read_text().replace("/opt/llmlb/bin/llmlb", LLMLB)
    (tmp_path / name).write_text(text)
    checked = subprocess.run(["systemd-analyze", "verify", str(tmp_path / name)],
                             capture_output=True, text=True, timeout=60)  # fmt: skip
    assert checked.returncode == 0, checked.stderr
    assert checked.stderr.strip() == ""  # an unknown or misspelt setting is only a warning


@pytest.mark.parametrize("name", ["llmlb-router.service", "llmlb-node.service"])
def test_the_command_is_one_llmlb_accepts(name: str) -> None:
    args = shlex.split(unit(name)["ExecStart"])
    assert args[0] == "/opt/llmlb/bin/llmlb"
    done = subprocess.run([LLMLB, *args[1:], "--help"], capture_output=True, text=True,
                          timeout=60)  # fmt: skip
    assert done.returncode == 0, done.stderr


def test_a_stop_waits_longer_than_the_drain() -> None:
    grace = NodeSettings.model_fields["shutdown_grace_seconds"].default
    for name in ("llmlb-router.service", "llmlb-node.service"):
        service = unit(name)
        assert service["KillSignal"] == "SIGTERM"
        assert float(service["TimeoutStopSec"]) > grace  # else systemd kills mid-drain


def test_both_run_unprivileged_and_hardened_and_the_node_keeps_the_gpus() -> None:
    router, node = unit("llmlb-router.service"), unit("llmlb-node.service")
    for service in (router, node):
        assert service["User"] == "llmlb" and service["NoNewPrivileges"] == "yes"
        assert service["ProtectSystem"] == "strict" and service["StateDirectory"] == "llmlb"
        assert service["CapabilityBoundingSet"] == ""
    assert router["PrivateDevices"] == "yes"
    assert "PrivateDevices" not in node  # it would hide /dev/nvidia*, /dev/kfd, /dev/dri
    assert "render" in node["SupplementaryGroups"]
