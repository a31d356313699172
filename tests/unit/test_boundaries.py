"""The package's boundaries, read from the source (every import, also those inside functions
and under TYPE_CHECKING):

- the router and the node never import each other (they talk over HTTP only: either can be
  deployed, upgraded and tested alone);
- ``models``, ``translate`` and ``common`` are shared and import neither;
- ``router/balancer`` and ``translate`` are pure: no I/O library, so each choice and each
  translation is a function of plain values;
- ``router/api`` reaches the rest of the router only through a subpackage's root (its owners)
  or the router's top-level modules, never a module inside another subpackage;
- each router subpackage's root exports what it says it does (``common.exports``).
"""

from __future__ import annotations

import ast
import importlib
from collections.abc import Iterator
from pathlib import Path

import pytest

SOURCE = Path(__file__).resolve().parents[2] / "src" / "llmlb"
IO_LIBRARIES = {
    "aiohttp", "aiosqlite", "alembic", "asyncio", "asyncpg", "http", "httptools", "httpx",
    "os", "pathlib", "psycopg", "selectors", "shutil", "socket", "sqlalchemy", "ssl",
    "starlette", "subprocess", "urllib", "uvicorn",
}  # fmt: skip


def modules(package: str) -> list[Path]:
    return sorted(p for p in (SOURCE / package).rglob("*.py") if "migrations" not in p.parts)


def imported(path: Path) -> Iterator[str]:
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            yield node.module


def offenders(package: str, forbidden: tuple[str, ...]) -> list[str]:
    return [
        f"{path.relative_to(SOURCE)} imports {name}"
        for path in modules(package)
        for name in imported(path)
        if any(name == f or name.startswith(f + ".") for f in forbidden)
    ]


@pytest.mark.parametrize(
    ("package", "forbidden"),
    [
        ("router", ("llmlb.node",)),
        ("node", ("llmlb.router",)),
        ("models", ("llmlb.router", "llmlb.node")),
        ("translate", ("llmlb.router", "llmlb.node")),
        ("common", ("llmlb.router", "llmlb.node", "llmlb.translate")),
    ],
)
def test_packages_that_must_not_meet_do_not(package: str, forbidden: tuple[str, ...]) -> None:
    assert offenders(package, forbidden) == []


@pytest.mark.parametrize("package", ["router/balancer", "translate"])
def test_the_pure_packages_import_no_io_library(package: str) -> None:
    assert offenders(package, tuple(sorted(IO_LIBRARIES))) == []


def test_the_api_reaches_other_router_packages_only_through_their_roots() -> None:
    api = SOURCE / "router" / "api"
    deep = [
        f"{path.name} imports {name}"
        for path in modules("router/api")
        for name in imported(path)
        if name.startswith("llmlb.router.")
        and not name.startswith("llmlb.router.api.")
        and (SOURCE / "router" / name.split(".")[2]).is_dir()  # a subpackage, not a module
        and name.count(".") > 2
    ]
    assert api.is_dir() and deep == []


def router_packages() -> list[str]:
    root = SOURCE / "router"
    return sorted(p.name for p in root.iterdir() if (p / "__init__.py").is_file())


@pytest.mark.parametrize("package", router_packages())
def test_a_router_package_root_is_a_map_and_exports_its_owners(package: str) -> None:
    init = SOURCE / "router" / package / "__init__.py"
    tree = ast.parse(init.read_text())
    docstring = ast.get_docstring(tree) or ""
    assert len(docstring.splitlines()) >= 1, f"router/{package} has no map in its docstring"
    declared = {
        alias.asname or alias.name
        for node in ast.walk(tree)
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("llmlb.router.")
        for alias in node.names
    }
    root = importlib.import_module(f"llmlb.router.{package}")
    exported = set(getattr(root, "__all__", []))
    assert exported == declared  # what type checkers see is what runs
    for name in exported:  # each loads, from the module the root names
        assert getattr(root, name) is not None
