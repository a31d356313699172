"""Cloud providers, by the prefix of the model names they serve (``openai:gpt-4o``)."""

from __future__ import annotations

from llmlb.translate.providers.anthropic import Anthropic
from llmlb.translate.providers.base import Provider
from llmlb.translate.providers.google import Google
from llmlb.translate.providers.openai import OpenAI

PROVIDERS: dict[str, type[Provider]] = {p.name: p for p in (OpenAI, Anthropic, Google)}
