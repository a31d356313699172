"""The real node with the real small model, driven by the official ``openai`` client."""

from __future__ import annotations

import json
import time
from concurrent.futures import ThreadPoolExecutor, wait

import httpx
import pytest
from openai import OpenAI
from openai.types.chat import ChatCompletionMessageParam

from tests.support import Process, wait_until

MODEL = "gemma-3-270m"
FRANCE: list[ChatCompletionMessageParam] = [
    {"role": "user", "content": "What is the capital of France?"}
]


@pytest.fixture(scope="module")
def client(node: Process) -> OpenAI:
    return OpenAI(base_url=node.url + "/v1", api_key="unused", max_retries=0, timeout=120)


def test_chat_answers_paris(client: OpenAI) -> None:
    reply = client.chat.completions.create(
        model=MODEL,
        messages=FRANCE,
        max_tokens=16,
        temperature=0,
    )
    content = reply.choices[0].message.content or ""
    assert "Paris" in content
    # The Q/A transcript's stop sequence ends the answer before the model asks itself more.
    assert "Q:" not in content
    assert reply.choices[0].finish_reason == "stop"
    assert reply.model == MODEL
    assert reply.usage is not None and reply.usage.completion_tokens > 0


def test_text_completion(client: OpenAI) -> None:
    reply = client.completions.create(
        model=MODEL, prompt="Q: What is the capital of France?\nA:", max_tokens=10, temperature=0
    )
    assert "Paris" in reply.choices[0].text
    assert reply.usage is not None and reply.usage.prompt_tokens > 0


def test_streaming_chunks_arrive_one_by_one_with_usage_last(client: OpenAI) -> None:
    stream = client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "Count from 1 to 10."}],
        max_tokens=24,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
    )
    arrivals: list[float] = []
    pieces: list[str] = []
    usage = None
    for chunk in stream:
        arrivals.append(time.monotonic())
        if chunk.choices and chunk.choices[0].delta.content:
            pieces.append(chunk.choices[0].delta.content)
        if chunk.usage is not None:
            usage = chunk.usage
            assert chunk.choices == []
    assert len(pieces) >= 10
    assert "1, 2, 3" in "".join(pieces)
    # Tokens were sent as they were made, not buffered: the stream took time to arrive.
    assert arrivals[-1] - arrivals[0] > 0.1
    assert usage is not None and usage.completion_tokens == 24


def test_stream_without_include_usage_has_no_usage_chunk(client: OpenAI) -> None:
    chunks = list(
        client.chat.completions.create(
            model=MODEL,
            messages=FRANCE,
            max_tokens=8,
            temperature=0,
            stream=True,
        )
    )
    assert chunks
    assert all(chunk.usage is None for chunk in chunks)
    assert "Paris" in "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)


def test_embeddings_have_the_models_dimension_and_are_deterministic(client: OpenAI) -> None:
    first = client.embeddings.create(model=MODEL, input=["hello world", "the sky is blue"])
    again = client.embeddings.create(model=MODEL, input="hello world")
    assert len(first.data) == 2
    assert len(first.data[0].embedding) == 640  # gemma3.embedding_length of the GGUF
    assert first.data[0].embedding == pytest.approx(again.data[0].embedding, abs=1e-6)
    assert first.data[0].embedding != pytest.approx(first.data[1].embedding, abs=1e-3)


def test_models_lists_the_store(client: OpenAI) -> None:
    ids = [model.id for model in client.models.list()]
    assert MODEL in ids


def test_four_concurrent_chats_are_batched(client: OpenAI, node: Process) -> None:
    """Four requests share the engine at once (one batch), each answer still right. Observed
    through the node's slot gauge, not timed: a busy machine slows both sides of a timing."""

    def count(_: int) -> str:
        reply = client.chat.completions.create(
            model=MODEL,
            messages=[{"role": "user", "content": "Count from 1 to 10."}],
            max_tokens=32,
            temperature=0,
        )
        return reply.choices[0].message.content or ""

    busy_at_once = 0
    with ThreadPoolExecutor(4) as pool, httpx.Client(base_url=node.url) as http:
        futures = [pool.submit(count, index) for index in range(4)]
        while wait(futures, timeout=0.02).not_done:
            metrics = http.get("/metrics").text
            busy = sum(
                float(line.rsplit(" ", 1)[1])
                for line in metrics.splitlines()
                if line.startswith("llmlb_node_slots_busy{")
            )
            busy_at_once = max(busy_at_once, int(busy))
        results = [f.result() for f in futures]
    for answer in results:
        assert "1, 2, 3, 4, 5, 6, 7, 8, 9, 10" in answer
    assert busy_at_once >= 3, f"at most {busy_at_once} of 4 requests generated at once"


def test_health_answers_fast_while_every_slot_generates(node: Process) -> None:
    body = {
        "model": MODEL,
        "prompt": "Once upon a time",
        "max_tokens": 64,
        "ignore_eos": True,
        "temperature": 0,
    }
    with ThreadPoolExecutor(4) as pool, node.client() as http:
        futures = [pool.submit(http.post, "/v1/completions", json=body) for _ in range(4)]
        wait_until(lambda: any(m["slots_busy"] for m in http.get("/health").json()["models"]))
        latencies = []
        for _ in range(5):
            started = time.monotonic()
            assert http.get("/health").status_code == 200
            latencies.append(time.monotonic() - started)
            time.sleep(0.05)
        busy = http.get("/health").json()["models"]
        assert all(f.result().status_code == 200 for f in futures)
    assert sorted(latencies)[2] < 0.1, latencies
    assert any(m["slots_busy"] > 0 for m in busy)


def test_client_disconnect_frees_the_slot(node: Process) -> None:
    body = {
        "model": MODEL,
        "messages": [{"role": "user", "content": "Tell me a very long story."}],
        "max_tokens": 2000,
        "ignore_eos": True,
        "stream": True,
    }
    with node.client() as http:
        with http.stream("POST", "/v1/chat/completions", json=body) as response:
            lines = response.iter_lines()
            received = [next(lines) for _ in range(6)]
            assert any(line.startswith("data: ") for line in received)
        # The client hung up after a few tokens; the slot must be free within a moment.
        deadline = time.monotonic() + 2.0
        busy = -1
        while time.monotonic() < deadline:
            models = http.get("/health").json()["models"]
            busy = sum(m["slots_busy"] for m in models)
            if busy == 0:
                break
            time.sleep(0.05)
        assert busy == 0
        metrics = http.get("/metrics").text
        assert 'llmlb_node_slots_busy{model="gemma-3-270m"} 0.0' in metrics


def test_startup_and_metrics(node: Process) -> None:
    with node.client() as http:
        assert http.get("/startup").status_code == 200
        http.post(
            "/v1/chat/completions",
            json={"model": MODEL, "messages": FRANCE, "max_tokens": 4},
        )
        text = http.get("/metrics").text
    for name in (
        "llmlb_node_requests_total",
        "llmlb_node_tokens_total",
        "llmlb_node_time_to_first_token_seconds_bucket",
        "llmlb_node_tokens_per_second",
        "llmlb_node_slots_total",
        "llmlb_node_models_loaded",
        "llmlb_node_memory_used_bytes",
    ):
        assert name in text
    assert 'llmlb_node_requests_total{endpoint="chat",model="gemma-3-270m",status="200"}' in text


def test_request_id_is_echoed(node: Process) -> None:
    with httpx.Client(base_url=node.url) as http:
        response = http.get("/health", headers={"X-Request-Id": "abc123"})
        assert response.headers["x-request-id"] == "abc123"
        assert len(http.get("/health").headers["x-request-id"]) == 16


def test_an_embedding_engine_reports_its_one_slot(client: OpenAI, node: Process) -> None:
    client.embeddings.create(model=MODEL, input="hello")
    with node.client() as http:
        engines = http.get("/health").json()["models"]
    embed = next(e for e in engines if e["purpose"] == "embed")
    assert embed["slots_total"] == 1
    assert all(e["slots_total"] == 4 for e in engines if e["purpose"] == "generate")


def test_unknown_model_names_never_become_node_metric_labels(node: Process) -> None:
    names = ["no-such-model-7", "bad\x01name", "../etc/passwd", "z" * 300]
    with node.client() as http:
        for name in names:
            answer = http.post("/v1/chat/completions", json={"model": name, "messages": FRANCE})
            assert 400 <= answer.status_code < 500, answer.text
        text = http.get("/metrics").text
    assert 'model="unknown"' in text
    assert "no-such-model-7" not in text and "zzzz" not in text and "passwd" not in text


def test_a_stream_without_include_usage_carries_usage_as_an_sse_comment(node: Process) -> None:
    """The node-router contract (README, architecture): clients skip comments; the router
    reads token counts from this one without re-serialising the stream."""
    body = {"model": MODEL, "messages": FRANCE, "max_tokens": 5, "stream": True}
    with node.client() as http, http.stream("POST", "/v1/chat/completions", json=body) as r:
        lines = [line for line in r.iter_lines() if line]
    comments = [line for line in lines if line.startswith(": usage ")]
    assert len(comments) == 1
    usage = json.loads(comments[0][len(": usage ") :])["usage"]
    assert 1 <= usage["completion_tokens"] <= 5 and usage["prompt_tokens"] > 0
    events = [json.loads(line[6:]) for line in lines if line.startswith("data: {")]
    assert all("usage" not in e or e["usage"] is None for e in events)
    assert lines[-1] == "data: [DONE]"


def test_a_whole_answer_abandoned_by_its_client_stops_generating(node: Process) -> None:
    """Non-streaming requests are streamed inside the node, so a client that leaves frees
    the slot at the next token (it used to run to max_tokens, 80 s in the review)."""
    body = {"model": MODEL, "prompt": "Once upon a time", "max_tokens": 2000, "ignore_eos": True}
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(node.url + "/v1/completions", json=body, timeout=3.0)
    with node.client() as http:
        wait_until(
            lambda: sum(m["slots_busy"] for m in http.get("/health").json()["models"]) == 0, 5
        )


def test_several_prompts_get_one_choice_each(node: Process) -> None:
    """Found by the fuzzer: llama.cpp opens a multi-prompt stream with a ``null`` chunk."""
    body = {"model": MODEL, "prompt": ["Once upon", "The sky"], "max_tokens": 2}
    with node.client() as http:
        whole = http.post("/v1/completions", json=body)
        assert whole.status_code == 200, whole.text
        assert sorted(c["index"] for c in whole.json()["choices"]) == [0, 1]
        streamed = http.post("/v1/completions", json={**body, "stream": True})
    assert streamed.status_code == 200
    assert "data: null" not in streamed.text
    assert streamed.text.rstrip().endswith("data: [DONE]")


def test_the_node_answers_to_the_ollama_name_too(client: OpenAI) -> None:
    reply = client.chat.completions.create(
        model="gemma3:270m", messages=FRANCE, max_tokens=8, temperature=0
    )
    assert "Paris" in (reply.choices[0].message.content or "")
    assert reply.model == MODEL
