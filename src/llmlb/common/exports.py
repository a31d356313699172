"""A package's owners, exported from its root and loaded on first use (PEP 562).

The router's subpackages use each other's modules (the fleet reads the distributor, the
proxy's failover the fleet, the cloud gates the proxy's wait line), so a root that imported
its modules eagerly would load half the router, and close import cycles, whenever any one
module of it was imported. A root instead names its owners under ``TYPE_CHECKING`` (for
readers and type checkers) and maps each to its module here; the module loads when the name
is first read. tests/unit/test_boundaries.py checks that the two lists agree.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable


def lazy_exports(package: str, owners: dict[str, list[str]]) -> Callable[[str], object]:
    """``__getattr__`` for ``package``: ``owners`` maps a module's name (relative to the
    package) to the names it exports."""
    where = {name: module for module, names in owners.items() for name in names}

    def __getattr__(name: str) -> object:
        module = where.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(f"{package}.{module}"), name)
        globals_of_package = importlib.import_module(package).__dict__
        globals_of_package[name] = value  # later reads skip this function
        return value

    return __getattr__


def exported(owners: dict[str, list[str]]) -> list[str]:
    """``__all__`` for a package whose owners are ``owners``."""
    return sorted(name for names in owners.values() for name in names)
