"""How much memory a model needs once loaded: one model for planning (the router assigning
models to nodes by GPU memory) and for serving (the node's engine pool).

    needed = required_memory_bytes                      when the catalog or metadata says
           = weights x 1.1 + KV cache                   otherwise

The 10% covers llama.cpp's compute buffers. The KV cache is f16 keys and values for the
context: ``ctx x layers x kv_heads x (key_len + value_len) x 2`` bytes, known once the GGUF
header is read (the node). Before that (the router, planning from the catalog) it is taken as
another 10% of the weights, which holds for small contexts on today's grouped-query models.
"""

from __future__ import annotations

COMPUTE_OVERHEAD = 0.10
UNKNOWN_KV_FRACTION = 0.10
F16_BYTES = 2


def kv_cache_bytes(ctx: int, layers: int, kv_heads: int, key_len: int, value_len: int) -> int:
    return ctx * layers * kv_heads * (key_len + value_len) * F16_BYTES


def memory_needed(
    weights_bytes: int, *, kv_cache: int | None = None, required: int | None = None
) -> int:
    if required:
        return required
    kv = kv_cache if kv_cache is not None else int(weights_bytes * UNKNOWN_KV_FRACTION)
    return int(weights_bytes * (1 + COMPUTE_OVERHEAD)) + kv
