"""Traces across the hop, as a collector receives them (a loopback OTLP/HTTP receiver that
decodes the protobuf): a streamed request is one trace from the client's span through the
router's (auth, the attempt on the node, the relay) into the real node's (its preparation,
the engine, llama.cpp's prompt and generation with their tokens); a failover shows both
attempts and which failed; a cloud call is a span of its own. No prompt text in any span."""

from __future__ import annotations

import json
import secrets
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from llmlb.models.smallmodel import SMALL_MODEL_NAME
from tests.fakeclouds import FakeClouds
from tests.fakenode import Behaviour, FakeNode
from tests.otlp import Receiver, Span
from tests.support import Process, node_token, start_fleet_node, start_router, wait_until

QUESTION = "What is the capital of France? (never in a span)"
SERVER, CLIENT = 2, 3


@dataclass
class Traced:
    router: Process
    receiver: Receiver
    home: Path


@pytest.fixture(scope="module")
def traced(model_home: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Traced]:
    receiver = Receiver().start()
    clouds = FakeClouds().start()
    home = tmp_path_factory.mktemp("tracing")
    otel = {"OTEL_EXPORTER_OTLP_ENDPOINT": receiver.url, "OTEL_BSP_SCHEDULE_DELAY": "100"}
    env = {"LLMLB_AUTO_DISTRIBUTE": "none", **otel, **clouds.env()}
    # (round robin: of two nodes, one request in two tries the failover test's broken one)
    router = start_router(home, home, "--allow-cpu-nodes", "--heartbeat-interval", "1",
                          "--balancer", "round_robin", env=env)  # fmt: skip
    node = start_fleet_node(model_home, home, router, home, "traced-node", "--parallel", "1",
                            env=otel)  # fmt: skip
    with router.client() as http:
        wait_until(lambda: any(n["status"] == "ready"
                               for n in http.get("/api/nodes").json()["data"]), 60)  # fmt: skip
    yield Traced(router, receiver, home)
    node.stop()
    router.stop()
    clouds.stop()
    receiver.stop()


def client_span() -> tuple[str, str, dict[str, str]]:
    """A client's trace id and span id, and the traceparent that carries them."""
    trace_id, span_id = secrets.token_hex(16), secrets.token_hex(8)
    return trace_id, span_id, {"traceparent": f"00-{trace_id}-{span_id}-01"}


def one(spans: list[Span], name: str, service: str = "llmlb-router") -> Span:
    [found] = [s for s in spans if s.name == name and s.service == service]
    return found


def test_a_stream_is_one_trace_from_the_client_through_router_and_node(traced: Traced) -> None:
    trace_id, parent_id, headers = client_span()
    body = {"model": SMALL_MODEL_NAME, "max_tokens": 4, "stream": True,
            "messages": [{"role": "user", "content": QUESTION}]}  # fmt: skip
    with (
        traced.router.client() as http,
        http.stream("POST", "/v1/chat/completions", json=body, headers=headers) as answer,
    ):
        assert answer.status_code == 200
        lines = [line for line in answer.iter_lines() if line.startswith("data: ")]
    assert lines[-1] == "data: [DONE]"
    wanted = {"llmlb.prompt", "llmlb.generation", "llmlb.relay", "llmlb.engine"}

    def whole() -> bool:
        return wanted <= {s.name for s in traced.receiver.trace(trace_id)}

    wait_until(whole, timeout=30)
    spans = traced.receiver.trace(trace_id)
    request = one(spans, "llmlb POST /v1/chat/completions")
    assert request.kind == SERVER and request.parent_id == parent_id  # the client's child
    assert request.attributes["llmlb.model"] == SMALL_MODEL_NAME
    assert request.attributes["llmlb.node"] == "traced-node"
    assert request.attributes["http.response.status_code"] == 200
    assert 0 < request.attributes["llmlb.tokens_out"] <= 4
    auth, relay = one(spans, "llmlb.auth"), one(spans, "llmlb.relay")
    attempt = one(spans, "llmlb.attempt")
    assert auth.parent_id == relay.parent_id == attempt.parent_id == request.span_id
    assert attempt.kind == CLIENT and attempt.attributes["llmlb.node"] == "traced-node"
    assert attempt.attributes["llmlb.outcome"] == 200 and not attempt.error
    assert relay.attributes["llmlb.tokens_out"] == request.attributes["llmlb.tokens_out"]
    # The node's span is the attempt's child: traceparent went over the hop.
    node = one(spans, "llmlb.node POST /v1/chat/completions", "llmlb-node")
    assert node.kind == SERVER and node.parent_id == attempt.span_id
    assert (
        node.attributes["llmlb.model"] == SMALL_MODEL_NAME and node.attributes["llmlb.ttft_ms"] > 0
    )
    prepare, engine = (
        one(spans, "llmlb.prepare", "llmlb-node"),
        one(spans, "llmlb.engine", "llmlb-node"),
    )
    prompt = one(spans, "llmlb.prompt", "llmlb-node")
    generation = one(spans, "llmlb.generation", "llmlb-node")
    assert {prepare.parent_id, engine.parent_id, prompt.parent_id, generation.parent_id} == {
        node.span_id}  # fmt: skip
    assert prompt.attributes["llmlb.tokens"] == request.attributes["llmlb.tokens_in"]
    assert generation.attributes["llmlb.tokens"] == request.attributes["llmlb.tokens_out"]
    assert prompt.end_ns <= generation.start_ns + 1_000_000 and generation.end_ns <= node.end_ns
    assert node.start_ns >= attempt.start_ns and request.end_ns >= relay.end_ns
    assert QUESTION not in json.dumps([s.attributes for s in spans])


def test_a_failover_shows_both_attempts_and_which_failed(traced: Traced) -> None:
    broken = FakeNode("broken", model="trace-model", behaviour=Behaviour(status=500)).start()
    working = FakeNode("working", model="trace-model").start()
    try:
        for fake in (broken, working):
            fake.join(traced.router.url, node_token(traced.home), interval=1)
        with traced.router.client() as http:

            def both_ready() -> bool:
                rows: list[dict[str, Any]] = http.get("/api/nodes").json()["data"]
                ready = {n["name"] for n in rows if n["status"] == "ready"}
                return {"broken", "working"} <= ready

            wait_until(both_ready)
            body = {"model": "trace-model", "messages": [{"role": "user", "content": "hi"}]}
            failed_over = None
            for _ in range(4):  # (round robin: the broken one first in one request of two)
                trace_id, _, headers = client_span()
                answer = http.post("/v1/chat/completions", json=body, headers=headers)
                assert answer.status_code == 200 and answer.headers["x-llmlb-node"] == "working"
                if answer.headers["x-llmlb-attempts"] == "2":
                    failed_over = trace_id
                    break
        assert failed_over is not None, "no request tried the broken node first"
        wait_until(lambda: len([s for s in traced.receiver.trace(failed_over)
                                if s.name == "llmlb.attempt"]) == 2, 30)  # fmt: skip
        spans = traced.receiver.trace(failed_over)
        request = one(spans, "llmlb POST /v1/chat/completions")
        first, second = sorted((s for s in spans if s.name == "llmlb.attempt"),
                               key=lambda s: s.attributes["llmlb.attempt"])  # fmt: skip
        assert first.parent_id == second.parent_id == request.span_id
        assert first.attributes["llmlb.node"] == "broken" and first.error
        assert first.attributes["llmlb.outcome"] == 500
        assert second.attributes["llmlb.node"] == "working" and not second.error
        assert request.attributes["llmlb.attempts"] == 2
    finally:
        broken.stop()
        working.stop()


def test_a_cloud_call_is_a_span_of_its_own(traced: Traced) -> None:
    trace_id, _, headers = client_span()
    with traced.router.client() as http:
        question = [{"role": "user", "content": QUESTION}]
        answer = http.post("/v1/chat/completions", headers=headers,
                           json={"model": "openai:gpt-4o-mini", "messages": question})  # fmt: skip
    assert answer.status_code == 200, answer.text
    wait_until(lambda: any(s.name == "llmlb.cloud" for s in traced.receiver.trace(trace_id)), 30)
    spans = traced.receiver.trace(trace_id)
    request, cloud = one(spans, "llmlb POST /v1/chat/completions"), one(spans, "llmlb.cloud")
    assert cloud.kind == CLIENT and cloud.parent_id == request.span_id
    assert cloud.attributes["llmlb.provider"] == "openai"
    assert request.attributes["llmlb.provider"] == "openai"
    assert not [s for s in spans if s.name == "llmlb.attempt"]  # no node was asked


def test_an_unsampled_client_trace_leaves_no_span_on_router_or_node(traced: Traced) -> None:
    """The default sampler follows the caller's decision (parent based): a traceparent whose
    flags say "not sampled" is kept so by the router and, through its traceparent, the node."""
    skipped, _, _ = client_span()
    kept, _, _ = client_span()
    body = {"model": SMALL_MODEL_NAME, "max_tokens": 2,
            "messages": [{"role": "user", "content": "Hi"}]}  # fmt: skip
    with traced.router.client() as http:
        for trace_id, flags in ((skipped, "00"), (kept, "01")):
            headers = {"traceparent": f"00-{trace_id}-{secrets.token_hex(8)}-{flags}"}
            assert http.post("/v1/chat/completions", json=body, headers=headers).is_success
    # The sampled one, sent after, arrives from both parts; the other never does.
    wait_until(lambda: {s.service for s in traced.receiver.trace(kept)}
               >= {"llmlb-router", "llmlb-node"}, 30)  # fmt: skip
    assert traced.receiver.trace(skipped) == []


def test_a_sampling_ratio_from_opentelemetrys_variables_is_applied(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    """OTEL_TRACES_SAMPLER=traceidratio at 0.5: a trace id's low 64 bits below half of their
    range are sampled, the rest not (the sampler is deterministic by trace id)."""
    receiver = Receiver().start()
    clouds = FakeClouds().start()
    home = tmp_path_factory.mktemp("sampled")
    env = {"OTEL_EXPORTER_OTLP_ENDPOINT": receiver.url, "OTEL_BSP_SCHEDULE_DELAY": "100",
           "OTEL_TRACES_SAMPLER": "traceidratio", "OTEL_TRACES_SAMPLER_ARG": "0.5",
           "LLMLB_AUTO_DISTRIBUTE": "none", **clouds.env()}  # fmt: skip
    router = start_router(home, home, env=env)
    try:
        low = [secrets.token_hex(8) + "0" + secrets.token_hex(8)[:15] for _ in range(3)]
        high = [secrets.token_hex(8) + "f" + secrets.token_hex(8)[:15] for _ in range(3)]
        body = {"model": "openai:gpt-4o-mini",
                "messages": [{"role": "user", "content": QUESTION}]}  # fmt: skip
        with router.client() as http:
            for trace_id in high + low:  # (the sampled last: once they are in, all are)
                headers = {"traceparent": f"00-{trace_id}-{secrets.token_hex(8)}-01"}
                answer = http.post("/v1/chat/completions", headers=headers, json=body)
                assert answer.status_code == 200, answer.text
        wait_until(lambda: all(receiver.trace(t) for t in low), 30)
        assert not any(receiver.trace(t) for t in high)
    finally:
        router.stop()
        clouds.stop()
        receiver.stop()


def test_the_engine_span_says_whether_it_loaded_the_model(traced: Traced) -> None:
    body = {"model": SMALL_MODEL_NAME, "max_tokens": 2,
            "messages": [{"role": "user", "content": "Hi"}]}  # fmt: skip
    traces = []
    with traced.router.client() as http:
        for _ in range(2):  # the second finds the model loaded by the first (or earlier)
            trace_id, _, headers = client_span()
            assert http.post("/v1/chat/completions", json=body, headers=headers).is_success
            traces.append(trace_id)

    def engine(trace_id: str) -> Span | None:
        found = [s for s in traced.receiver.trace(trace_id) if s.name == "llmlb.engine"]
        return found[0] if found else None

    wait_until(lambda: all(engine(t) for t in traces), 30)
    first, second = (engine(t) for t in traces)
    assert first is not None and isinstance(first.attributes["llmlb.model_load"], bool)
    assert second is not None and second.attributes["llmlb.model_load"] is False
