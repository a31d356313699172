"""Shapes of OpenAI chat requests that both parts check: message parts, tool calls, tools.

Open to extra fields (engines and providers understand more than these) but strict about the
types of those they name, as OpenAI's API is: "5" is not a number, "yes" not a boolean.
"""

from __future__ import annotations

from typing import Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, ValidationError

from llmlb.common.errors import BadRequest

MAX_TOOLS = 128
# Turns in one conversation: far past any model's context, short of a body built to cost.
MAX_MESSAGES = 10_000
M = TypeVar("M", bound=BaseModel)


class OpenModel(BaseModel):
    model_config = ConfigDict(extra="allow", strict=True)


class TextPart(OpenModel):
    type: Literal["text"]
    text: str


class ImageURL(OpenModel):
    url: str


class ImagePart(OpenModel):
    type: Literal["image_url"]
    image_url: ImageURL


class FunctionCall(OpenModel):
    name: str
    arguments: str


class ToolCall(OpenModel):
    id: str | None = None
    type: Literal["function"] = "function"
    function: FunctionCall


class FunctionDefinition(OpenModel):
    name: str
    description: str | None = None
    parameters: dict[str, Any] | None = None


class Tool(OpenModel):
    type: Literal["function"]
    function: FunctionDefinition


class StreamOptions(OpenModel):
    include_usage: bool = False


# Integer fields: a whole-number float (``320.0``, as some languages write every number) is
# the integer it spells, as OpenAI takes it.
INTEGER_FIELDS = ("max_tokens", "max_completion_tokens", "max_output_tokens", "n_predict", "n",
                  "top_k", "seed", "top_logprobs", "n_probs", "logprobs", "best_of",
                  "dimensions")  # fmt: skip


def whole_numbers(body: dict[str, Any]) -> dict[str, Any]:
    """``body`` with whole-number floats in integer fields as integers."""
    fixed = {
        name: int(value) for name in INTEGER_FIELDS
        if isinstance(value := body.get(name), float) and value.is_integer()
    }  # fmt: skip
    return {**body, **fixed} if fixed else body


def parse_as(model: type[M], body: dict[str, Any]) -> M:
    """``body`` as ``model``; BadRequest naming the first field that does not fit."""
    try:
        return model.model_validate(body)
    except ValidationError as exc:
        first = exc.errors()[0]
        # A union reports one error per branch, its type in the location: keep field names.
        where = ".".join(str(p) for p in first["loc"] if _is_field(p))
        raise BadRequest(f"'{where}': {first['msg']}", param=where or None) from None


_TYPE_TAGS = {"str", "int", "float", "bool", "list", "dict", "none"}


def _is_field(part: str | int) -> bool:
    return isinstance(part, int) or (
        part.isidentifier() and part not in _TYPE_TAGS and not part.startswith("constrained")
    )
