"""What the router reads from endpoints (model lists, metrics) and how it names their models,
from the bytes those servers send."""

from __future__ import annotations

import orjson
import pytest

from llmlb.router.fleet.endpoints import (
    fleet_name,
    listed_models,
    listing_path,
    load_from_metrics,
    served,
)
from tests.fakeendpoints import _ollama_tags, _vllm_metrics, _vllm_models


@pytest.mark.parametrize(
    ("upstream", "name"),
    [
        ("Qwen/Qwen2.5-0.5B-Instruct", "Qwen2.5-0.5B-Instruct"),  # vLLM, SGLang: the repo id
        ("llama3.2:1b", "llama3.2-1b"),  # Ollama: a tag, as llmlb spells tags
        ("gpt-oss:latest", "gpt-oss"),
        ("qwen2.5-0.5b-instruct-q4_k_m.gguf", "qwen2.5-0.5b-instruct-q4_k_m"),  # llama-server
        ("/models/org/My Model (v2).gguf", "My-Model--v2-"),
        ("lmstudio-community/..hidden", "hidden"),
        ("", None),
        ("../..", None),
    ],
)
def test_an_endpoints_model_id_gets_a_valid_fleet_name(upstream: str, name: str | None) -> None:
    assert fleet_name(upstream) == name


def test_model_lists_in_openais_and_ollamas_shapes() -> None:
    assert listing_path("ollama") == "/api/tags" and listing_path("vllm") == "/v1/models"
    assert listed_models("vllm", orjson.dumps(_vllm_models())) == ["Qwen/Qwen2.5-0.5B-Instruct"]
    assert listed_models("ollama", orjson.dumps(_ollama_tags())) == ["llama3.2:1b"]
    for body in (b"<html>", b'{"data": 3}', b'{"models": []}', b"[]"):
        with pytest.raises(ValueError, match="not a model list"):
            listed_models("vllm", body)
    # Ids that are not strings, or absurdly long, are left out, not trusted.
    odd = {"data": [{"id": 7}, {"id": "x" * 201}, {"id": "ok"}]}
    assert listed_models("openai", orjson.dumps(odd)) == ["ok"]


def test_vllms_metrics_give_its_running_and_waiting_requests() -> None:
    assert load_from_metrics("vllm", _vllm_metrics(3, 2)) == (3, 2)
    assert load_from_metrics("vllm", "# nothing here\n") is None
    assert load_from_metrics("vllm", "not { prometheus") is None
    assert load_from_metrics("ollama", _vllm_metrics(3, 2)) is None  # exports none
    llama_server = (
        "# TYPE llamacpp:requests_processing gauge\nllamacpp:requests_processing 1\n"
        "# TYPE llamacpp:requests_deferred gauge\nllamacpp:requests_deferred 4\n"
    )
    assert load_from_metrics("llama-server", llama_server) == (1, 4)


def test_only_the_models_the_operator_named_are_served() -> None:
    ids = ["org/a", "org/b", "other/a"]
    assert served("vllm", ids, []) == {"a": "org/a", "b": "org/b"}  # the first "a" wins
    assert served("vllm", ids, ["org/b"]) == {"b": "org/b"}
