"""Bad input gets a clear OpenAI-shaped error and the node keeps serving."""

from __future__ import annotations

import time
from typing import Any

import httpx
import pytest

from tests.support import Process

MODEL = "gemma-3-270m"
CHAT = "/v1/chat/completions"


def assert_error(response: httpx.Response, status: int, code: str | None = None) -> dict[str, Any]:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["message"]
    if code is not None:
        assert error["code"] == code
    return dict(error)


@pytest.fixture(scope="module")
def http(node: Process) -> httpx.Client:
    return node.client()


def test_malformed_json(http: httpx.Client) -> None:
    response = http.post(
        CHAT, content=b'{"model": "x", "messages": [', headers={"content-type": "application/json"}
    )
    assert_error(response, 400, "invalid_json")


def test_body_that_is_not_an_object(http: httpx.Client) -> None:
    assert_error(http.post(CHAT, json=[1, 2]), 400, "invalid_json")


def test_unknown_model_is_404_at_once(http: httpx.Client) -> None:
    started = time.monotonic()
    error = assert_error(
        http.post(
            CHAT, json={"model": "no-such-model", "messages": [{"role": "user", "content": "x"}]}
        ),
        404,
        "model_not_supported",
    )
    assert time.monotonic() - started < 1.0
    assert "no-such-model" in error["message"]


@pytest.mark.parametrize("name", ["../../etc/passwd", "a/b", "..", "/abs", "x\u0000y"])
def test_model_names_cannot_escape_the_store(http: httpx.Client, name: str) -> None:
    for path, body in (
        (CHAT, {"model": name, "messages": [{"role": "user", "content": "x"}]}),
        ("/v1/embeddings", {"model": name, "input": "x"}),
    ):
        assert_error(http.post(path, json=body), 400, "invalid_model_name")


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"messages": [{"role": "user", "content": "x"}]}, "model"),
        ({"model": MODEL, "messages": "hello"}, "messages"),
        ({"model": MODEL, "messages": [{"content": "x"}]}, "messages.0.role"),
        (
            {"model": MODEL, "messages": [{"role": "user", "content": "x"}], "max_tokens": 10**9},
            "max_tokens",
        ),
        (
            {"model": MODEL, "messages": [{"role": "user", "content": "x"}], "max_tokens": "5"},
            "max_tokens",
        ),
        (
            {"model": MODEL, "messages": [{"role": "user", "content": "x"}], "temperature": "hot"},
            "temperature",
        ),
        (
            {"model": MODEL, "messages": [{"role": "user", "content": "x"}], "stream": "yes"},
            "stream",
        ),
        ({"model": MODEL, "messages": [{"role": "user", "content": "x"}], "stop": [1]}, "stop"),
    ],
)
def test_missing_or_wrong_typed_fields_name_the_field(
    http: httpx.Client, body: dict[str, Any], param: str
) -> None:
    error = assert_error(http.post(CHAT, json=body), 400)
    assert error["param"] == param


def test_max_tokens_error_names_the_limit(http: httpx.Client) -> None:
    body = {"model": MODEL, "messages": [{"role": "user", "content": "x"}], "max_tokens": 999999}
    assert "4096" in assert_error(http.post(CHAT, json=body), 400)["message"]


def test_prompt_longer_than_the_context_names_the_limit(http: httpx.Client) -> None:
    long_prompt = "word " * 6000
    body = {"model": MODEL, "messages": [{"role": "user", "content": long_prompt}], "max_tokens": 4}
    error = assert_error(http.post(CHAT, json=body), 400, "context_length_exceeded")
    assert "4096" in error["message"]
    # The same, streaming: refused before the stream starts, with a status code.
    error = assert_error(
        http.post(CHAT, json={**body, "stream": True}), 400, "context_length_exceeded"
    )


def test_oversize_body_is_413(http: httpx.Client) -> None:
    body = b'{"model": "x", "prompt": "' + b"a" * (9 * 1024 * 1024) + b'"}'
    assert_error(http.post("/v1/completions", content=body), 413, "payload_too_large")


def test_unknown_route_and_method(http: httpx.Client) -> None:
    assert_error(http.get("/v1/nothing"), 404)
    assert_error(http.get(CHAT), 405)


def test_node_still_serves_after_bad_requests(http: httpx.Client) -> None:
    question = [{"role": "user", "content": "What is the capital of France?"}]
    body = {"model": MODEL, "messages": question, "max_tokens": 8, "temperature": 0}
    response = http.post(CHAT, json=body)
    assert response.status_code == 200
    assert "Paris" in response.json()["choices"][0]["message"]["content"]


USER = [{"role": "user", "content": "x"}]


@pytest.mark.parametrize(
    ("path", "body", "param"),
    [
        # Shapes llama.cpp used to meet as exceptions (500s) in the fuzzer's run.
        (CHAT, {"model": MODEL, "messages": [{"role": "user"}]}, "messages.0"),
        (CHAT, {"model": MODEL, "messages": [{"role": "user", "content": 5}]}, None),
        (CHAT, {"model": MODEL, "messages": [{"role": "user", "content": {"a": 1}}]}, None),
        (CHAT, {"model": MODEL, "messages": [{"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}]}]}, None),
        (CHAT, {"model": MODEL, "messages": USER, "tools": False}, "tools"),
        (CHAT, {"model": MODEL, "messages": USER, "tools": [{"type": "function"}]}, None),
        (CHAT, {"model": MODEL, "messages": USER, "parallel_tool_calls": []}, None),
        (CHAT, {"model": MODEL, "messages": USER, "top_logprobs": 3}, "top_logprobs"),
        (CHAT, {"model": MODEL, "messages": USER, "n_probs": 1000000}, "n_probs"),
        (CHAT, {"model": MODEL, "messages": USER, "n_predict": 10**9}, "n_predict"),
        (CHAT, {"model": MODEL, "messages": USER, "logit_bias": {str(i): 1 for i in range(5000)}},
         "logit_bias"),
        (CHAT, {"model": MODEL, "messages": USER, "n": 1000}, "n"),
        # Found by the fuzzer through /v1/responses: a turn that ends in tool calls.
        (CHAT, {"model": MODEL, "messages": [*USER, {"role": "assistant", "tool_calls": [
            {"id": "c", "type": "function", "function": {"name": "f", "arguments": "{}"}}]}]},
         "messages"),
        ("/v1/completions", {"model": MODEL, "prompt": [1.5, "x"]}, None),
        ("/v1/completions", {"model": MODEL, "prompt": [[1], "x"]}, None),
        ("/v1/completions", {"model": MODEL, "prompt": "x", "logprobs": 1000}, "logprobs"),
        ("/v1/embeddings", {"model": MODEL, "input": "x", "encoding_format": None},
         "encoding_format"),
        ("/v1/embeddings", {"model": MODEL, "input": [[1, [2]]]}, None),
        ("/v1/embeddings", {"model": MODEL, "input": ["x"] * 3000}, "input"),
        ("/v1/embeddings", {"model": MODEL, "input": []}, None),
    ],
)  # fmt: skip
def test_request_shapes_the_engine_cannot_take_are_400_naming_the_field(
    http: httpx.Client, path: str, body: dict[str, Any], param: str | None
) -> None:
    error = assert_error(http.post(path, json=body), 400)
    if param is not None:
        assert error["param"] == param, error
        assert param.split(".")[0] in error["message"]


def test_json_nested_too_deep_is_400_on_every_endpoint(http: httpx.Client) -> None:
    deep = b"[" * 300 + b"]" * 300
    for path in (CHAT, "/v1/completions", "/v1/embeddings"):
        body = b'{"model": "gemma-3-270m", "extra": ' + deep + b"}"
        assert_error(http.post(path, content=body), 400, "invalid_json")


def test_a_huge_prompt_is_refused_before_tokenizing(http: httpx.Client) -> None:
    body = {"model": MODEL, "prompt": "word " * (7 * 1024 * 1024 // 5)}
    started = time.monotonic()
    error = assert_error(http.post("/v1/completions", json=body), 400, "context_length_exceeded")
    assert time.monotonic() - started < 5.0  # tokenizing it took 32 s
    assert "4096" in error["message"]


def test_a_large_embedding_request_does_not_starve_a_small_one(http: httpx.Client) -> None:
    big = {"model": MODEL, "input": [f"sentence number {i} about the sky" for i in range(256)]}
    small = {"model": MODEL, "input": "hello"}
    with httpx.Client(base_url=str(http.base_url), timeout=120) as other:
        done: dict[str, float] = {}

        def run(name: str, body: dict[str, Any], client: httpx.Client) -> None:
            assert client.post("/v1/embeddings", json=body).status_code == 200
            done[name] = time.monotonic()

        import threading

        worker = threading.Thread(target=run, args=("big", big, other))
        worker.start()
        run("small", small, http)
        worker.join()
    assert done["small"] < done["big"]
