"""Chat templates: which prompt format a model gets, and the stop sequences that go with it.

Resolution, first hit wins:

1. ``chat_template`` in the model's ``metadata.json`` (a built-in name or a Jinja template);
2. the template inside the GGUF (``tokenizer.chat_template``);
3. a default: the architecture's turn format for instruction-tuned models, and for base models
   a plain ``Q:``/``A:`` transcript, which base models continue sensibly (Gemma's turn format
   makes the base Gemma 3 270M answer garbage; the transcript makes it answer "Paris").
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

QA_TEMPLATE = (
    "{%- for message in messages -%}"
    "{%- if message['role'] == 'system' -%}{{ message['content'] }}\n\n"
    "{%- elif message['role'] == 'user' -%}Q: {{ message['content'] }}\n"
    "{%- elif message['role'] == 'assistant' -%}A: {{ message['content'] }}\n"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}A:{%- endif -%}"
)

CHATML_TEMPLATE = (
    "{%- for message in messages -%}"
    "<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}<|im_start|>assistant\n{%- endif -%}"
)

GEMMA_TEMPLATE = (
    "{%- set system = namespace(text='') -%}"
    "{%- for message in messages -%}"
    "{%- if message['role'] == 'system' -%}{%- set system.text = message['content'] + '\n\n' -%}"
    "{%- else -%}"
    "<start_of_turn>{{ 'model' if message['role'] == 'assistant' else 'user' }}\n"
    "{%- if message['role'] == 'user' -%}{{ system.text }}{%- set system.text = '' -%}"
    "{%- endif -%}"
    "{{ message['content'] }}<end_of_turn>\n"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}<start_of_turn>model\n{%- endif -%}"
)

LLAMA3_TEMPLATE = (
    "{%- for message in messages -%}"
    "<|start_header_id|>{{ message['role'] }}<|end_header_id|>\n\n"
    "{{ message['content'] }}<|eot_id|>"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}<|start_header_id|>assistant<|end_header_id|>\n\n"
    "{%- endif -%}"
)


@dataclass(frozen=True)
class ChatTemplate:
    """``jinja`` None means: let llama.cpp use the template inside the GGUF. ``has_tools``:
    the template writes tools and tool calls in the model's own syntax (node.tools)."""

    name: str
    jinja: str | None
    stop: tuple[str, ...] = field(default=())
    has_tools: bool = False


BUILTIN: dict[str, ChatTemplate] = {
    "qa": ChatTemplate("qa", QA_TEMPLATE, ("\nQ:",)),
    "chatml": ChatTemplate("chatml", CHATML_TEMPLATE, ("<|im_end|>",)),
    "gemma": ChatTemplate("gemma", GEMMA_TEMPLATE, ("<end_of_turn>",)),
    "llama3": ChatTemplate("llama3", LLAMA3_TEMPLATE, ("<|eot_id|>",)),
}

# Architecture -> built-in turn format for instruction-tuned models without a template.
_ARCH_FORMATS = {
    "gemma": "gemma", "gemma2": "gemma", "gemma3": "gemma", "gemma3n": "gemma",
    "llama": "llama3", "qwen2": "chatml", "qwen3": "chatml", "qwen2moe": "chatml",
    "qwen3moe": "chatml",
}  # fmt: skip

_INSTRUCT_HINT = re.compile(r"(instruct|chat|(^|[-_ .])it($|[-_ .]))", re.IGNORECASE)


def looks_instruction_tuned(gguf_metadata: dict[str, Any], name: str) -> bool:
    """Instruction-tuned per the GGUF's fine-tune/name fields or the model's name."""
    hints = [
        str(gguf_metadata.get("general.finetune", "")),
        str(gguf_metadata.get("general.name", "")),
        name,
    ]
    return any(_INSTRUCT_HINT.search(hint) for hint in hints if hint)


def resolve_template(
    name: str, metadata: dict[str, Any], gguf_metadata: dict[str, Any]
) -> ChatTemplate:
    configured = metadata.get("chat_template")
    if isinstance(configured, str) and configured:
        if configured in BUILTIN:
            return BUILTIN[configured]
        if "{{" in configured or "{%" in configured:
            return ChatTemplate("custom", configured, has_tools=_writes_tools(configured))
        raise ValueError(
            f"model {name!r}: unknown chat_template {configured!r}; "
            f"use one of {sorted(BUILTIN)} or a Jinja template"
        )
    inside = gguf_metadata.get("tokenizer.chat_template")
    if inside:
        return ChatTemplate("gguf", None, has_tools=_writes_tools(str(inside)))
    if looks_instruction_tuned(gguf_metadata, name):
        arch = str(gguf_metadata.get("general.architecture", ""))
        return BUILTIN[_ARCH_FORMATS.get(arch, "chatml")]
    return BUILTIN["qa"]


def _writes_tools(jinja: str) -> bool:
    """Whether a template renders the request's tools (as llama.cpp judges it: by use)."""
    return re.search(r"\btools\b", jinja) is not None


def with_stops(body: dict[str, Any], template: ChatTemplate) -> dict[str, Any]:
    """Add the template's stop sequences to a request's own ``stop`` (string or list)."""
    if not template.stop:
        return body
    stop = body.get("stop")
    stops: list[str] = [stop] if isinstance(stop, str) else list(stop or [])
    stops.extend(s for s in template.stop if s not in stops)
    return {**body, "stop": stops}
