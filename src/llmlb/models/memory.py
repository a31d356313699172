"""How much memory a model needs once loaded: one computation for planning (the router
assigning models to nodes by GPU memory) and for serving (the node's engine pool).

    needed = required_memory_bytes                        when the catalog or metadata says
           = weights x 1.1 + ctx x kv_bytes_per_token     otherwise

The 10% covers llama.cpp's compute buffers. The KV cache is f16 keys and values for the whole
context (llama.cpp's slots share one cache of ``ctx`` tokens, however many there are):
``layers x kv_heads x (key_len + value_len) x 2`` bytes a token. The node reads those figures
from the GGUF header; the router, planning for a file it has not seen, takes them from the
catalog entry (``kv_bytes_per_token``, copied from the same header), else assumes another 10%
of the weights. Sliding-window layers (gemma 3, gpt-oss) are counted at the full context, so
the plan errs on the safe side for them.
"""

from __future__ import annotations

from llmlb.models.gguf import GGUFInfo

COMPUTE_OVERHEAD = 0.10
UNKNOWN_KV_FRACTION = 0.10
F16_BYTES = 2
DEFAULT_PLAN_CTX = 4096  # the node's default --ctx-size, for a node that has not said its own


def kv_bytes_per_token(layers: int, kv_heads: int, key_len: int, value_len: int) -> int:
    return layers * kv_heads * (key_len + value_len) * F16_BYTES


def kv_bytes_per_token_of(info: GGUFInfo) -> int:
    """The KV cache a token of context takes, from a GGUF header."""
    layers = int(info.arch_value("block_count") or 0)
    kv_heads = int(info.arch_value("attention.head_count_kv") or 0)
    key_len = int(info.arch_value("attention.key_length") or 0)
    value_len = int(info.arch_value("attention.value_length") or 0)
    if not (key_len and value_len):
        heads = int(info.arch_value("attention.head_count") or 1)
        key_len = value_len = int(info.embedding_length or 0) // max(heads, 1)
    return kv_bytes_per_token(layers, kv_heads, key_len, value_len)


def memory_needed(
    weights_bytes: int, *, kv_cache: int | None = None, required: int | None = None
) -> int:
    if required:
        return required
    kv = kv_cache if kv_cache is not None else int(weights_bytes * UNKNOWN_KV_FRACTION)
    return int(weights_bytes * (1 + COMPUTE_OVERHEAD)) + kv


def gib(size: int, digits: int = 1) -> str:
    """Bytes as GiB for people (log lines and messages)."""
    return f"{size / 2**30:.{digits}f} GiB"
