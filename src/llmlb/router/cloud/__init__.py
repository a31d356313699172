"""Requests that leave the fleet or change dialect.

- ``clouds``: the cloud providers (``openai:``, ``anthropic:``, ``google:``): their keys, a
  concurrency cap each, retries, their model lists.
- ``gateway``: requests that need translating: chat to a cloud provider, or the Responses and
  Messages dialects to a node (the translation itself is ``llmlb.translate``, pure).
"""

from typing import TYPE_CHECKING

from llmlb.common.exports import exported, lazy_exports

if TYPE_CHECKING:
    from llmlb.router.cloud.clouds import Clouds as Clouds, prefix_of as prefix_of
    from llmlb.router.cloud.gateway import (
        Caller as Caller,
        ChatReply as ChatReply,
        Gateway as Gateway,
        Relayed as Relayed,
        model_of as model_of,
    )

_OWNERS = {
    "clouds": ["Clouds", "prefix_of"],
    "gateway": ["Caller", "ChatReply", "Gateway", "Relayed", "model_of"],
}
__all__ = exported(_OWNERS)
__getattr__ = lazy_exports(__name__, _OWNERS)
