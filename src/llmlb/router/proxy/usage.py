"""Token counts read from an answer's bytes, without parsing it: the router relays answers as
bytes and still records what each request used (history, per-key token limits)."""

from __future__ import annotations

import re

# OpenAI's names and Anthropic's (and the Responses API's), for the same two counts.
_TOKENS = re.compile(rb'"(prompt_tokens|completion_tokens|input_tokens|output_tokens)"\s*:\s*(\d+)')
_NAMES = {b"prompt_tokens": "prompt_tokens", b"input_tokens": "prompt_tokens",
          b"completion_tokens": "completion_tokens",
          b"output_tokens": "completion_tokens"}  # fmt: skip


def usage_in(data: bytes, usage: dict[str, int] | None = None) -> dict[str, int]:
    """The token counts in ``data`` (the last of each winning: a stream's final usage),
    added to ``usage`` when given; {} when there are none."""
    found = {} if usage is None else usage
    for name, value in _TOKENS.findall(data):
        found[_NAMES[name]] = int(value)
    return found
