"""deploy/install.sh as an operator runs it, into a temporary root (--root: no user, engine
or systemctl), from this checkout."""

from __future__ import annotations

import stat
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "deploy" / "install.sh"


def install(*args: str) -> subprocess.CompletedProcess[str]:
    environ = {"PATH": "/usr/bin:/bin", "PYTHON": sys.executable}
    return subprocess.run(["sh", str(SCRIPT), *args], capture_output=True, text=True,
                          timeout=900, env=environ)  # fmt: skip


@pytest.mark.slow
def test_a_node_installs_with_its_unit_venv_and_token(tmp_path: Path) -> None:
    done = install("--node", "--root", str(tmp_path), "--router-url", "http://router:32768",
                   "--token", "node-token-123")  # fmt: skip
    assert done.returncode == 0, done.stderr
    unit = (tmp_path / "etc/systemd/system/llmlb-node.service").read_text()
    assert unit == (ROOT / "deploy/systemd/llmlb-node.service").read_text()
    executable = tmp_path / "opt/llmlb/bin/llmlb"  # what the unit's ExecStart runs, at /
    shown = subprocess.run([str(executable), "--version"], capture_output=True, text=True)
    assert shown.stdout.startswith("llmlb 0.1.0")
    settings = tmp_path / "etc/llmlb/node.env"
    assert (
        settings.read_text()
        == "LLMLB_ROUTER=http://router:32768\nLLMLB_NODE_TOKEN=node-token-123\n"
    )
    assert stat.S_IMODE(settings.stat().st_mode) == 0o600  # the token: root's alone
    again = install("--node", "--root", str(tmp_path), "--router-url", "http://router:32768",
                    "--token", "node-token-123")  # fmt: skip
    assert again.returncode == 0, again.stderr  # a second run upgrades in place


def test_a_node_without_its_router_is_refused_before_anything_is_written(tmp_path: Path) -> None:
    done = install("--node", "--root", str(tmp_path))
    assert done.returncode == 2 and "needs --router-url and --token" in done.stderr
    assert list(tmp_path.iterdir()) == []
