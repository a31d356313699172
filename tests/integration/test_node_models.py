"""Several models on one node: eviction under a memory budget, and broken model files."""

from __future__ import annotations

import os
import shutil
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from llmlb.models.store import ModelStore
from tests.support import Process, start_node, wait_until

QUESTION = [{"role": "user", "content": "What is the capital of France?"}]


@pytest.fixture(scope="module")
def two_model_node(
    small_model_path: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Process]:
    """A node whose budget fits one copy of the small model; two names point at the file.

    Also holds a file that is not GGUF and a truncated GGUF.
    """
    home = tmp_path_factory.mktemp("two-models")
    store = ModelStore(home / "models")
    for name in ("first", "second"):
        store.add(name, small_model_path, sha256="-", metadata={"chat_template": "qa"})
    (home / "models" / "not-gguf").mkdir()
    (home / "models" / "not-gguf" / "model.gguf").write_bytes(b"<html>404 not found</html>")
    truncated = home / "models" / "truncated"
    truncated.mkdir()
    with small_model_path.open("rb") as source, (truncated / "model.gguf").open("wb") as target:
        shutil.copyfileobj(source, target)
        target.truncate(os.path.getsize(small_model_path) // 2)
    process = start_node(
        home, tmp_path_factory.mktemp("logs"), "--memory-budget", "500MB",
        "--prompt-cache-mib", "0", "--parallel", "2", "--ctx-size", "2048", name="two-models",
    )  # fmt: skip
    yield process
    process.stop()


def loaded(http: httpx.Client) -> set[str]:
    return {m["name"] for m in http.get("/health").json()["models"]}


def test_second_model_evicts_the_first_only_when_idle(two_model_node: Process) -> None:
    with two_model_node.client() as http:
        ask = {"messages": QUESTION, "max_tokens": 8, "temperature": 0}
        assert http.post("/v1/chat/completions", json={"model": "first", **ask}).status_code == 200
        assert loaded(http) == {"first"}

        long_stream = {"model": "first", "prompt": "Once upon a time", "max_tokens": 60,
                       "ignore_eos": True, "stream": True}  # fmt: skip
        finished: dict[str, float] = {}

        def stream_first() -> None:
            with (
                httpx.Client(base_url=two_model_node.url, timeout=120) as other,
                other.stream("POST", "/v1/completions", json=long_stream) as response,
            ):
                for _ in response.iter_lines():
                    pass
            finished["first"] = time.monotonic()

        streamer = threading.Thread(target=stream_first)
        streamer.start()
        wait_until(lambda: any(  # the stream on "first" is generating
            m["name"] == "first" and m["slots_busy"] for m in http.get("/health").json()["models"]
        ))  # fmt: skip
        reply = http.post("/v1/chat/completions", json={"model": "second", **ask})
        finished["second"] = time.monotonic()
        streamer.join()
        assert reply.status_code == 200, reply.text
        assert "Paris" in reply.json()["choices"][0]["message"]["content"]
        # "second" had to wait until "first" was idle, then took its place.
        assert finished["second"] > finished["first"]
        assert loaded(http) == {"second"}
        metrics = http.get("/metrics").text
        assert 'llmlb_node_model_events_total{event="evicted",model="first"} 1.0' in metrics


@pytest.mark.parametrize(
    ("name", "reason"), [("not-gguf", "not a GGUF file"), ("truncated", "truncated")]
)
def test_broken_model_file_is_a_clear_error_and_the_node_keeps_serving(
    two_model_node: Process, name: str, reason: str
) -> None:
    with two_model_node.client() as http:
        response = http.post(
            "/v1/chat/completions", json={"model": name, "messages": QUESTION, "max_tokens": 4}
        )
        assert response.status_code == 500
        error = response.json()["error"]
        assert error["code"] == "model_load_failed"
        assert name in error["message"] and reason in error["message"]
        ok = http.post(
            "/v1/chat/completions",
            json={"model": "second", "messages": QUESTION, "max_tokens": 8, "temperature": 0},
        )
        assert ok.status_code == 200
