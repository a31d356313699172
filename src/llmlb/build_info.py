"""Which llmlb this is: its version (``llmlb.__version__``, the one place it is set; the
package build reads it there) and the git commit it was built from."""

from __future__ import annotations

import subprocess
from importlib import resources
from pathlib import Path

from llmlb import __version__

COMMIT_FILE = "_commit"  # written into the wheel by hatch_build.py


def commit() -> str | None:
    """The commit recorded in the installed package, else the checkout's own; None when
    neither is known (a source tree without git)."""
    recorded = resources.files("llmlb").joinpath(COMMIT_FILE)
    if recorded.is_file():
        return recorded.read_text().strip() or None
    checkout = Path(__file__).resolve().parents[2]
    if not (checkout / ".git").exists():
        return None
    try:
        found = subprocess.run(
            ["git", "-C", str(checkout), "rev-parse", "--short=12", "HEAD"],
            capture_output=True, text=True, timeout=5, check=True,
        )  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        return None
    return found.stdout.strip() or None


def describe() -> str:
    """``llmlb 0.1.0 (commit 1b49ac2e1f2d)``."""
    built = commit()
    return f"llmlb {__version__}" + (f" (commit {built})" if built else "")
