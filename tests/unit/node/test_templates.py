"""Which chat template a model gets, and the stop sequences added for it."""

import pytest

from llmlb.node.templates import BUILTIN, resolve_template, with_stops


def test_metadata_names_a_builtin_template() -> None:
    assert resolve_template("m", {"chat_template": "chatml"}, {}) is BUILTIN["chatml"]


def test_metadata_may_carry_a_jinja_template() -> None:
    template = resolve_template("m", {"chat_template": "{{ messages[0]['content'] }}"}, {})
    assert template.name == "custom"
    assert template.jinja == "{{ messages[0]['content'] }}"


def test_unknown_template_name_is_an_error_naming_the_model() -> None:
    with pytest.raises(ValueError, match=r"model 'm'.*'nope'"):
        resolve_template("m", {"chat_template": "nope"}, {})


def test_gguf_template_is_used_when_metadata_is_silent() -> None:
    template = resolve_template("m", {}, {"tokenizer.chat_template": "{% for m in messages %}"})
    assert template.name == "gguf"
    assert template.jinja is None  # llama.cpp reads it from the file itself


def test_metadata_wins_over_gguf_template() -> None:
    meta = {"chat_template": "qa"}
    assert resolve_template("m", meta, {"tokenizer.chat_template": "x"}) is BUILTIN["qa"]


@pytest.mark.parametrize(
    ("arch", "gguf_name", "expected"),
    [
        ("gemma3", "Gemma 3 1b It", "gemma"),
        ("llama", "Llama 3.2 1B Instruct", "llama3"),
        ("qwen2", "Qwen2.5 0.5B Instruct", "chatml"),
        ("unknownarch", "Something Chat", "chatml"),
    ],
)
def test_instruction_tuned_models_get_their_architecture_format(
    arch: str, gguf_name: str, expected: str
) -> None:
    meta = {"general.architecture": arch, "general.name": gguf_name}
    assert resolve_template("m", {}, meta).name == expected


def test_base_models_get_the_qa_transcript_with_its_stop() -> None:
    meta = {"general.architecture": "gemma3", "general.name": "Gemma 3 270m"}
    template = resolve_template("gemma-3-270m", {}, meta)
    assert template.name == "qa"
    assert "\nQ:" in template.stop


def test_stops_merge_with_the_clients_own() -> None:
    qa = BUILTIN["qa"]
    assert with_stops({"stop": "END"}, qa)["stop"] == ["END", "\nQ:"]
    assert with_stops({}, qa)["stop"] == ["\nQ:"]
    assert with_stops({"stop": ["\nQ:"]}, qa)["stop"] == ["\nQ:"]
