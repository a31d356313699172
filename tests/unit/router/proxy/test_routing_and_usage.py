"""Reading token counts from answers without parsing them, and trace ids."""

import re

from llmlb.router.proxy.routing import forwarded_headers, traceparent
from llmlb.router.proxy.usage import usage_in


def test_usage_from_a_whole_answer() -> None:
    body = b'{"choices":[],"usage":{"completion_tokens":4,"prompt_tokens":12,"total_tokens":16}}'
    assert usage_in(body) == {"prompt_tokens": 12, "completion_tokens": 4}


def test_usage_from_the_tail_of_a_stream_takes_the_last_one() -> None:
    tail = (
        b'data: {"choices":[{"delta":{"content":"prompt_tokens"}}]}\n\n'
        b': usage {"choices":[],"usage":{"completion_tokens":6,"prompt_tokens":9}}\n\n'
        b"data: [DONE]\n\n"
    )
    assert usage_in(tail) == {"prompt_tokens": 9, "completion_tokens": 6}


def test_no_usage() -> None:
    assert usage_in(b'data: {"choices":[]}\n\n') == {}


def test_traceparent_is_w3c_shaped() -> None:
    assert re.fullmatch(r"00-[0-9a-f]{32}-[0-9a-f]{16}-01", traceparent())


def test_a_forwarded_header_cannot_carry_a_line_break_into_the_nodes_request() -> None:
    headers = forwarded_headers(
        {"x-request-id": "r1\r\nauthorization: Bearer x", "tracestate": "a=1"}
    )
    assert "x-request-id" not in headers
    assert headers["tracestate"] == "a=1"
    assert re.fullmatch(r"00-[0-9a-f]{32}-[0-9a-f]{16}-01", headers["traceparent"])


def test_usage_in_anthropics_names_counts_the_same() -> None:
    body = b'{"usage":{"input_tokens":7,"output_tokens":3}}'
    assert usage_in(body) == {"prompt_tokens": 7, "completion_tokens": 3}
