"""Errors from the chat side, told in the dialect's own field names, and the dialects'
shapes where OpenAI's and Anthropic's schemas are strict."""

from __future__ import annotations

from typing import Any

from llmlb.common.errors import BadRequest, RelayedError
from llmlb.router.api.translated import in_terms_of
from llmlb.translate.dialects import messages, responses


def test_a_responses_client_hears_of_input_not_messages() -> None:
    error = in_terms_of(BadRequest("'messages.1.content': not text", param="messages.1.content"),
                        responses.CHAT_FIELDS)  # fmt: skip
    assert (error.message, error.param) == ("'input.1.content': not text", "input.1.content")
    relayed = in_terms_of(RelayedError("'max_tokens' must be at most 4096", status=400),
                          responses.CHAT_FIELDS)  # fmt: skip
    assert relayed.message == "'max_output_tokens' must be at most 4096"


def test_a_name_inside_another_is_left_alone() -> None:
    error = in_terms_of(BadRequest("'messages_extra' is odd"), responses.CHAT_FIELDS)
    assert error.message == "'messages_extra' is odd"


def chat_answer(finish: str, stop_reason: str | None = None) -> dict[str, Any]:
    choice: dict[str, Any] = {"index": 0, "finish_reason": finish,
                              "message": {"role": "assistant", "content": "Hi"}}  # fmt: skip
    if stop_reason is not None:
        choice["stop_reason"] = stop_reason
    return {"choices": [choice], "usage": {"prompt_tokens": 1, "completion_tokens": 1}}


def test_anthropic_hears_which_stop_sequence_ended_the_answer() -> None:
    body = {"model": "m", "max_tokens": 5}
    named = messages.from_chat(chat_answer("stop", "END"), body)
    assert (named["stop_reason"], named["stop_sequence"]) == ("stop_sequence", "END")
    ended = messages.from_chat(chat_answer("stop"), body)
    assert (ended["stop_reason"], ended["stop_sequence"]) == ("end_turn", None)


def test_a_responses_object_has_a_boolean_parallel_tool_calls_and_no_null_user() -> None:
    body = {"model": "m", "input": "hi", "parallel_tool_calls": None}
    response = responses.from_chat(chat_answer("stop"), body)
    assert response["parallel_tool_calls"] is True and "user" not in response
    named = responses.from_chat(chat_answer("stop"), {**body, "user": "u1"})
    assert named["user"] == "u1"
