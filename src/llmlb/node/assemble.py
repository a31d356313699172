"""A whole answer built from llama.cpp's stream chunks.

The node runs every generation as a stream, even when the client asked for one whole
answer: llama.cpp's non-streaming call cannot be stopped, a stream stops at the next token
when its reader goes away. So a client (or the router) that gives up on a whole answer frees
its slot at once instead of leaving the node generating for minutes. This module turns the
chunks back into the answer llama.cpp would have given: OpenAI's ``chat.completion`` or
``text_completion`` with every choice, its text, reasoning, tool calls, log-probabilities and
finish reason, and the usage and timings.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

Endpoint = Literal["chat", "completion"]


@dataclass
class _Choice:
    text: list[str] = field(default_factory=list)
    reasoning: list[str] = field(default_factory=list)
    tool_calls: dict[int, dict[str, Any]] = field(default_factory=dict)
    logprobs: list[Any] = field(default_factory=list)
    finish_reason: str | None = None
    stop_reason: str | None = None  # the client's stop sequence that ended it (node.stops)
    role: str = "assistant"

    def take(self, endpoint: Endpoint, choice: dict[str, Any]) -> None:
        if choice.get("finish_reason"):
            self.finish_reason = choice["finish_reason"]
        if isinstance(choice.get("stop_reason"), str):
            self.stop_reason = choice["stop_reason"]
        logprobs = choice.get("logprobs")
        if isinstance(logprobs, dict) and isinstance(logprobs.get("content"), list):
            self.logprobs.extend(logprobs["content"])
        if endpoint == "completion":
            self.text.append(choice.get("text") or "")
            return
        delta = choice.get("delta") or {}
        self.role = delta.get("role") or self.role
        self.text.append(delta.get("content") or "")
        self.reasoning.append(delta.get("reasoning_content") or "")
        for call in delta.get("tool_calls") or []:
            self._take_tool_call(call)

    def _take_tool_call(self, call: dict[str, Any]) -> None:
        merged = self.tool_calls.setdefault(
            int(call.get("index", 0)),
            {"id": None, "type": "function", "function": {"name": "", "arguments": ""}},
        )
        if call.get("id"):
            merged["id"] = call["id"]
        function = call.get("function") or {}
        merged["function"]["name"] += function.get("name") or ""
        merged["function"]["arguments"] += function.get("arguments") or ""

    def render(self, endpoint: Endpoint, index: int) -> dict[str, Any]:
        logprobs: dict[str, Any] | None = {"content": self.logprobs} if self.logprobs else None
        if logprobs is not None and endpoint == "chat":
            logprobs["refusal"] = None  # required beside content in OpenAI's schema
        stop = {"stop_reason": self.stop_reason} if self.stop_reason is not None else {}
        if endpoint == "completion":
            return {"text": "".join(self.text), "index": index, "logprobs": logprobs,
                    "finish_reason": self.finish_reason, **stop}  # fmt: skip
        # ``refusal`` and ``logprobs`` are required in OpenAI's schema (null when absent).
        message: dict[str, Any] = {"role": self.role, "content": "".join(self.text) or None,
                                   "refusal": None}  # fmt: skip
        if any(self.reasoning):
            message["reasoning_content"] = "".join(self.reasoning)
        if self.tool_calls:
            message["tool_calls"] = [self.tool_calls[i] for i in sorted(self.tool_calls)]
        elif message["content"] is None:
            message["content"] = ""
        return {"finish_reason": self.finish_reason, "index": index, "message": message,
                "logprobs": logprobs, **stop}  # fmt: skip


def assemble(endpoint: Endpoint, chunks: list[dict[str, Any]]) -> dict[str, Any]:
    """The whole answer that ``chunks`` (parsed stream chunks, in order) make up."""
    choices: dict[int, _Choice] = {}
    head: dict[str, Any] = {}
    usage: Any = None
    timings: Any = None
    for chunk in chunks:
        for key in ("id", "created", "model", "system_fingerprint"):
            if key in chunk and key not in head:
                head[key] = chunk[key]
        usage = chunk.get("usage") or usage
        timings = chunk.get("timings") or timings
        for choice in chunk.get("choices") or []:
            choices.setdefault(int(choice.get("index", 0)), _Choice()).take(endpoint, choice)
    answer = {
        **head,
        "object": "chat.completion" if endpoint == "chat" else "text_completion",
        "choices": [choices[i].render(endpoint, i) for i in sorted(choices)],
    }
    if usage is not None:
        answer["usage"] = usage
    if timings is not None:
        answer["timings"] = timings
    return answer
