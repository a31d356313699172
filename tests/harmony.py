"""A tiny GGUF that answers in gpt-oss's harmony format, for checking the node's handling of it.

gpt-oss writes its reasoning and its tool calls in channels marked by special tokens:

    <|channel|>analysis<|message|>...<|end|><|start|>assistant<|channel|>commentary
    to=functions.NAME <|constrain|>json<|message|>{...}<|call|>

llama.cpp recognises the format by its chat template (one that mentions ``<|channel|>``) and
turns such output into OpenAI's ``reasoning_content`` and ``tool_calls``. A real gpt-oss is
60 GB; this model is 200 KB and says exactly the text above, whatever it is asked:

- one layer whose attention and feed-forward weights are zero, so each position's output is
  its own token's embedding: the model is a lookup table from the last token to the next;
- the answer's tokens have one-hot embeddings, each pointing at its successor; every other
  token (the whole prompt) shares one embedding that points at the answer's first token, and
  the answer's last token points at ``<|call|>``, which ends generation.

Tokens repeated in the answer (the second ``<|channel|>`` and ``<|message|>``) are spelt with
two plain tokens each, so that every token has one successor. The chat template is our own
short harmony template (not the model's): system, developer (with the tools), user and
tool turns, earlier tool calls, and the assistant's generation prompt.
"""

from __future__ import annotations

import json
from pathlib import Path

REASONING = "The user wants the weather in Paris."
ARGUMENTS = {"city": "Paris"}
TOOL = "get_weather"

HARMONY_TEMPLATE = (
    "{%- for message in messages -%}"
    "{%- if message.role == 'assistant' and message.tool_calls -%}"
    "{%- set call = message.tool_calls[0].function -%}"
    "<|start|>assistant to=functions.{{ call.name }}<|channel|>commentary json<|message|>"
    "{{ call.arguments }}<|call|>"
    "{%- elif message.role == 'tool' -%}"
    "<|start|>functions.tool to=assistant<|channel|>commentary<|message|>"
    "{{ message.content }}<|end|>"
    "{%- elif message.role == 'assistant' -%}"
    "<|start|>assistant<|channel|>final<|message|>{{ message.content }}<|end|>"
    "{%- else -%}"
    "<|start|>{{ 'developer' if message.role == 'system' else message.role }}<|message|>"
    "{{ message.content }}<|end|>"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if tools -%}"
    "<|start|>developer<|message|># Tools\n\nnamespace functions {\n"
    "{%- for tool in tools %}\ntype {{ tool.function.name }} = (_: any) => any;{%- endfor %}"
    "\n} // namespace functions<|end|>"
    "{%- endif -%}"
    "{%- if add_generation_prompt -%}<|start|>assistant{%- endif -%}"
)

# (text, token type): 1 normal, 3 control. "▁" is SentencePiece's space.
ANSWER = [
    ("<|channel|>", 3), ("analysis", 1), ("<|message|>", 3),
    ("▁".join(REASONING.split(" ")), 1),
    ("<|end|>", 3), ("<|start|>", 3), ("assistant", 1),
    ("<|chan", 1), ("nel|>", 1), ("commentary", 1), (f"▁to=functions.{TOOL}", 1), ("▁", 1),
    ("<|constrain|>", 3), ("json", 1), ("<|mess", 1), ("age|>", 1),
    (json.dumps(ARGUMENTS, separators=(",", ":")), 1),
]  # fmt: skip
STOP = "<|call|>"


def write_harmony_gguf(path: Path) -> Path:
    import numpy as np
    from gguf import GGUFWriter

    tokens: list[str] = ["<unk>", "<s>", "</s>"]
    types: list[int] = [2, 3, 3]
    tokens += [f"<0x{byte:02X}>" for byte in range(256)]  # byte fallback: any text encodes
    types += [6] * 256
    first_answer = len(tokens)
    tokens += [text for text, _ in ANSWER]
    types += [kind for _, kind in ANSWER]
    stop = len(tokens)
    tokens += [STOP, "<|return|>"]
    types += [3, 3]

    embed = 64  # width: the "elsewhere" direction plus one per answer token
    assert len(ANSWER) < embed
    vocab = len(tokens)
    embeddings = np.zeros((vocab, embed), dtype=np.float32)
    embeddings[:, 0] = 1.0  # every token not in the answer: "start the answer"
    for index in range(len(ANSWER)):
        embeddings[first_answer + index] = 0.0
        embeddings[first_answer + index, index + 1] = 1.0
    output = np.zeros((vocab, embed), dtype=np.float32)
    output[first_answer, 0] = 10.0
    for index in range(len(ANSWER)):
        successor = first_answer + index + 1 if index + 1 < len(ANSWER) else stop
        output[successor, index + 1] = 10.0

    writer = GGUFWriter(str(path), "llama")
    writer.add_name("tiny harmony")
    writer.add_context_length(512)
    writer.add_embedding_length(embed)
    writer.add_block_count(1)
    writer.add_feed_forward_length(embed)
    writer.add_head_count(1)
    writer.add_head_count_kv(1)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_rope_dimension_count(embed)
    writer.add_tokenizer_model("llama")
    writer.add_token_list(tokens)
    writer.add_token_scores([0.0] * vocab)
    writer.add_token_types(types)
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(stop)
    writer.add_unk_token_id(0)
    writer.add_add_bos_token(False)
    writer.add_chat_template(HARMONY_TEMPLATE)
    ones = np.ones(embed, dtype=np.float32)
    square = np.zeros((embed, embed), dtype=np.float32)
    writer.add_tensor("token_embd.weight", embeddings)
    writer.add_tensor("output_norm.weight", ones)
    writer.add_tensor("output.weight", output)
    writer.add_tensor("blk.0.attn_norm.weight", ones)
    for name in ("attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down"):
        writer.add_tensor(f"blk.0.{name}.weight", square)
    writer.add_tensor("blk.0.ffn_norm.weight", ones)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path
