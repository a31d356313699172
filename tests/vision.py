"""A tiny vision model for the tests: a text model (``model.gguf``, llama architecture, 31 KB)
and its multimodal projector (``mmproj.gguf``, llama.cpp's ``clip`` architecture, 29 KB).

The weights are small random values and zeros, so the answers mean nothing. What the pair
proves is the path of an image: an ``image_url`` part is accepted, decoded, encoded by the
projector and fed to the text model, which costs exactly ``IMAGE_TOKENS`` prompt tokens.

- Projector: LLaVA 1.5's ``mlp`` (the simplest llama.cpp reads): a patch embedding, position
  embeddings, ``v.pre_ln`` and one block (LLaVA takes the second-to-last layer, so with one
  the block is loaded and never run), then ``mm.0`` -> GELU -> ``mm.2``, whose width is the
  text model's embedding length (llama.cpp checks it). An image is padded to a square and
  resized to ``IMAGE_SIZE``: ``(IMAGE_SIZE / PATCH_SIZE) ** 2`` embeddings.
- Text model: one layer; a vocabulary of three specials, the 256 byte tokens and "▁", so byte
  fallback spells any text. No space prefix: the text around an image is tokenized piece by
  piece, and a prefix on each piece would blur the count.
- Chat template: llama.cpp hands the template a message with images as one string, each image
  a marker, and text must follow the last image (a prompt that ends in one aborts llama.cpp:
  its GGML_ASSERT on an empty batch, llama.cpp #15812), hence the generation prompt ``A:``.
  Its tags are trimmed, so newlines are written as expressions.
"""

from __future__ import annotations

import struct
import zlib
from pathlib import Path
from typing import Any

IMAGE_SIZE = 32
PATCH_SIZE = 8
IMAGE_TOKENS = (IMAGE_SIZE // PATCH_SIZE) ** 2
WIDTH = 16  # the text model's embedding length = the projector's output
VISION_WIDTH, VISION_FF, PROJECTOR_HIDDEN = 16, 32, 32

CHAT_TEMPLATE = (
    "{% for m in messages %}"
    "{% if m.content is string %}{{ m.content }}"
    "{% else %}{% for c in m.content %}"
    "{% if c.type == 'text' %}{{ c.text }}{% else %}<__media__>{% endif %}"
    "{% endfor %}{% endif %}"
    "{{ '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ 'A:' }}{% endif %}"
)


def write_tiny_vision(folder: Path) -> tuple[Path, Path]:
    """``model.gguf`` and ``mmproj.gguf`` in ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    return _text_model(folder / "model.gguf"), _projector(folder / "mmproj.gguf")


def _finish(writer: Any) -> None:
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def _text_model(path: Path) -> Path:
    import numpy as np
    from gguf import GGUFWriter

    tokens = ["<unk>", "<s>", "</s>", *(f"<0x{b:02X}>" for b in range(256)), "▁"]
    writer = GGUFWriter(str(path), "llama")
    writer.add_name("tiny vision")
    writer.add_context_length(512)
    writer.add_embedding_length(WIDTH)
    writer.add_block_count(1)
    writer.add_feed_forward_length(WIDTH)
    writer.add_head_count(1)
    writer.add_head_count_kv(1)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_rope_dimension_count(WIDTH)
    writer.add_tokenizer_model("llama")
    writer.add_token_list(tokens)
    writer.add_token_scores([0.0] * len(tokens))
    writer.add_token_types([2, 3, 3, *[6] * 256, 1])
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(2)
    writer.add_unk_token_id(0)
    writer.add_add_bos_token(False)
    writer.add_add_space_prefix(False)
    writer.add_chat_template(CHAT_TEMPLATE)
    ones = np.ones(WIDTH, dtype=np.float32)
    square = np.zeros((WIDTH, WIDTH), dtype=np.float32)
    embeddings = np.random.default_rng(0).standard_normal((len(tokens), WIDTH))
    writer.add_tensor("token_embd.weight", embeddings.astype(np.float32))
    writer.add_tensor("output_norm.weight", ones)  # (no output.weight: tied to token_embd)
    writer.add_tensor("blk.0.attn_norm.weight", ones)
    writer.add_tensor("blk.0.ffn_norm.weight", ones)
    for name in ("attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down"):
        writer.add_tensor(f"blk.0.{name}.weight", square)
    _finish(writer)
    return path


def _projector(path: Path) -> Path:
    import numpy as np
    from gguf import GGUFWriter

    rng = np.random.default_rng(1)

    def weights(*shape: int) -> Any:  # (numpy's shapes are ggml's reversed: out, in)
        return (0.02 * rng.standard_normal(shape)).astype(np.float32)

    def zeros(size: int) -> Any:
        return np.zeros(size, dtype=np.float32)

    def ones(size: int) -> Any:
        return np.ones(size, dtype=np.float32)

    v = VISION_WIDTH
    writer = GGUFWriter(str(path), "clip")
    writer.add_name("tiny vision projector")
    writer.add_clip_has_vision_encoder(True)
    writer.add_clip_projector_type("mlp")
    writer.add_vision_image_size(IMAGE_SIZE)
    writer.add_vision_patch_size(PATCH_SIZE)
    writer.add_vision_embedding_length(v)
    writer.add_vision_feed_forward_length(VISION_FF)
    writer.add_vision_block_count(1)
    writer.add_vision_head_count(1)
    writer.add_vision_attention_layernorm_eps(1e-5)
    writer.add_vision_projection_dim(WIDTH)
    writer.add_vision_image_mean([0.5, 0.5, 0.5])  # (both required by llama.cpp)
    writer.add_vision_image_std([0.5, 0.5, 0.5])
    writer.add_vision_use_gelu(True)
    writer.add_tensor("v.patch_embd.weight", weights(v, 3, PATCH_SIZE, PATCH_SIZE))
    writer.add_tensor("v.patch_embd.bias", zeros(v))
    writer.add_tensor("v.position_embd.weight", weights(IMAGE_TOKENS, v))
    writer.add_tensor("v.pre_ln.weight", ones(v))
    writer.add_tensor("v.pre_ln.bias", zeros(v))
    for name in ("attn_q", "attn_k", "attn_v", "attn_out"):
        writer.add_tensor(f"v.blk.0.{name}.weight", weights(v, v))
        writer.add_tensor(f"v.blk.0.{name}.bias", zeros(v))
    for name in ("ln1", "ln2"):
        writer.add_tensor(f"v.blk.0.{name}.weight", ones(v))
        writer.add_tensor(f"v.blk.0.{name}.bias", zeros(v))
    writer.add_tensor("v.blk.0.ffn_up.weight", weights(VISION_FF, v))
    writer.add_tensor("v.blk.0.ffn_up.bias", zeros(VISION_FF))
    writer.add_tensor("v.blk.0.ffn_down.weight", weights(v, VISION_FF))
    writer.add_tensor("v.blk.0.ffn_down.bias", zeros(v))
    writer.add_tensor("mm.0.weight", weights(PROJECTOR_HIDDEN, v))
    writer.add_tensor("mm.0.bias", zeros(PROJECTOR_HIDDEN))
    writer.add_tensor("mm.2.weight", weights(WIDTH, PROJECTOR_HIDDEN))
    writer.add_tensor("mm.2.bias", zeros(WIDTH))
    _finish(writer)
    return path


def tiny_png(width: int = 8, height: int = 8) -> bytes:
    """An RGB PNG (a gradient), written with zlib and struct."""
    rows = b"".join(
        b"\x00" + bytes(c for x in range(width) for c in (x * 255 // width, y * 255 // height, 128))
        for y in range(height)
    )

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(rows))
        + (chunk(b"IEND", b""))
    )
