"""What a request needs of its model (router.proxy.capabilities): pure."""

from __future__ import annotations

import pytest

from llmlb.common.errors import BadRequest
from llmlb.router.proxy.capabilities import check, needed

TEXT = {"messages": [{"role": "user", "content": "hello"}]}
IMAGE = {"messages": [{"role": "user", "content": [
    {"type": "text", "text": "what is this?"},
    {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}]}]}  # fmt: skip
CHAT_MODEL = frozenset({"chat", "completion"})


def test_each_endpoint_needs_its_work_and_an_image_needs_vision() -> None:
    assert needed("chat", TEXT) == {"chat"}
    assert needed("messages", IMAGE) == {"chat", "vision"}  # the dialects arrive as chat
    assert needed("embeddings", {"input": "x"}) == {"embedding"}
    assert needed("count_tokens", IMAGE) == set()


def test_an_image_to_a_model_without_vision_is_refused_naming_the_capability() -> None:
    for has in (CHAT_MODEL, None):  # listed without vision, or not listed at all
        with pytest.raises(BadRequest, match="'vision' capability") as refused:
            check("m", "chat", IMAGE, has)
        assert refused.value.status == 400 and refused.value.code == "model_lacks_capability"
    check("m", "chat", IMAGE, CHAT_MODEL | {"vision"})


def test_listed_models_get_only_their_work_and_unlisted_ones_are_left_to_the_node() -> None:
    with pytest.raises(BadRequest, match="lacks the 'embedding' capability"):
        check("m", "embeddings", {"input": "x"}, CHAT_MODEL)
    check("m", "embeddings", {"input": "x"}, None)  # the node says whether it embeds
    check("m", "chat", TEXT, CHAT_MODEL)
    with pytest.raises(BadRequest, match="lacks the 'chat' capability"):
        check("m", "responses", TEXT, frozenset({"embedding"}))


def test_malformed_messages_are_not_this_checks_business() -> None:
    for messages in (None, "text", [1, "x", {"content": "s"}, {"content": [1, None]}]):
        assert needed("chat", {"messages": messages}) == {"chat"}
