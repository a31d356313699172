"""gpt-oss's harmony format through a real node: the chat template inside the GGUF is what
renders the conversation, and the model's channels come back in OpenAI's shape (reasoning in
``reasoning_content``, calls in ``tool_calls``), whole and streamed. The model is the tiny
harmony GGUF of ``tests.harmony``, which always answers with one reasoning message and one
call of ``get_weather``."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.harmony import ARGUMENTS, REASONING, TOOL, write_harmony_gguf
from tests.support import Process, start_fleet_node, start_node, start_router

ROOT = Path(__file__).parent.parent.parent

TOOLS = [{
    "type": "function",
    "function": {
        "name": TOOL, "description": "The weather in a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                       "required": ["city"]},
    },
}]  # fmt: skip
ASK = [{"role": "user", "content": "What is the weather in Paris?"}]


@pytest.fixture(scope="module")
def harmony_node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Process]:
    home = tmp_path_factory.mktemp("harmony-home")
    folder = home / "models" / "gpt-oss-tiny"
    folder.mkdir(parents=True)
    write_harmony_gguf(folder / "model.gguf")
    node = start_node(home, tmp_path_factory.mktemp("harmony-logs"), "--parallel", "1",
                      "--ctx-size", "512", name="harmony-node")  # fmt: skip
    yield node
    node.stop()


def chat(node: Process, **body: Any) -> httpx.Response:
    with httpx.Client(base_url=node.url, timeout=60) as http:
        return http.post(
            "/v1/chat/completions",
            json={"model": "gpt-oss-tiny", "messages": ASK, "tools": TOOLS, "max_tokens": 40,
                  **body},
        )  # fmt: skip


def test_reasoning_and_a_tool_call_come_back_in_openais_shape(harmony_node: Process) -> None:
    reply = chat(harmony_node)
    assert reply.status_code == 200, reply.text
    [choice] = reply.json()["choices"]
    assert choice["finish_reason"] == "tool_calls"
    message = choice["message"]
    assert message["reasoning_content"] == REASONING
    assert not message["content"]  # nothing of the channels leaks into the answer text
    [call] = message["tool_calls"]
    assert call["type"] == "function" and call["id"]
    assert call["function"]["name"] == TOOL
    assert json.loads(call["function"]["arguments"]) == ARGUMENTS


def test_the_stream_carries_reasoning_and_call_deltas(harmony_node: Process) -> None:
    with httpx.Client(base_url=harmony_node.url, timeout=60) as http:
        body = {"model": "gpt-oss-tiny", "messages": ASK, "tools": TOOLS, "max_tokens": 40,
                "stream": True}  # fmt: skip
        with http.stream("POST", "/v1/chat/completions", json=body) as reply:
            assert reply.status_code == 200
            lines = [line for line in reply.iter_lines() if line.startswith("data: ")]
    assert lines[-1] == "data: [DONE]"
    deltas = [json.loads(line[6:])["choices"] for line in lines[:-1]]
    reasoning = "".join(c[0]["delta"].get("reasoning_content") or "" for c in deltas if c)
    calls = [t for c in deltas if c for t in c[0]["delta"].get("tool_calls") or []]
    content = "".join(c[0]["delta"].get("content") or "" for c in deltas if c)
    finish = [c[0]["finish_reason"] for c in deltas if c and c[0]["finish_reason"]]
    assert reasoning == REASONING and content == "" and finish == ["tool_calls"]
    assert {t["index"] for t in calls} == {0}
    assert calls[0]["function"]["name"] == TOOL and calls[0]["id"]
    arguments = "".join(t["function"].get("arguments") or "" for t in calls)
    assert json.loads(arguments) == ARGUMENTS


def test_a_tool_result_goes_back_through_the_gguf_template(harmony_node: Process) -> None:
    first = chat(harmony_node).json()["choices"][0]["message"]
    call = first["tool_calls"][0]
    history = [
        *ASK,
        {"role": "assistant", "content": None, "tool_calls": [call]},
        {"role": "tool", "tool_call_id": call["id"], "content": '{"sky": "clear"}'},
    ]
    reply = chat(harmony_node, messages=history)
    assert reply.status_code == 200, reply.text
    # The history is rendered in harmony (our template inside the GGUF), so the prompt grew.
    grown = reply.json()["usage"]["prompt_tokens"]
    assert grown > chat(harmony_node).json()["usage"]["prompt_tokens"]


def test_the_template_in_use_is_the_one_in_the_gguf(harmony_node: Process) -> None:
    """Without tools, llama.cpp still reads the answer by the GGUF template's format: the
    analysis channel is reasoning, never shown as content."""
    reply = chat(harmony_node, tools=None)
    assert reply.status_code == 200, reply.text
    message = reply.json()["choices"][0]["message"]
    assert message["reasoning_content"] == REASONING
    assert "<|channel|>" not in (message.get("content") or "")


def test_the_ollama_library_gets_the_calls_and_the_thinking(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    """Through the router's Ollama API, the ``ollama`` library (unmodified, in its own
    environment) reads the call with object arguments and the reasoning as ``thinking``."""
    home = tmp_path_factory.mktemp("harmony-fleet")
    folder = home / "models" / "gpt-oss-tiny"
    folder.mkdir(parents=True)
    write_harmony_gguf(folder / "model.gguf")
    router = start_router(home, home, "--allow-cpu-nodes", "--heartbeat-interval", "1",
                          env={"LLMLB_AUTO_DISTRIBUTE": "none"})  # fmt: skip
    node = start_fleet_node(home, home, router, home, "harmony", "--parallel", "1",
                            "--ctx-size", "512")  # fmt: skip
    try:
        python = ROOT / ".venv-clients" / "ollama" / "bin" / "python"
        assert python.exists(), f"{python} is missing: `make clients` installs it"
        done = subprocess.run(
            [str(python), str(ROOT / "tests" / "clients" / "frameworks.py"), "ollama-tools",
             router.url, "gpt-oss-tiny"], capture_output=True, text=True, timeout=300, cwd=ROOT,
        )  # fmt: skip
        results = {r["check"]: r for r in map(json.loads, done.stdout.splitlines())}
        assert set(results) == {"tool call", "tool call (stream)"}, done.stderr[-3000:]
        for result in results.values():
            assert result["ok"], result["got"]
            assert result["got"] == {"name": TOOL, "arguments": ARGUMENTS, "thinking": REASONING}
    finally:
        node.stop()
        router.stop()
