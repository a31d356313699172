"""Records the git commit in the wheel (``llmlb/_commit``), for ``llmlb --version``."""

from __future__ import annotations

import os
import subprocess
import tempfile
from pathlib import Path
from typing import Any

from hatchling.builders.hooks.plugin.interface import BuildHookInterface


class CommitHook(BuildHookInterface):  # type: ignore[misc]
    PLUGIN_NAME = "custom"

    def initialize(self, version: str, build_data: dict[str, Any]) -> None:
        if version == "editable":  # a checkout: llmlb asks its git at run time
            return
        commit = os.environ.get("LLMLB_COMMIT", "").strip()  # an image build has no .git
        if not commit:
            commit = self._git_commit()
        if not commit:
            return  # a source tree without git: the version alone
        folder = Path(tempfile.mkdtemp(prefix="llmlb-build-"))
        (folder / "_commit").write_text(commit + "\n")
        build_data["force_include"][str(folder / "_commit")] = "llmlb/_commit"

    def _git_commit(self) -> str:
        try:
            found = subprocess.run(
                ["git", "-C", self.root, "rev-parse", "--short=12", "HEAD"],
                capture_output=True, text=True, timeout=10, check=True,
            )  # fmt: skip
        except (OSError, subprocess.SubprocessError):
            return ""
        return found.stdout.strip()
