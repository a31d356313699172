"""Nothing POSIX-only at module level: every llmlb module must import on Windows (macOS has
these modules; Windows does not), so they are imported inside the functions that use them,
behind a platform check or a fallback.

Read from the source: blocking the modules at run time on Linux would also trip libraries
whose Linux implementation uses them (psutil's), which is no sign of a Windows problem."""

from __future__ import annotations

import ast
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

SOURCE = Path(__file__).resolve().parents[2] / "src" / "llmlb"
POSIX_ONLY = {"fcntl", "resource", "termios", "pwd", "grp", "posix", "tty", "pty"}


def module_level_imports(tree: ast.Module) -> Iterator[tuple[int, str]]:
    """Imports run when the module loads: at top level, or in a top-level if/try/with."""
    pending: list[ast.stmt] = list(tree.body)
    while pending:
        node = pending.pop()
        if isinstance(node, ast.Import):
            yield from ((node.lineno, alias.name) for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            yield node.lineno, node.module
        elif isinstance(node, ast.If | ast.Try | ast.With):
            for field in ("body", "orelse", "finalbody", "handlers"):
                for child in getattr(node, field, []):
                    pending.extend(child.body if isinstance(child, ast.ExceptHandler) else [child])


def test_no_module_imports_a_posix_only_module_when_it_loads() -> None:
    found = [
        f"{path.relative_to(SOURCE)}:{line} imports {name}"
        for path in sorted(SOURCE.rglob("*.py"))
        for line, name in module_level_imports(ast.parse(path.read_text()))
        if name.split(".")[0] in POSIX_ONLY
    ]
    assert found == []


def test_the_open_file_limit_is_left_alone_where_there_is_none() -> None:
    done = subprocess.run(
        [sys.executable, "-c", "import sys; sys.modules['resource'] = None\n"
         "from llmlb.common.connections import raise_open_file_limit\n"
         "print(raise_open_file_limit())"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.stdout.strip() == "0", done.stderr
