"""The node's request checks that need no engine: bounds and defaults."""

from __future__ import annotations

from pathlib import Path

import pytest

from llmlb.common.errors import BadRequest
from llmlb.common.settings import NodeSettings
from llmlb.node.validation import validate_embeddings, validate_generation
from llmlb.translate.chat import check_request

USER = [{"role": "user", "content": "hi"}]


@pytest.fixture
def settings(tmp_path: Path) -> NodeSettings:
    return NodeSettings(home=tmp_path, default_max_tokens=300, max_embedding_inputs=8)


def test_a_request_without_an_output_limit_gets_the_default(settings: NodeSettings) -> None:
    """The OpenAI SDK sends no max_tokens; without a default a request ran to the context."""
    body = validate_generation({"model": "m", "messages": USER}, "chat", 4096, 4, settings)
    assert body["max_tokens"] == 300
    small_context = validate_generation({"model": "m", "prompt": "x"}, "completion", 128, 4,
                                        settings)  # fmt: skip
    assert small_context["max_tokens"] == 128


@pytest.mark.parametrize("field", ["max_tokens", "max_completion_tokens", "n_predict"])
def test_a_request_with_its_own_limit_keeps_it(settings: NodeSettings, field: str) -> None:
    body = validate_generation({"model": "m", "messages": USER, field: 7}, "chat", 4096, 4,
                               settings)  # fmt: skip
    assert body[field] == 7
    assert body.get("max_tokens", 7) == 7  # no default added on top


def test_n_predict_minus_one_is_not_a_way_around_the_limit(settings: NodeSettings) -> None:
    with pytest.raises(BadRequest) as raised:
        validate_generation({"model": "m", "messages": USER, "n_predict": -1}, "chat", 4096, 4,
                            settings)  # fmt: skip
    assert raised.value.param == "n_predict"


def test_strings_are_not_numbers_or_booleans(settings: NodeSettings) -> None:
    for field, value in (("max_tokens", "5"), ("stream", "yes"), ("temperature", "1")):
        with pytest.raises(BadRequest) as raised:
            validate_generation({"model": "m", "messages": USER, field: value}, "chat", 4096, 4,
                                settings)  # fmt: skip
        assert raised.value.param == field


def test_embedding_inputs_are_bounded_with_the_limit_in_the_error(settings: NodeSettings) -> None:
    assert validate_embeddings({"model": "m", "input": "x"}, settings) == ["x"]
    assert validate_embeddings({"model": "m", "input": [1, 2, 3]}, settings) == [[1, 2, 3]]
    with pytest.raises(BadRequest, match="limit is 8"):
        validate_embeddings({"model": "m", "input": ["x"] * 9}, settings)


def test_text_parts_become_one_string(settings: NodeSettings) -> None:
    """Found by the fuzzer: a list of text parts reached the chat template and was a 500."""
    parts = [{"type": "text", "text": "Hello, "}, {"type": "text", "text": "world"}]
    body = validate_generation({"model": "m", "messages": [{"role": "system", "content": parts}]},
                               "chat", 4096, 4, settings)  # fmt: skip
    assert body["messages"] == [{"role": "system", "content": "Hello, world"}]


def test_a_conversation_has_at_most_ten_thousand_turns(settings: NodeSettings) -> None:
    many = [{"role": "user", "content": ""}] * 10_001
    with pytest.raises(BadRequest, match="messages"):
        validate_generation({"model": "m", "messages": many}, "chat", 4096, 4, settings)
    with pytest.raises(BadRequest, match="messages"):
        check_request({"model": "openai:gpt-4o", "messages": many})
