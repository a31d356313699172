"""Files in llmlb's home folder: private to the user who runs it."""

from __future__ import annotations

import os
from pathlib import Path


def private_folder(path: Path) -> Path:
    """Create ``path`` (and parents) if needed; a folder llmlb creates is mode 700."""
    if not path.exists():
        path.mkdir(parents=True, mode=0o700, exist_ok=True)
    return path


def write_private(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` with mode 600 (tokens, URLs, anything another user should
    not read or change)."""
    private_folder(path.parent)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as stream:
        stream.write(text)
