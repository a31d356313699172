"""What a request needs of its model, checked at the router before any node is called.

A model the catalog lists is sent only the work its capabilities name (a chat model gets no
``/v1/embeddings``). Images need ``vision``: a catalog entry with a projector (mmproj), a
model a node reports it holds with one, or a model only endpoints serve (their servers
decide), so an image never reaches a node whose model would refuse it. A model the catalog
does not list (added to a node's store by hand) is left to its node for everything but
images. Pure: no I/O.
"""

from __future__ import annotations

from typing import Any

from llmlb.common.errors import BadRequest

# The endpoint's work, as a capability; the translating dialects send chat.
_ENDPOINT_NEEDS = {"chat": "chat", "messages": "chat", "responses": "chat",
                   "completion": "completion", "embeddings": "embedding",
                   "ollama_chat": "chat", "ollama_generate": "chat", "ollama_raw": "completion",
                   "ollama_embed": "embedding"}  # fmt: skip


def needed(endpoint: str, body: dict[str, Any]) -> set[str]:
    needs = {_ENDPOINT_NEEDS[endpoint]} if endpoint in _ENDPOINT_NEEDS else set()
    if needs == {"chat"} and _has_image(body.get("messages")):
        needs.add("vision")
    return needs


def check(model: str, endpoint: str, body: dict[str, Any], has: frozenset[str] | None,
          needs: set[str] | None = None) -> None:  # fmt: skip
    """Refuse (400, ``model_lacks_capability``) what ``model`` cannot do; ``has`` is what
    the catalog says it can, None when the catalog does not list it; ``needs``: what the
    request needs, when the caller has it already."""
    needs = needed(endpoint, body) if needs is None else needs
    if "vision" in needs and (has is None or "vision" not in has):
        raise BadRequest(
            f"model {model!r} does not take images (it has no 'vision' capability): send "
            "text only, or name a vision model", param="messages", code="model_lacks_capability",
        )  # fmt: skip
    missing = sorted(needs - has) if has is not None else []
    if missing:
        raise BadRequest(
            f"model {model!r} cannot serve this request: it lacks the {missing[0]!r} "
            f"capability (it has {', '.join(sorted(has or ()))})",
            param="model", code="model_lacks_capability",
        )  # fmt: skip


def _has_image(messages: Any) -> bool:
    if not isinstance(messages, list):
        return False
    return any(
        isinstance(part, dict) and part.get("type") == "image_url"
        for message in messages if isinstance(message, dict)
        and isinstance(message.get("content"), list)
        for part in message["content"]
    )  # fmt: skip
