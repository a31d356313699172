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
        ({"model": MODEL, "messages": [{"content": "x"}]}, "messages[0]"),
        (
            {"model": MODEL, "messages": [{"role": "user", "content": "x"}], "max_tokens": 0},
            "max_tokens",
        ),
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
