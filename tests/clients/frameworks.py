"""The frameworks people build on, unmodified, against a real router: run in their own
virtualenv (``.venv-clients``, from ``tests/clients/requirements.txt``), one framework per run.

    .venv-clients/bin/python tests/clients/frameworks.py FRAMEWORK ROUTER_URL MODEL

Each check uses the framework as its documentation shows and prints one JSON line per check,
``{"check": ..., "ok": bool, "got": ...}``; ``tests/integration/test_client_frameworks.py``
reads them. A check that raises is reported with the exception, not hidden.
"""

from __future__ import annotations

import json
import sys
import traceback
from collections.abc import Callable
from typing import Any

from pydantic import BaseModel

FRANCE = "What is the capital of France?"
WEATHER = "What is the weather in Paris?"


class Weather(BaseModel):
    """The weather in a city."""

    city: str
    forecast: str


# A forced call of ``Weather`` lets the small base model write a forecast of any length (a date
# and times, once): 60 tokens cut one off mid-argument, and with nothing to parse the framework
# gave None. Structured output gets the bound the instructor checks use.
STRUCTURED_MAX_TOKENS = 120


def get_weather(city: str) -> str:
    """The weather in a city."""
    return f"sunny in {city}"


Check = Callable[[str, str], Any]


def openai_agents(url: str, model: str) -> dict[str, Check]:
    from agents import (
        Agent,
        ModelSettings,
        OpenAIChatCompletionsModel,
        OpenAIResponsesModel,
        Runner,
        function_tool,
        set_tracing_disabled,
    )
    from openai import AsyncOpenAI

    set_tracing_disabled(True)
    client = AsyncOpenAI(base_url=url + "/v1", api_key="unused", max_retries=0)
    tool = function_tool(get_weather)

    def run(kind: Any) -> Any:
        agent = Agent(
            name="weather", instructions="Answer questions about the weather.",
            model=kind(model=model, openai_client=client), tools=[tool],
            model_settings=ModelSettings(tool_choice="required", max_tokens=80),
            tool_use_behavior="stop_on_first_tool",
        )  # fmt: skip
        return Runner.run_sync(agent, WEATHER).final_output

    def chat(url: str, model: str) -> Any:
        agent = Agent(name="plain", instructions="Answer briefly.",
                      model=OpenAIChatCompletionsModel(model=model, openai_client=client),
                      model_settings=ModelSettings(max_tokens=12))  # fmt: skip
        return Runner.run_sync(agent, FRANCE).final_output

    return {
        "chat": chat,
        "forced tool call (chat completions)": lambda u, m: run(OpenAIChatCompletionsModel),
        "forced tool call (responses)": lambda u, m: run(OpenAIResponsesModel),
    }


def langchain(url: str, model: str) -> dict[str, Check]:
    from langchain_core.tools import tool
    from langchain_openai import ChatOpenAI, OpenAIEmbeddings

    llm = ChatOpenAI(base_url=url + "/v1", api_key="unused", model=model, max_tokens=60,
                     temperature=0, max_retries=0)  # fmt: skip
    weather = tool(get_weather)
    return {
        "chat": lambda u, m: llm.invoke(FRANCE).content,
        "stream": lambda u, m: "".join(str(c.content) for c in llm.stream(FRANCE)),
        "forced tool call": lambda u, m: llm.bind_tools([weather], tool_choice="required")
        .invoke(WEATHER).tool_calls,
        "structured output": lambda u, m: llm.model_copy(
            update={"max_tokens": STRUCTURED_MAX_TOKENS},
        ).with_structured_output(Weather, method="function_calling").invoke(WEATHER),
        "embeddings": lambda u, m: len(OpenAIEmbeddings(
            base_url=u + "/v1", api_key="unused", model=m, check_embedding_ctx_length=False,
        ).embed_query("hello")),
    }  # fmt: skip


def llama_index(url: str, model: str) -> dict[str, Check]:
    from llama_index.core.llms import ChatMessage
    from llama_index.core.prompts import PromptTemplate
    from llama_index.embeddings.openai_like import OpenAILikeEmbedding
    from llama_index.llms.openai_like import OpenAILike

    llm = OpenAILike(model=model, api_base=url + "/v1", api_key="unused", is_chat_model=True,
                     is_function_calling_model=True, max_tokens=60, temperature=0,
                     max_retries=0, context_window=4096)  # fmt: skip
    return {
        "chat": lambda u, m: llm.chat([ChatMessage(role="user", content=FRANCE)]).message.content,
        "stream": lambda u, m: "".join(
            r.delta or "" for r in llm.stream_chat([ChatMessage(role="user", content=FRANCE)])),
        "structured output": lambda u, m: llm.model_copy(
            update={"max_tokens": STRUCTURED_MAX_TOKENS},
        ).structured_predict(Weather, PromptTemplate("What is the weather in {city}?"),
                             city="Paris"),
        "embeddings": lambda u, m: len(OpenAILikeEmbedding(
            model_name=m, api_base=u + "/v1", api_key="unused").get_text_embedding("hello")),
    }  # fmt: skip


def litellm_client(url: str, model: str) -> dict[str, Check]:
    import litellm

    # temperature 0, as with the other frameworks: sampled, the small model now and then
    # answered nothing but a newline, and the check failed on chance, not on llmlb.
    common: dict[str, Any] = {"model": f"openai/{model}", "api_base": url + "/v1",
                              "api_key": "unused", "max_tokens": 60, "temperature": 0}  # fmt: skip
    tools = [{"type": "function", "function": {
        "name": "get_weather", "description": "The weather in a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                       "required": ["city"]}}}]  # fmt: skip
    france = [{"role": "user", "content": FRANCE}]
    weather = [{"role": "user", "content": WEATHER}]
    return {
        "chat": lambda u, m: litellm.completion(messages=france, **common)
        .choices[0].message.content,
        "stream": lambda u, m: "".join(
            c.choices[0].delta.content or ""
            for c in litellm.completion(messages=france, stream=True, **common)),
        "forced tool call": lambda u, m: litellm.completion(
            messages=weather, tools=tools, tool_choice="required", **common,
        ).choices[0].message.tool_calls[0].function.name,
        "embeddings": lambda u, m: len(litellm.embedding(
            model=f"openai/{m}", api_base=u + "/v1", api_key="unused", input=["hello"],
        ).data[0]["embedding"]),
    }  # fmt: skip


def instructor_client(url: str, model: str) -> dict[str, Check]:
    import instructor
    from openai import OpenAI

    openai = OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0)
    weather = [{"role": "user", "content": WEATHER}]

    def tools(u: str, m: str) -> Any:
        client = instructor.from_openai(openai, mode=instructor.Mode.TOOLS)
        return client.chat.completions.create(model=m, response_model=Weather,
                                              messages=weather, max_tokens=120, temperature=0,
                                              max_retries=0)  # fmt: skip

    def responses_tools(u: str, m: str) -> Any:
        client = instructor.from_openai(openai, mode=instructor.Mode.RESPONSES_TOOLS)
        return client.responses.create(model=m, response_model=Weather, input=WEATHER,
                                       max_output_tokens=120, temperature=0,
                                       max_retries=0)  # fmt: skip

    return {"structured output (tools)": tools, "structured output (responses)": responses_tools}


def ollama_client(url: str, model: str) -> dict[str, Check]:
    """The ``ollama`` library and LangChain's ``ChatOllama``, pointed at the router as at an
    Ollama server (its host URL, no path)."""
    import ollama
    from langchain_ollama import ChatOllama, OllamaEmbeddings

    client = ollama.Client(host=url)
    options = {"num_predict": 60, "temperature": 0}
    question = [{"role": "user", "content": FRANCE}]

    def structured(u: str, m: str) -> Weather:
        # Bounded strings and room to finish: the small base model pads the JSON with
        # whitespace (the grammar allows it), so 60 tokens could cut it short.
        schema = Weather.model_json_schema()
        for field in schema["properties"].values():
            field["maxLength"] = 40
        answer = client.chat(model=m, messages=[{"role": "user", "content": WEATHER}],
                             format=schema, options={**options, "num_predict": 200})  # fmt: skip
        return Weather.model_validate_json(answer.message.content or "")

    return {
        "chat": lambda u, m: client.chat(model=m, messages=question, options=options)
        .message.content,
        "stream": lambda u, m: "".join(
            part.message.content or ""
            for part in client.chat(model=m, messages=question, options=options, stream=True)),
        "generate": lambda u, m: client.generate(model=m, prompt=FRANCE, options=options).response,
        "structured output": structured,
        "embeddings": lambda u, m: len(client.embed(model=m, input="hello").embeddings[0]),
        "models listed": lambda u, m: [row.model for row in client.list().models],
        "model shown": lambda u, m: client.show(m).capabilities,
        "models running": lambda u, m: [row.model for row in client.ps().models],
        "pull": lambda u, m: [part.status for part in client.pull(m, stream=True)],
        "chat (langchain)": lambda u, m: ChatOllama(
            base_url=u, model=m, num_predict=60, temperature=0).invoke(FRANCE).content,
        "embeddings (langchain)": lambda u, m: len(
            OllamaEmbeddings(base_url=u, model=m).embed_query("hello")),
    }  # fmt: skip


def ollama_tools(url: str, model: str) -> dict[str, Check]:
    """Tool calls and thinking through the ``ollama`` library (against a model that makes
    calls: ``tests.harmony``'s), whole and streamed, as its own types carry them."""
    import ollama

    client = ollama.Client(host=url)
    weather = [{"role": "user", "content": WEATHER}]

    def called(message: Any) -> dict[str, Any]:
        [call] = message.tool_calls or []
        return {"name": call.function.name, "arguments": dict(call.function.arguments),
                "thinking": message.thinking}  # fmt: skip

    def streamed(u: str, m: str) -> dict[str, Any]:
        thinking, calls = "", list[Any]()
        for part in client.chat(model=m, messages=weather, tools=[get_weather], think=True,
                                stream=True, options={"num_predict": 40}):  # fmt: skip
            thinking += part.message.thinking or ""
            calls += part.message.tool_calls or []
        [call] = calls
        return {"name": call.function.name, "arguments": dict(call.function.arguments),
                "thinking": thinking}  # fmt: skip

    return {
        "tool call": lambda u, m: called(client.chat(
            model=m, messages=weather, tools=[get_weather], think=True,
            options={"num_predict": 40}).message),
        "tool call (stream)": streamed,
    }  # fmt: skip


FRAMEWORKS: dict[str, Callable[[str, str], dict[str, Check]]] = {
    "ollama": ollama_client,
    "ollama-tools": ollama_tools,  # (in the ollama environment; run by test_harmony)
    "openai-agents": openai_agents,
    "langchain": langchain,
    "llama-index": llama_index,
    "litellm": litellm_client,
    "instructor": instructor_client,
}


def main() -> None:
    framework, url, model = sys.argv[1:4]
    for name, check in FRAMEWORKS[framework](url, model).items():
        try:
            got = check(url, model)
        except Exception:  # reported, with the framework's own words
            print(json.dumps({"check": name, "ok": False,
                              "got": traceback.format_exc()[-2000:]}), flush=True)  # fmt: skip
            continue
        shown = got.model_dump() if isinstance(got, BaseModel) else got
        print(json.dumps({"check": name, "ok": True, "got": shown,
                          "type": type(got).__name__}, default=repr), flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
