"""Every error has OpenAI's shape and a fitting status; engine errors map onto the tree."""

import pytest

from llmlb.common.errors import (
    BadRequest,
    ContextLengthExceeded,
    LlmlbError,
    ModelNotFound,
    NotImplementedByEngine,
    PayloadTooLarge,
    from_engine_error,
)


def test_error_body_has_openai_shape() -> None:
    body = ModelNotFound("model 'x' is not on this node", param="model").to_dict()
    assert body == {
        "error": {
            "message": "model 'x' is not on this node",
            "type": "invalid_request_error",
            "param": "model",
            "code": "model_not_found",
        }
    }


@pytest.mark.parametrize(
    ("cls", "status"),
    [(BadRequest, 400), (ModelNotFound, 404), (PayloadTooLarge, 413), (LlmlbError, 500)],
)
def test_statuses(cls: type[LlmlbError], status: int) -> None:
    assert cls("x").status == status


def test_context_overflow_from_llama_cpp_keeps_its_message_and_names_messages() -> None:
    error = from_engine_error(
        {
            "code": 400,
            "message": "request (5007 tokens) exceeds the available context size (512 tokens)",
            "type": "exceed_context_size_error",
        }
    )
    assert isinstance(error, ContextLengthExceeded)
    assert error.status == 400
    assert error.code == "context_length_exceeded"
    assert "512 tokens" in error.message
    assert error.param == "messages"


def test_unsupported_feature_maps_to_501() -> None:
    error = from_engine_error({"code": 501, "message": "no", "type": "not_supported_error"})
    assert isinstance(error, NotImplementedByEngine)
    assert error.status == 501


def test_unknown_engine_error_types_keep_their_status_class() -> None:
    assert from_engine_error({"code": 422, "message": "m", "type": "weird"}).status == 400
    assert from_engine_error({"code": 500, "message": "m", "type": "weird"}).status == 500
