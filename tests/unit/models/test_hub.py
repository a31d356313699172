"""Hugging Face references as people type them, and the file a registration picks."""

from __future__ import annotations

import pytest

from llmlb.common.errors import BadRequest
from llmlb.models.catalog import Catalog, CatalogEntry, CatalogError
from llmlb.models.hub import HubFile, HubRef, choose, default_name, parse_reference, quant_of

SHA = "a" * 64


@pytest.mark.parametrize(
    ("text", "ref"),
    [
        ("hf.co/unsloth/Qwen3-4B-GGUF", HubRef("unsloth/Qwen3-4B-GGUF")),
        ("hf.co/unsloth/Qwen3-4B-GGUF:Q8_0", HubRef("unsloth/Qwen3-4B-GGUF", quant="Q8_0")),
        ("huggingface.co/bartowski/x-GGUF:iq4_xs", HubRef("bartowski/x-GGUF", quant="iq4_xs")),
        ("unsloth/Qwen3-4B-GGUF:Q4_K_M", HubRef("unsloth/Qwen3-4B-GGUF", quant="Q4_K_M")),
        ("unsloth/Qwen3-4B-GGUF/Qwen3-4B-Q4_K_M.gguf",
         HubRef("unsloth/Qwen3-4B-GGUF", file="Qwen3-4B-Q4_K_M.gguf")),
        ("https://huggingface.co/org/repo/resolve/main/sub/model-Q4_K_M.gguf",
         HubRef("org/repo", file="sub/model-Q4_K_M.gguf")),
        ("https://huggingface.co/org/repo/blob/v1.0/model.gguf",
         HubRef("org/repo", file="model.gguf", revision="v1.0")),
    ],
)  # fmt: skip
def test_references_as_people_type_them(text: str, ref: HubRef) -> None:
    assert parse_reference(text) == ref


@pytest.mark.parametrize(
    "text",
    ["hf.co/only-one-part", "https://evil.example/org/repo/resolve/main/x.gguf",
     "org/repo/../../etc/passwd.gguf", "org/repo/readme.md", "org/re po", "", "a/b/" + "x" * 600,
     "https://huggingface.co/org/repo/resolve/ma%0ain/x.gguf", "org/..:Q4"],
)  # fmt: skip
def test_what_is_not_a_model_on_the_hub_is_refused(text: str) -> None:
    with pytest.raises(BadRequest):
        parse_reference(text)


def files(*names: str) -> list[HubFile]:
    return [HubFile(name, 100 + index, SHA) for index, name in enumerate(names)]


REPO = files("README.md", "Qwen3-4B-Q8_0.gguf", "Qwen3-4B-Q4_K_M.gguf", "Qwen3-4B-IQ4_XS.gguf",
             "mmproj-Qwen3-4B-F16.gguf", "Qwen3-4B-BF16-00001-of-00002.gguf",
             "Qwen3-4B-BF16-00002-of-00002.gguf")  # fmt: skip


def test_the_default_is_q4_k_m_and_a_quantisation_asked_for_is_taken() -> None:
    chosen, how = choose(HubRef("o/r"), REPO)
    assert [f.path for f in chosen] == ["Qwen3-4B-Q4_K_M.gguf"] and how == "Q4_K_M, the default"
    chosen, how = choose(HubRef("o/r", quant="iq4_xs"), REPO)
    assert [f.path for f in chosen] == ["Qwen3-4B-IQ4_XS.gguf"] and how == "IQ4_XS, as asked"
    split, _ = choose(HubRef("o/r", quant="BF16"), REPO)
    assert [f.path for f in split] == ["Qwen3-4B-BF16-00001-of-00002.gguf",
                                       "Qwen3-4B-BF16-00002-of-00002.gguf"]  # fmt: skip
    only_odd = files("model-q3_k_l.gguf", "model-q2_k.gguf")
    chosen, how = choose(HubRef("o/r"), only_odd)
    assert chosen[0].path == "model-q3_k_l.gguf" and "the smallest" in how


def test_what_a_repository_lacks_is_said_with_what_it_has() -> None:
    with pytest.raises(BadRequest, match=r"no Q3_K_S file \(it has: BF16, IQ4_XS, Q4_K_M, Q8_0\)"):
        choose(HubRef("o/r", quant="Q3_K_S"), REPO)
    with pytest.raises(BadRequest, match="has no GGUF file"):
        choose(HubRef("o/r"), files("README.md", "mmproj-F16.gguf"))
    with pytest.raises(BadRequest, match="part 2 of 3 is missing"):
        choose(HubRef("o/r"), files("m-Q4_K_M-00001-of-00003.gguf", "m-Q4_K_M-00003-of-00003.gguf"))
    with pytest.raises(BadRequest, match="no such GGUF file"):
        choose(HubRef("o/r", file="other.gguf"), REPO)


def test_names_come_from_the_file() -> None:
    assert default_name(files("sub/Qwen3-4B-Q4_K_M.gguf")) == "qwen3-4b-q4_k_m"
    assert default_name(files("Big-BF16-00001-of-00002.gguf")) == "big-bf16"
    assert quant_of("gpt-oss-20b-MXFP4.gguf") == "MXFP4"
    assert quant_of("model.gguf") is None


def entry(name: str, repo: str, file: str, aliases: list[str] | None = None) -> CatalogEntry:
    return CatalogEntry.model_validate({
        "name": name, "aliases": aliases or [],
        "origin": {"hub": {"repo": repo, "file": file}}, "size_bytes": 10, "sha256": SHA,
    })  # fmt: skip


def test_registered_models_answer_to_their_hub_reference_and_never_clash() -> None:
    catalog = Catalog({"shipped": entry("shipped", "a/b", "shipped-Q8_0.gguf", ["old"])})
    catalog.set_registered([entry("qwen3-4b-q4_k_m", "unsloth/Qwen3-4B-GGUF",
                                  "Qwen3-4B-Q4_K_M.gguf")], [])  # fmt: skip
    assert catalog.resolve("hf.co/unsloth/qwen3-4b-gguf:Q4_K_M") == "qwen3-4b-q4_k_m"
    assert catalog.resolve("hf.co/unsloth/Qwen3-4B-GGUF") == "qwen3-4b-q4_k_m"
    assert catalog.resolve("hf.co/a/b:q8_0") == "shipped"
    assert catalog.is_registered("qwen3-4b-q4_k_m") and not catalog.is_registered("shipped")
    for clash in (entry("shipped", "c/d", "x.gguf"), entry("new", "c/d", "x.gguf", ["old"])):
        with pytest.raises(CatalogError):
            catalog.set_registered([clash], [])
    assert "qwen3-4b-q4_k_m" in catalog  # a refused set leaves the catalog as it was
