"""Model names: one path component that is safe on every file system, used everywhere a
model name goes (requests, heartbeats, the store, metric labels).

People type Ollama's names, ``model:tag`` (``gpt-oss:20b``, ``llama3.2:1b``), and ``:`` is
not allowed in a Windows path. Such a name has one canonical store name, ``model-tag``
(``gpt-oss-20b``), and ``model:latest`` is ``model``. ``store_name`` makes that mapping and
validates the result; the catalog adds aliases on top (``gpt-oss`` is ``gpt-oss-20b``).
"""

from __future__ import annotations

import re

from llmlb.common.errors import BadRequest

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
TAG_SEPARATOR = ":"
# Requests for models nobody knows count under this one metric label (clients choose model
# names, and a label per name would let them grow the metrics without bound).
UNKNOWN_MODEL_LABEL = "unknown"
LATEST = "latest"


class InvalidModelName(BadRequest):
    default_code = "invalid_model_name"


def is_model_name(name: str) -> bool:
    """Whether ``name`` is a canonical store name (no tag separator)."""
    return bool(_NAME.fullmatch(name)) and ".." not in name


def validate_name(name: str, typed: str | None = None) -> str:
    """Return ``name`` if it is a safe single path component, else raise InvalidModelName
    (naming ``typed``, the name as the user wrote it, when ``name`` was derived from it)."""
    if not is_model_name(name):
        shown = typed if typed is not None else name
        raise InvalidModelName(
            f"invalid model name {shown[:200]!r}: use letters, digits, '.', '_' and '-', "
            "with at most one ':tag' (at most 128, no '..', no '/')",
            param="model",
        )
    return name


def canonical_name(name: str) -> str:
    """``model:tag`` as ``model-tag`` and ``model:latest`` as ``model``; any other name as it
    is. Not validated: see ``store_name``."""
    base, separator, tag = name.partition(TAG_SEPARATOR)
    if not separator or not base or not tag or TAG_SEPARATOR in tag:
        return name
    return base if tag == LATEST else f"{base}-{tag}"


def store_name(name: str) -> str:
    """The validated canonical name of a name as a user typed it (tags allowed)."""
    return validate_name(canonical_name(name), name)
