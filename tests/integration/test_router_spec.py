# The SDKs type their answers as wide unions; these tests read the members they asked for.
# mypy: disable-error-code="union-attr, index, list-item, arg-type, call-overload, misc"
"""The router's client API as the providers publish it, with a real node and the real small
model, driven by the official clients: forced tool calls in every dialect, Anthropic's token
counts, stop sequences and model lists, OpenAI's model retrieval, and the transport: gzip
both ways, HTTP/1.0 streams, browsers (CORS) on an allow-list."""

from __future__ import annotations

import gzip
import json
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anthropic
import httpx
import openai
import pytest

from tests.support import Process, start_fleet_node, start_router, wait_until

LOCAL = "gemma-3-270m"
ALLOWED = "https://app.example"
WEATHER: Any = {"type": "function", "function": {
    "name": "get_weather", "description": "The weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                   "required": ["city"]}}}  # fmt: skip
PARIS: Any = [{"role": "user", "content": "What is the weather in Paris?"}]


@pytest.fixture(scope="module")
def router(model_home: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Process]:
    home = tmp_path_factory.mktemp("spec-router")
    env = {"LLMLB_AUTO_DISTRIBUTE": "none", "LLMLB_CORS_ORIGINS": json.dumps([ALLOWED])}
    process = start_router(home, home, "--allow-cpu-nodes", "--heartbeat-interval", "1",
                           env=env)  # fmt: skip
    node = start_fleet_node(model_home, home, process, home, "spec-node", "--parallel", "2")
    with httpx.Client(base_url=process.url, timeout=120) as http:
        warm = {"model": LOCAL, "max_tokens": 1, "messages": PARIS}
        wait_until(lambda: http.post("/v1/chat/completions", json=warm).status_code == 200, 120)
    yield process
    node.stop()
    process.stop()


def openai_client(router: Process) -> openai.OpenAI:
    return openai.OpenAI(base_url=router.url + "/v1", api_key="unused", max_retries=0,
                         timeout=120, _strict_response_validation=True)  # fmt: skip


def anthropic_client(router: Process) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=router.url, api_key="unused", max_retries=0,
                               timeout=120, _strict_response_validation=True)  # fmt: skip


# -- forced tool calls, each dialect --------------------------------------------------------


def test_anthropic_tool_choice_any_is_a_tool_use(router: Process) -> None:
    message = anthropic_client(router).messages.create(
        model=LOCAL, max_tokens=60, messages=PARIS, tool_choice={"type": "any"},
        extra_body={"temperature": 0},  # (deterministic; this SDK's create has no temperature)
        tools=[{"name": "get_weather", "description": "The weather in a city",
                "input_schema": WEATHER["function"]["parameters"]}],
    )  # fmt: skip
    assert message.stop_reason == "tool_use"
    use = next(block for block in message.content if block.type == "tool_use")
    assert use.name == "get_weather" and isinstance(use.input["city"], str)


def test_responses_tool_choice_required_is_a_function_call(router: Process) -> None:
    response = openai_client(router).responses.create(
        model=LOCAL, input="What is the weather in Paris?", tool_choice="required",
        max_output_tokens=60, temperature=0,  # (sampled, the city's string can run past 60)
        tools=[{"type": "function", "name": "get_weather", "description": "The weather",
                "parameters": WEATHER["function"]["parameters"], "strict": False}],
    )  # fmt: skip
    call = next(item for item in response.output if item.type == "function_call")
    assert call.name == "get_weather" and isinstance(json.loads(call.arguments)["city"], str)
    assert response.parallel_tool_calls is True


def test_openai_tool_choice_required_through_the_router(router: Process) -> None:
    reply = openai_client(router).chat.completions.create(
        model=LOCAL,
        messages=PARIS,
        tools=[WEATHER],
        tool_choice="required",
        max_tokens=60,
        temperature=0,
    )
    assert reply.choices[0].finish_reason == "tool_calls"
    assert reply.choices[0].message.tool_calls[0].function.name == "get_weather"


# -- Anthropic's shapes ---------------------------------------------------------------------


def test_anthropic_counts_tokens_with_the_models_template(router: Process) -> None:
    client = anthropic_client(router)
    short = client.messages.count_tokens(model=LOCAL, messages=[{"role": "user",
                                                                  "content": "Hi"}])  # fmt: skip
    longer = client.messages.count_tokens(model=LOCAL, messages=PARIS)
    assert 0 < short.input_tokens < longer.input_tokens


def test_an_unknown_messages_route_is_an_anthropic_error(router: Process) -> None:
    answer = httpx.post(router.url + "/v1/messages/batches", json={}, timeout=30)
    assert answer.status_code == 404
    assert answer.json()["type"] == "error" and answer.json()["error"]["message"]


def test_a_stop_sequence_is_named_in_anthropics_answer(router: Process) -> None:
    client = anthropic_client(router)
    message = client.messages.create(
        model=LOCAL, max_tokens=30, stop_sequences=["Paris"], extra_body={"temperature": 0},
        messages=[{"role": "user", "content": "What is the capital of France?"}],
    )  # fmt: skip
    assert (message.stop_reason, message.stop_sequence) == ("stop_sequence", "Paris")
    with client.messages.stream(
        model=LOCAL, max_tokens=30, stop_sequences=["Paris"], extra_body={"temperature": 0},
        messages=[{"role": "user", "content": "What is the capital of France?"}],
    ) as stream:  # fmt: skip
        final = stream.get_final_message()
    assert (final.stop_reason, final.stop_sequence) == ("stop_sequence", "Paris")


def test_anthropic_model_lists_have_every_field(router: Process) -> None:
    client = anthropic_client(router)
    listed = client.models.list()
    local = next(m for m in listed.data if m.id == LOCAL)
    assert local.type == "model" and local.display_name and local.created_at
    assert client.models.retrieve(LOCAL).id == LOCAL


# -- OpenAI's model list --------------------------------------------------------------------


def test_openai_models_retrieve_and_availability(router: Process) -> None:
    client = openai_client(router)
    assert client.models.retrieve(LOCAL).id == LOCAL
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("no-such-model")
    with httpx.Client(base_url=router.url, timeout=30) as http:
        rows = http.get("/v1/models").json()["data"]
        available = http.get("/v1/models", params={"available": "true"}).json()["data"]
    assert next(r for r in rows if r["id"] == LOCAL)["available"] is True
    assert all(r["available"] for r in available)
    assert {r["id"] for r in rows if not r.get("available", True)} <= {
        r["id"] for r in rows if r.get("in_catalog")
    }  # only catalog models wait for a download


def test_responses_errors_name_the_responses_fields(router: Process) -> None:
    with httpx.Client(base_url=router.url, timeout=60) as http:
        answer = http.post("/v1/responses", json={
            "model": LOCAL, "max_output_tokens": 5000000,
            "input": [{"role": "user", "content": "hi"}]})  # fmt: skip
    assert answer.status_code == 400, answer.text
    error = answer.json()["error"]
    assert "'max_output_tokens'" in error["message"] and "'max_tokens'" not in error["message"]


# -- transport ------------------------------------------------------------------------------


def test_a_large_whole_answer_is_gzipped_for_a_client_that_accepts_it(router: Process) -> None:
    body = {"model": LOCAL, "input": "hello"}
    with httpx.Client(base_url=router.url, timeout=60) as http:
        zipped = http.post("/v1/embeddings", json=body, headers={"accept-encoding": "gzip"})
        plain = http.post("/v1/embeddings", json=body, headers={"accept-encoding": "identity"})
    assert zipped.headers["content-encoding"] == "gzip"
    assert int(zipped.headers["content-length"]) < len(plain.content) / 2
    assert zipped.json()["data"] == plain.json()["data"]  # httpx inflated it
    assert "content-encoding" not in plain.headers


def test_a_gzip_request_body_is_read_and_a_zip_bomb_refused(router: Process) -> None:
    body = json.dumps({"model": LOCAL, "max_tokens": 2, "messages": PARIS}).encode()
    headers = {"content-type": "application/json", "content-encoding": "gzip"}
    with httpx.Client(base_url=router.url, timeout=60) as http:
        ok = http.post("/v1/chat/completions", content=gzip.compress(body), headers=headers)
        bomb = gzip.compress(b'{"model": "' + b"a" * (200 << 20) + b'"}', 9)
        refused = http.post("/v1/chat/completions", content=bomb, headers=headers)
        odd = http.post("/v1/chat/completions", content=body,
                        headers={**headers, "content-encoding": "compress"})  # fmt: skip
    assert ok.status_code == 200, ok.text
    assert len(bomb) < 1 << 20 and refused.status_code == 413
    assert "after inflating" in refused.json()["error"]["message"]
    assert odd.status_code == 415


def test_an_http_1_0_client_gets_its_stream_unchunked_and_ended_by_closing(
    router: Process,
) -> None:
    host, port = router.url.removeprefix("http://").split(":")
    body = json.dumps({"model": LOCAL, "max_tokens": 4, "stream": True, "messages": PARIS})
    with socket.create_connection((host, int(port)), timeout=60) as sock:
        sock.sendall(f"POST /v1/chat/completions HTTP/1.0\r\ncontent-type: application/json\r\n"
                     f"content-length: {len(body)}\r\n\r\n{body}".encode())  # fmt: skip
        received = b""
        while chunk := sock.recv(65536):  # until the router closes
            received += chunk
    head, _, payload = received.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200")
    assert b"transfer-encoding" not in head.lower()
    assert payload.startswith(b"data: {") and payload.endswith(b"data: [DONE]\n\n")


# -- browsers -------------------------------------------------------------------------------


def test_an_allowed_origins_preflight_and_request_are_answered_with_cors(
    router: Process,
) -> None:
    with httpx.Client(base_url=router.url, timeout=60) as http:
        preflight = http.options("/v1/chat/completions", headers={
            "origin": ALLOWED, "access-control-request-method": "POST",
            "access-control-request-headers": "authorization, content-type, x-evil"})  # fmt: skip
        answer = http.post("/v1/chat/completions", json={
            "model": LOCAL, "max_tokens": 2, "messages": PARIS},
            headers={"origin": ALLOWED, "sec-fetch-site": "cross-site"})  # fmt: skip
    assert preflight.status_code == 204
    assert preflight.headers["access-control-allow-origin"] == ALLOWED
    assert preflight.headers["access-control-allow-headers"] == "authorization, content-type"
    assert answer.status_code == 200
    assert answer.headers["access-control-allow-origin"] == ALLOWED
    assert "x-request-id" in answer.headers["access-control-expose-headers"]


@pytest.mark.parametrize(
    "headers",
    [
        {"origin": "https://evil.example", "sec-fetch-site": "cross-site",
         "content-type": "application/json"},
        {"origin": "https://evil.example", "content-type": "text/plain"},
    ],
    ids=["cross-site", "form-post"],
)  # fmt: skip
def test_another_sites_page_cannot_call_the_client_api(
    router: Process, headers: dict[str, str]
) -> None:
    body = json.dumps({"model": LOCAL, "max_tokens": 2, "messages": PARIS})
    with httpx.Client(base_url=router.url, timeout=60) as http:
        answer = http.post("/v1/chat/completions", content=body, headers=headers)
        preflight = http.options("/v1/chat/completions", headers={
            "origin": "https://evil.example", "access-control-request-method": "POST"})  # fmt: skip
    assert answer.status_code == 403
    assert answer.json()["error"]["code"] == "cross_site_request"
    assert "access-control-allow-origin" not in answer.headers
    assert preflight.status_code == 403


def test_ollamas_client_routes_take_the_same_allow_list(router: Process) -> None:
    """Ollama's routes are the client API too (ollama-js runs in browsers): CORS for an
    allowed origin, and another site's page refused in Ollama's error shape."""
    body = {"model": LOCAL, "stream": False, "options": {"num_predict": 2}, "messages": PARIS}
    with httpx.Client(base_url=router.url, timeout=60) as http:
        preflight = http.options("/api/chat", headers={
            "origin": ALLOWED, "access-control-request-method": "POST",
            "access-control-request-headers": "content-type"})  # fmt: skip
        page = {"origin": ALLOWED, "sec-fetch-site": "cross-site"}
        answer = http.post("/api/chat", json=body, headers=page)
        evil = http.post("/api/chat", content=json.dumps(body), headers={
            "origin": "https://evil.example", "content-type": "text/plain"})  # fmt: skip
        listing = http.get("/api/tags", headers=page)
    assert preflight.status_code == 204
    assert preflight.headers["access-control-allow-origin"] == ALLOWED
    assert answer.status_code == 200 and answer.headers["access-control-allow-origin"] == ALLOWED
    assert listing.headers["access-control-allow-origin"] == ALLOWED
    assert evil.status_code == 403 and set(evil.json()) == {"error"}
    assert "access-control-allow-origin" not in evil.headers


def test_the_admin_api_answers_no_preflight(router: Process) -> None:
    with httpx.Client(base_url=router.url, timeout=30) as http:
        preflight = http.options("/api/keys", headers={
            "origin": ALLOWED, "access-control-request-method": "POST"})  # fmt: skip
    assert "access-control-allow-origin" not in preflight.headers
