"""The frameworks people build on, unmodified and in environments of their own, against a real
router with the real small model: chat, streams, forced tool calls, structured output (which
the frameworks build on forced calls or a JSON schema), embeddings. The bundled model is a
base model: what makes the frameworks work with it is exactly the node's grammar-made calls.

The Python frameworks run ``tests/clients/frameworks.py`` in ``.venv-clients/<framework>``,
the Vercel AI SDK ``tests/clients/node/check.mjs`` with Node.js; ``make clients`` (part of
``make test``) installs them.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support import Process, start_fleet_node, start_router, wait_until

ROOT = Path(__file__).parent.parent.parent
CLIENTS = ROOT / "tests" / "clients"
LOCAL = "gemma-3-270m"
SIZE = 640  # the bundled model's embedding length


def _text(got: Any) -> bool:
    return isinstance(got, str) and got.strip() != ""


def _weather(got: Any) -> bool:
    return isinstance(got, dict) and isinstance(got.get("city"), str) and isinstance(
        got.get("forecast"), str)  # fmt: skip


def _called_weather(got: Any) -> bool:
    """A tool call of get_weather, as the framework reports it."""
    text = json.dumps(got)
    return "get_weather" in text or (isinstance(got, str) and got.startswith("sunny in"))


# What each check must give, as a user of the framework would read it.
EXPECTED: dict[str, Callable[[Any], bool]] = {
    "chat": _text,
    "stream": _text,
    "forced tool call": _called_weather,
    "forced tool call (chat completions)": _called_weather,
    "forced tool call (responses)": _called_weather,
    "structured output": _weather,
    "structured output (tools)": _weather,
    "structured output (responses)": _weather,
    "embeddings": lambda got: got == SIZE,
    "generate": _text,
    "models listed": lambda got: isinstance(got, list) and f"{LOCAL}:latest" in got,
    "model shown": lambda got: isinstance(got, list) and "completion" in got,
    "models running": lambda got: isinstance(got, list) and f"{LOCAL}:latest" in got,
    "pull": lambda got: (
        isinstance(got, list) and got[0] == "pulling manifest" and got[-1] == "success"
    ),
    "chat (langchain)": _text,
    "embeddings (langchain)": lambda got: got == SIZE,
}
FRAMEWORKS = {
    "openai-agents": {"chat", "forced tool call (chat completions)",
                      "forced tool call (responses)"},
    "langchain": {"chat", "stream", "forced tool call", "structured output", "embeddings"},
    "llama-index": {"chat", "stream", "structured output", "embeddings"},
    "litellm": {"chat", "stream", "forced tool call", "embeddings"},
    "instructor": {"structured output (tools)", "structured output (responses)"},
    "vercel-ai-sdk": {"chat", "stream", "forced tool call", "structured output", "embeddings"},
    # Ollama's API: the ``ollama`` library and langchain-ollama
    "ollama": {"chat", "stream", "generate", "structured output", "embeddings", "models listed",
               "model shown", "models running", "pull", "chat (langchain)",
               "embeddings (langchain)"},
    "ollama-js": {"chat", "stream", "generate", "structured output", "embeddings",
                  "models listed", "model shown", "models running", "pull"},
}  # fmt: skip


@pytest.fixture(scope="module")
def router(model_home: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Process]:
    home = tmp_path_factory.mktemp("frameworks")
    process = start_router(home, home, "--allow-cpu-nodes", "--heartbeat-interval", "1",
                           env={"LLMLB_AUTO_DISTRIBUTE": "none"})  # fmt: skip
    node = start_fleet_node(model_home, home, process, home, "frameworks-node",
                            "--parallel", "2")  # fmt: skip
    with httpx.Client(base_url=process.url, timeout=120) as http:
        warm = {"model": LOCAL, "max_tokens": 1, "messages": [{"role": "user", "content": "hi"}]}
        wait_until(lambda: http.post("/v1/chat/completions", json=warm).status_code == 200, 120)
    yield process
    node.stop()
    process.stop()


def run_checks(framework: str, url: str) -> dict[str, dict[str, Any]]:
    if framework == "vercel-ai-sdk":
        command = ["node", str(CLIENTS / "node" / "check.mjs"), url, LOCAL]
    elif framework == "ollama-js":
        command = ["node", str(CLIENTS / "node" / "ollama.mjs"), url, LOCAL]
    else:
        python = ROOT / ".venv-clients" / framework / "bin" / "python"
        assert python.exists(), f"{python} is missing: `make clients` installs it"
        command = [str(python), str(CLIENTS / "frameworks.py"), framework, url, LOCAL]
    done = subprocess.run(command, capture_output=True, text=True, timeout=600, cwd=ROOT)
    results = {}
    for line in done.stdout.splitlines():
        if line.startswith("{"):
            result = json.loads(line)
            results[result["check"]] = result
    assert results, f"{framework} printed no results:\n{done.stdout[-2000:]}\n{done.stderr[-3000:]}"
    return results


@pytest.mark.parametrize("framework", list(FRAMEWORKS))
def test_the_framework_works_through_the_router(router: Process, framework: str) -> None:
    results = run_checks(framework, router.url)
    assert set(results) == FRAMEWORKS[framework]
    failed = {
        name: result["got"] for name, result in results.items()
        if not result["ok"] or not EXPECTED[name](result["got"])
    }  # fmt: skip
    assert failed == {}, json.dumps(failed, indent=1)[:6000]
