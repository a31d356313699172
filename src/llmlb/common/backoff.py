"""How long to wait before trying again: doubling from a first wait up to a cap."""

from __future__ import annotations


def backoff(attempt: int, first: float, cap: float) -> float:
    """The wait before try ``attempt + 1`` (``attempt`` tries have failed, 1 or more)."""
    return float(min(first * 2 ** max(attempt - 1, 0), cap))
