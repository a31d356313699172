"""Model names: one path component that is safe on every file system, used everywhere a
model name goes (requests, heartbeats, the store, metric labels)."""

from __future__ import annotations

import re

from llmlb.common.errors import BadRequest

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")


class InvalidModelName(BadRequest):
    default_code = "invalid_model_name"


def is_model_name(name: str) -> bool:
    return bool(_NAME.fullmatch(name)) and ".." not in name


def validate_name(name: str) -> str:
    """Return ``name`` if it is a safe single path component, else raise InvalidModelName."""
    if not is_model_name(name):
        raise InvalidModelName(
            f"invalid model name {name!r}: use letters, digits, '.', '_' and '-' "
            "(at most 128, no '..', no '/')",
            param="model",
        )
    return name
