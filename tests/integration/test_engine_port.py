"""llama.cpp's own HTTP server, which xllamacpp starts beside every engine, is closed to
anyone without the engine's random key: the node's key cannot be walked around."""

from __future__ import annotations

import os
from pathlib import Path

import httpx

from llmlb.node.engine import EngineSpec, LlamaEngine
from llmlb.node.templates import BUILTIN


def test_the_embedded_llama_server_refuses_requests_without_the_key(
    small_model_path: Path,
) -> None:
    spec = EngineSpec(
        name="gemma-3-270m", path=small_model_path, purpose="generate", memory_bytes=0,
        template=BUILTIN["qa"], ctx_size=256, parallel=1, threads=os.cpu_count() or 1,
    )  # fmt: skip
    engine = LlamaEngine.load(spec)
    try:
        url = engine.internal_url
        assert url.startswith("http://127.0.0.1:")
        body = {"prompt": "Hello", "max_tokens": 1}
        for path in ("/v1/completions", "/completion", "/v1/chat/completions", "/slots"):
            answer = httpx.post(url + path, json=body, timeout=30)
            assert answer.status_code == 401, (path, answer.text)
    finally:
        engine.close()
