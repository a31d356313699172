# The SDKs type their answers as wide unions; these tests read the members they asked for.
# mypy: disable-error-code="union-attr, index, list-item, arg-type, call-overload, misc"
"""Cloud models and the Responses and Messages dialects, through a real router.

A real router with one real node (the small model) and loopback fakes of OpenAI, Anthropic
and Google in their own wire formats (``tests.fakeclouds``); the official ``openai`` and
``anthropic`` clients drive the router as users would.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anthropic
import httpx
import openai
import pytest

from tests.fakeclouds import (
    GEMINI_CALL_ID,
    GEMINI_SIGNATURE,
    KEYS,
    TOOL_ARGUMENTS,
    FakeClouds,
)
from tests.support import Process, start_fleet_node, start_router, wait_until

LOCAL = "gemma-3-270m"
PROVIDERS = ("openai", "anthropic", "google")
QUESTION = "What is the capital of France?"
TIMEOUT = 6  # the router's request_timeout: how long a hung provider is waited for
WEATHER_TOOL: dict[str, Any] = {"type": "function", "function": {
    "name": "get_weather", "description": "The weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                   "required": ["city"]},
}}  # fmt: skip


@dataclass
class CloudFleet:
    router: Process
    node: Process
    fakes: FakeClouds
    logs: Path

    def http(self) -> httpx.Client:
        return httpx.Client(base_url=self.router.url, timeout=60)

    def openai(self) -> openai.OpenAI:
        # Strict: every answer must parse as the SDK's types, not merely as JSON.
        return openai.OpenAI(base_url=self.router.url + "/v1", api_key="unused", max_retries=0,
                             timeout=60, _strict_response_validation=True)  # fmt: skip

    def anthropic(self) -> anthropic.Anthropic:
        return anthropic.Anthropic(base_url=self.router.url, api_key="unused", max_retries=0,
                                   timeout=60, _strict_response_validation=True)  # fmt: skip

    def history(self, **params: Any) -> list[dict[str, Any]]:
        with self.http() as http:
            return list(http.get("/api/requests", params={"limit": 200, **params}).json()["data"])


@pytest.fixture(scope="module")
def clouds(model_home: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[CloudFleet]:
    fakes = FakeClouds().start()
    logs = tmp_path_factory.mktemp("cloud-logs")
    home = tmp_path_factory.mktemp("cloud-router")
    env = {**fakes.env(), "LLMLB_REQUEST_TIMEOUT": str(TIMEOUT), "LLMLB_AUTO_DISTRIBUTE": "none",
           "LLMLB_MAX_IMAGE_BYTES": "64KiB"}  # fmt: skip
    router = start_router(home, logs, "--allow-cpu-nodes", "--heartbeat-interval", "1", env=env)
    node = start_fleet_node(model_home, logs, router, home, "node-a", "--parallel", "2")
    fleet = CloudFleet(router, node, fakes, logs)
    with fleet.http() as http:
        # Ready, and the model loaded: the first local answer must not race the timeout.
        wait_until(lambda: http.get("/ready").status_code == 200)
        wait_until(lambda: http.post("/v1/chat/completions", json={
            "model": LOCAL, "max_tokens": 1,
            "messages": [{"role": "user", "content": "hi"}]}).status_code == 200, 120)  # fmt: skip
    yield fleet
    node.stop()
    router.stop()
    fakes.stop()


def chat_messages() -> list[dict[str, Any]]:
    return [{"role": "system", "content": "Answer briefly."},
            {"role": "user", "content": QUESTION}]  # fmt: skip


# -- OpenAI chat, to every provider ---------------------------------------------------------


@pytest.mark.parametrize("provider", PROVIDERS)
def test_chat_reaches_each_provider_and_answers_in_openai_format(
    clouds: CloudFleet, provider: str
) -> None:
    client = clouds.openai()
    answer = client.chat.completions.create(model=f"{provider}:chat-model",
                                            messages=chat_messages(), max_tokens=50,
                                            temperature=0.5, stop=["END"])  # fmt: skip
    assert answer.choices[0].message.content == f"Hello from {provider}: {QUESTION}"
    assert answer.choices[0].finish_reason == "stop"
    assert answer.usage is not None
    assert (answer.usage.prompt_tokens, answer.usage.completion_tokens) == (11, 7)
    sent = clouds.fakes.last(provider).body
    if provider == "anthropic":  # the system prompt lifted out, the options renamed
        assert sent["system"] == "Answer briefly."
        assert sent["messages"] == [
            {"role": "user", "content": [{"type": "text", "text": QUESTION}]}
        ]
        assert (sent["max_tokens"], sent["stop_sequences"], sent["model"]) == (
            50, ["END"], "chat-model")  # fmt: skip
    elif provider == "google":
        assert sent["systemInstruction"] == {"parts": [{"text": "Answer briefly."}]}
        assert sent["generationConfig"] == {"temperature": 0.5, "maxOutputTokens": 50,
                                            "stopSequences": ["END"]}  # fmt: skip
    else:
        assert sent["model"] == "chat-model" and sent["messages"] == chat_messages()


@pytest.mark.parametrize("provider", PROVIDERS)
def test_chat_streams_from_each_provider_as_openai_chunks(
    clouds: CloudFleet, provider: str
) -> None:
    stream = clouds.openai().chat.completions.create(
        model=f"{provider}:chat-model", messages=chat_messages(), stream=True,
        stream_options={"include_usage": True},
    )  # fmt: skip
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == f"Hello from {provider}: {QUESTION}"
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices]
    assert finishes[-1] == "stop"
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 7


def test_fields_a_provider_lacks_are_named_in_a_header(clouds: CloudFleet) -> None:
    with clouds.http() as http:
        reply = http.post("/v1/chat/completions", json={
            "model": "anthropic:chat-model", "messages": chat_messages(), "logprobs": True,
            "frequency_penalty": 0.5})  # fmt: skip
    assert reply.status_code == 200
    assert reply.headers["x-llmlb-ignored-fields"] == "frequency_penalty,logprobs"
    assert "logprobs" not in clouds.fakes.last("anthropic").body
    with clouds.http() as http:
        refused = http.post("/v1/chat/completions", json={
            "model": "anthropic:chat-model", "messages": chat_messages(), "n": 3})  # fmt: skip
    assert refused.status_code == 400 and refused.json()["error"]["param"] == "n"


def test_a_stream_without_include_usage_has_no_usage_chunk(clouds: CloudFleet) -> None:
    chunks: list[Any] = list(clouds.openai().chat.completions.create(
        model="anthropic:chat-model", messages=chat_messages(), stream=True))  # fmt: skip
    assert all(c.choices for c in chunks)


@pytest.mark.parametrize("provider", PROVIDERS)
@pytest.mark.parametrize("stream", [False, True])
def test_tool_calls_round_trip_through_each_provider(
    clouds: CloudFleet, provider: str, stream: bool
) -> None:
    client = clouds.openai()
    model = f"{provider}:tool-model"
    messages: list[Any] = [{"role": "user", "content": "Weather in Paris?"}]
    if stream:
        chunks: list[Any] = list(client.chat.completions.create(
            model=model, messages=messages, tools=[WEATHER_TOOL], stream=True))  # fmt: skip
        deltas = [d for c in chunks if c.choices for d in c.choices[0].delta.tool_calls or []]
        call_id = next(d.id for d in deltas if d.id)
        name = next(d.function.name for d in deltas if d.function and d.function.name)
        arguments = "".join(d.function.arguments or "" for d in deltas if d.function)
        finish = [c.choices[0].finish_reason for c in chunks if c.choices][-1]
    else:
        answer = client.chat.completions.create(model=model, messages=messages,
                                                tools=[WEATHER_TOOL])  # fmt: skip
        calls = answer.choices[0].message.tool_calls or []
        call = calls[0]
        assert call.type == "function"
        call_id, name, arguments = call.id, call.function.name, call.function.arguments
        finish = answer.choices[0].finish_reason
    assert (name, json.loads(arguments), finish) == ("get_weather", TOOL_ARGUMENTS, "tool_calls")
    sent = clouds.fakes.last(provider).body
    if provider == "anthropic":
        assert sent["tools"][0]["input_schema"]["required"] == ["city"]
    if provider == "google":
        assert sent["tools"][0]["functionDeclarations"][0]["name"] == "get_weather"
    messages += [
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": call_id, "type": "function",
             "function": {"name": name, "arguments": arguments}}]},
        {"role": "tool", "tool_call_id": call_id, "content": "sunny, 21 C"},
    ]  # fmt: skip
    answer = client.chat.completions.create(model=model, messages=messages, tools=[WEATHER_TOOL])
    assert answer.choices[0].message.content == "The tool said sunny, 21 C"
    sent = clouds.fakes.last(provider).body
    if provider == "anthropic":
        assert sent["messages"][1]["content"] == [{"type": "tool_use", "id": call_id,
            "name": "get_weather", "input": TOOL_ARGUMENTS}]  # fmt: skip
        assert sent["messages"][2]["content"] == [{"type": "tool_result",
            "tool_use_id": call_id, "content": "sunny, 21 C"}]  # fmt: skip
    if provider == "google":
        # Gemini's call id and thought signature came back with the call, carried in the id.
        assert sent["contents"][1] == {"role": "model", "parts": [
            {"functionCall": {"name": "get_weather", "args": TOOL_ARGUMENTS,
                              "id": GEMINI_CALL_ID},
             "thoughtSignature": GEMINI_SIGNATURE}]}  # fmt: skip
        answered = sent["contents"][2]["parts"][0]["functionResponse"]
        assert (answered["name"], answered["id"]) == ("get_weather", GEMINI_CALL_ID)


def test_images_reach_providers_in_their_own_shape(clouds: CloudFleet) -> None:
    pixel = base64.b64encode(b"\x89PNG\r\n\x1a\n" + b"\0" * 32).decode()
    content = [
        {"type": "text", "text": "What is this?"},
        {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{pixel}"}},
        {"type": "image_url", "image_url": {"url": "https://example.com/cat.webp"}},
    ]
    client = clouds.openai()
    for provider in ("anthropic", "google"):
        message = {"role": "user", "content": content}
        client.chat.completions.create(model=f"{provider}:vision", messages=[message])
    blocks = clouds.fakes.last("anthropic").body["messages"][0]["content"]
    assert blocks[1] == {"type": "image", "source": {"type": "base64",
                         "media_type": "image/png", "data": pixel}}  # fmt: skip
    assert blocks[2] == {"type": "image", "source": {"type": "url",
                         "url": "https://example.com/cat.webp"}}  # fmt: skip
    parts = clouds.fakes.last("google").body["contents"][0]["parts"]
    assert parts[1] == {"inlineData": {"mimeType": "image/png", "data": pixel}}
    assert parts[2] == {"fileData": {"mimeType": "image/webp",
                                     "fileUri": "https://example.com/cat.webp"}}  # fmt: skip


def test_an_oversize_image_is_refused_before_any_provider_sees_it(clouds: CloudFleet) -> None:
    big = base64.b64encode(b"\0" * 100_000).decode()  # the router allows 64 KiB here
    before = sum(clouds.fakes.calls.values())
    with clouds.http() as http:
        reply = http.post(
            "/v1/chat/completions",
            json={
                "model": "anthropic:vision",
                "messages": [
                    {
                        "role": "user",
                        "content": [
                            {
                                "type": "image_url",
                                "image_url": {"url": f"data:image/png;base64,{big}"},
                            }
                        ],
                    }
                ],
            },
        )
    assert reply.status_code == 413
    assert "image is larger than" in reply.json()["error"]["message"]
    assert sum(clouds.fakes.calls.values()) == before


# -- provider errors and bad answers -----------------------------------------------------------


@pytest.mark.parametrize("provider", PROVIDERS)
def test_a_provider_error_keeps_its_status_and_message(clouds: CloudFleet, provider: str) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        clouds.openai().chat.completions.create(model=f"{provider}:refused",
                                                messages=chat_messages())  # fmt: skip
    assert f"{provider} refuses this request" in caught.value.message
    assert caught.value.body["code"] == "provider_error"


@pytest.mark.parametrize("provider", PROVIDERS)
def test_a_rate_limit_is_retried_after_retry_after(clouds: CloudFleet, provider: str) -> None:
    before = clouds.fakes.calls[provider]
    with clouds.http() as http:
        reply = http.post("/v1/chat/completions", json={"model": f"{provider}:limited",
                                                        "messages": chat_messages()})  # fmt: skip
    assert reply.status_code == 200, reply.text
    assert reply.headers["x-llmlb-attempts"] == "3"
    assert clouds.fakes.calls[provider] - before == 3


def test_a_provider_that_stays_down_answers_its_status_after_the_retries(
    clouds: CloudFleet,
) -> None:
    before = clouds.fakes.calls["google"]
    with clouds.http() as http:
        reply = http.post("/v1/chat/completions", json={"model": "google:down",
                                                        "messages": chat_messages()})  # fmt: skip
    assert reply.status_code == 503
    assert "google answered 503: the service is down" in reply.json()["error"]["message"]
    assert clouds.fakes.calls["google"] - before == 3  # the first try and two retries


@pytest.mark.parametrize("provider", PROVIDERS)
def test_malformed_answers_end_in_clear_errors(clouds: CloudFleet, provider: str) -> None:
    with clouds.http() as http:
        whole = http.post("/v1/chat/completions", json={"model": f"{provider}:broken",
                                                        "messages": chat_messages()})  # fmt: skip
        assert whole.status_code == 502
        assert "not JSON" in whole.json()["error"]["message"]
        streamed = http.post(
            "/v1/chat/completions",
            json={"model": f"{provider}:broken", "messages": chat_messages(), "stream": True},
        )
    events = [line[6:] for line in streamed.text.splitlines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    error = json.loads(events[-2])["error"]
    assert error["message"] == f"{provider}'s stream ended before its final event"


def test_a_hung_provider_is_a_504_and_a_stalled_stream_ends(clouds: CloudFleet) -> None:
    with clouds.http() as http:
        hung = http.post("/v1/chat/completions", json={"model": "openai:hang",
                                                       "messages": chat_messages()})  # fmt: skip
        assert hung.status_code == 504
        assert f"openai did not answer within {TIMEOUT} s" in hung.json()["error"]["message"]
        stalled = http.post("/v1/chat/completions", json={
            "model": "google:stall", "messages": chat_messages(), "stream": True})  # fmt: skip
    assert stalled.status_code == 200
    assert f"google sent nothing for {TIMEOUT} s" in stalled.text
    assert stalled.text.endswith("data: [DONE]\n\n")


def test_an_unknown_prefix_is_a_404_naming_the_known_ones(clouds: CloudFleet) -> None:
    """``mistral:large`` reads as Ollama's model-and-tag first (``mistral-large``); when
    nothing serves it, the answer names both readings."""
    with clouds.http() as http:
        reply = http.post("/v1/chat/completions", json={"model": "mistral:large",
                                                        "messages": chat_messages()})  # fmt: skip
    assert reply.status_code == 404
    error = reply.json()["error"]
    assert error["code"] == "model_not_supported"
    assert "'mistral-large'" in error["message"]
    assert "openai:, anthropic:, google:" in error["message"]


def test_other_endpoints_pass_through_to_openai_only(clouds: CloudFleet) -> None:
    with clouds.http() as http:
        embedded = http.post("/v1/embeddings", json={"model": "openai:text-embedding-3-small",
                                                     "input": "hello"})  # fmt: skip
        assert embedded.status_code == 200
        assert embedded.json()["data"][0]["embedding"] == [0.25, -0.5, 0.125]
        assert clouds.fakes.last("openai").body == {"model": "text-embedding-3-small",
                                                    "input": "hello"}  # fmt: skip
        refused = http.post("/v1/embeddings", json={"model": "google:gemini", "input": "x"})
        assert refused.status_code == 400
        assert "/v1/chat/completions" in refused.json()["error"]["message"]


# -- the model list, history, metrics, keys ------------------------------------------------------


def test_models_lists_each_providers_models_with_their_prefix(clouds: CloudFleet) -> None:
    with clouds.http() as http:
        ids = [m["id"] for m in http.get("/v1/models").json()["data"]]
        calls = sum(clouds.fakes.calls.values())
        again = [m["id"] for m in http.get("/v1/models").json()["data"]]
    assert {"openai:gpt-4o-mini", "anthropic:claude-1", "anthropic:claude-2",
            "google:gemini-2.0-flash", LOCAL} <= set(ids)  # fmt: skip
    assert "google:text-embedding-004" not in ids  # it cannot chat
    assert again == ids and sum(clouds.fakes.calls.values()) == calls


def test_local_requests_never_reach_a_provider(clouds: CloudFleet) -> None:
    before = sum(clouds.fakes.calls.values())
    client = clouds.openai()
    client.chat.completions.create(model=LOCAL, messages=chat_messages(), max_tokens=4)
    client.responses.create(model=LOCAL, input=QUESTION, max_output_tokens=4)
    clouds.anthropic().messages.create(
        model=LOCAL, max_tokens=4, messages=[{"role": "user", "content": QUESTION}]
    )
    assert sum(clouds.fakes.calls.values()) == before


def test_cloud_requests_are_in_history_and_metrics_and_keys_are_nowhere(
    clouds: CloudFleet,
) -> None:
    clouds.openai().chat.completions.create(model="anthropic:history-model",
                                            messages=chat_messages())  # fmt: skip

    def recorded() -> list[dict[str, Any]]:
        return [r for r in clouds.history() if r["model"] == "anthropic:history-model"]

    wait_until(lambda: bool(recorded()))
    row = recorded()[0]
    assert (row["node_id"], row["status"], row["tokens_in"], row["tokens_out"]) == (
        "anthropic", 200, 11, 7)  # fmt: skip
    with clouds.http() as http:
        metrics = http.get("/metrics").text
        everything = metrics + json.dumps(clouds.history()) + http.get("/v1/models").text
    assert 'provider="anthropic"' in metrics
    everything += clouds.router.log_path.read_text()
    for key in KEYS.values():
        assert key not in everything


# -- the Responses API ---------------------------------------------------------------------------


def test_responses_api_against_a_local_node(clouds: CloudFleet) -> None:
    client = clouds.openai()
    response = client.responses.create(model=LOCAL, input=QUESTION, instructions="Be brief.",
                                       max_output_tokens=8, temperature=0)  # fmt: skip
    assert response.status in ("completed", "incomplete")
    assert response.output_text.strip()
    assert response.usage is not None and response.usage.input_tokens > 0
    assert 0 < response.usage.output_tokens <= 8


def test_responses_api_streams_its_events_from_a_local_node(clouds: CloudFleet) -> None:
    events = list(clouds.openai().responses.create(
        model=LOCAL, input=[{"role": "user", "content": QUESTION}], max_output_tokens=8,
        temperature=0, stream=True))  # fmt: skip
    kinds = [e.type for e in events]
    assert kinds[:2] == ["response.created", "response.in_progress"]
    assert kinds[-1] in ("response.completed", "response.incomplete")
    assert "response.output_text.delta" in kinds and "response.output_text.done" in kinds
    deltas = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    done = next(e for e in events if e.type == "response.output_text.done")
    assert deltas == done.text and deltas.strip()
    assert [e.sequence_number for e in events] == list(range(len(events)))
    final = events[-1].response
    assert final.output_text == deltas and final.usage is not None


@pytest.mark.parametrize("stream", [False, True])
def test_responses_api_function_tools_round_trip(clouds: CloudFleet, stream: bool) -> None:
    client = clouds.openai()
    tool = {
        "type": "function",
        "name": "get_weather",
        "description": "The weather",
        "parameters": WEATHER_TOOL["function"]["parameters"],
    }
    if stream:
        events = list(client.responses.create(model="google:tool-model", input="Weather?",
                                              tools=[tool], stream=True))  # fmt: skip
        final = events[-1].response
        assert any(e.type == "response.function_call_arguments.done" for e in events)
    else:
        final = client.responses.create(model="google:tool-model", input="Weather?",
                                        tools=[tool])  # fmt: skip
    call: Any = final.output[0]
    assert call.type == "function_call"
    assert (call.name, json.loads(call.arguments)) == ("get_weather", TOOL_ARGUMENTS)
    answer = client.responses.create(model="google:tool-model", tools=[tool], input=[
        {"role": "user", "content": "Weather?"},
        {"type": "function_call", "call_id": call.call_id, "name": call.name,
         "arguments": call.arguments},
        {"type": "function_call_output", "call_id": call.call_id, "output": "rainy"},
    ])  # fmt: skip
    assert answer.output_text == "The tool said rainy"


def test_responses_api_passes_through_to_openai(clouds: CloudFleet) -> None:
    client = clouds.openai()
    response = client.responses.create(model="openai:gpt-4o-mini", input="hi")
    assert response.output_text == "Hello from openai responses: hi"
    assert clouds.fakes.last("openai").path == "/openai/v1/responses"
    assert clouds.fakes.last("openai").body["model"] == "gpt-4o-mini"
    events = list(client.responses.create(model="openai:gpt-4o-mini", input="hi", stream=True))
    assert events[-1].type == "response.completed"


def test_previous_response_id_is_refused_clearly(clouds: CloudFleet) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        clouds.openai().responses.create(model=LOCAL, input="hi", previous_response_id="resp_1")
    assert "stores no responses" in caught.value.message


# -- the Messages API ----------------------------------------------------------------------------


def test_messages_api_against_a_local_node(clouds: CloudFleet) -> None:
    message = clouds.anthropic().messages.create(
        model=LOCAL, max_tokens=8, system="Answer briefly.", extra_body={"temperature": 0},
        messages=[{"role": "user", "content": QUESTION}],
    )  # fmt: skip
    assert message.type == "message" and message.role == "assistant"
    assert message.content[0].type == "text" and message.content[0].text.strip()
    assert message.stop_reason in ("end_turn", "max_tokens")
    assert message.usage.input_tokens > 0 and 0 < message.usage.output_tokens <= 8


def test_messages_api_streams_from_a_local_node(clouds: CloudFleet) -> None:
    with clouds.anthropic().messages.stream(
        model=LOCAL, max_tokens=8, extra_body={"temperature": 0},
        messages=[{"role": "user", "content": QUESTION}],
    ) as stream:  # fmt: skip
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert text.strip() and final.content[0].text == text
    assert final.stop_reason in ("end_turn", "max_tokens")
    assert final.usage.output_tokens > 0


@pytest.mark.parametrize("stream", [False, True])
def test_messages_api_tools_through_another_provider(clouds: CloudFleet, stream: bool) -> None:
    client = clouds.anthropic()
    tool = {
        "name": "get_weather",
        "description": "The weather",
        "input_schema": WEATHER_TOOL["function"]["parameters"],
    }
    ask = {"model": "openai:tool-model", "max_tokens": 50, "tools": [tool],
           "messages": [{"role": "user", "content": "Weather?"}]}  # fmt: skip
    if stream:
        with client.messages.stream(**ask) as events:
            message = events.get_final_message()
    else:
        message = client.messages.create(**ask)
    use = message.content[0]
    assert use.type == "tool_use" and use.input == TOOL_ARGUMENTS
    assert message.stop_reason == "tool_use"
    answer = client.messages.create(model="openai:tool-model", max_tokens=50, tools=[tool],
        messages=[
            {"role": "user", "content": "Weather?"},
            {"role": "assistant", "content": [{"type": "tool_use", "id": use.id,
                                               "name": use.name, "input": use.input}]},
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": use.id,
                                          "content": "windy"}]},
        ])  # fmt: skip
    assert answer.content[0].text == "The tool said windy"


@pytest.mark.parametrize("stream", [False, True])
def test_messages_api_passes_through_to_anthropic(clouds: CloudFleet, stream: bool) -> None:
    client = clouds.anthropic()
    ask = {"model": "anthropic:claude-x", "max_tokens": 20,
           "messages": [{"role": "user", "content": "hi"}]}  # fmt: skip
    if stream:
        with client.messages.stream(**ask) as events:
            message = events.get_final_message()
    else:
        message = client.messages.create(**ask)
    assert message.content[0].text == "Hello from anthropic: hi"
    assert message.usage.output_tokens == 7
    seen = clouds.fakes.last("anthropic")
    assert seen.body["model"] == "claude-x" and seen.headers["anthropic-version"] == "2023-06-01"


def test_a_relayed_stream_that_breaks_ends_with_the_providers_error_event(
    clouds: CloudFleet,
) -> None:
    with clouds.http() as http:
        reply = http.post("/v1/messages", json={
            "model": "anthropic:stall", "max_tokens": 20, "stream": True,
            "messages": [{"role": "user", "content": "hi"}]})  # fmt: skip
    assert reply.status_code == 200
    last = reply.text.strip().split("\n\n")[-1]
    assert last.startswith("event: error\ndata: ")
    error = json.loads(last.split("data: ", 1)[1])
    assert error["type"] == "error" and error["error"]["type"] == "api_error"
    assert f"anthropic sent nothing for {TIMEOUT} s" in error["error"]["message"]


def test_messages_api_errors_come_in_anthropics_shape(clouds: CloudFleet) -> None:
    with pytest.raises(anthropic.BadRequestError) as caught:
        clouds.anthropic().messages.create(
            model=LOCAL, max_tokens=0, messages=[{"role": "user", "content": "hi"}]
        )
    body = caught.value.body
    assert isinstance(body, dict) and body["type"] == "error"
    assert "max_tokens" in body["error"]["message"]
