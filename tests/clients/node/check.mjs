// The Vercel AI SDK (`ai` with `@ai-sdk/openai-compatible`), unmodified, against a real router.
//
//     node tests/clients/node/check.mjs ROUTER_URL MODEL
//
// One JSON line per check, {"check", "ok", "got"}, read by
// tests/integration/test_client_frameworks.py; a check that throws is reported, not hidden.
import { embed, generateText, Output, streamText, tool } from "ai";
import { createOpenAICompatible } from "@ai-sdk/openai-compatible";
import { z } from "zod";

const [url, modelId] = process.argv.slice(2);
const provider = createOpenAICompatible({
  name: "llmlb", baseURL: `${url}/v1`, apiKey: "unused", supportsStructuredOutputs: true,
});
const model = provider.chatModel(modelId);
const FRANCE = "What is the capital of France?";
const WEATHER = "What is the weather in Paris?";
const weatherTool = tool({
  description: "The weather in a city",
  inputSchema: z.object({ city: z.string() }),
  execute: async ({ city }) => `sunny in ${city}`,
});

const checks = {
  chat: async () => (await generateText({ model, prompt: FRANCE, maxOutputTokens: 12, maxRetries: 0, temperature: 0 })).text,
  stream: async () => {
    const result = streamText({ model, prompt: FRANCE, maxOutputTokens: 12, maxRetries: 0, temperature: 0 });
    let text = "";
    for await (const piece of result.textStream) text += piece;
    return text;
  },
  "forced tool call": async () => {
    const result = await generateText({
      model, prompt: WEATHER, tools: { get_weather: weatherTool }, toolChoice: "required",
      maxOutputTokens: 60, maxRetries: 0, temperature: 0,
    });
    return result.toolCalls.map((call) => ({ name: call.toolName, input: call.input }));
  },
  "structured output": async () => {
    const result = await generateText({
      model, prompt: WEATHER, maxOutputTokens: 80, maxRetries: 0, temperature: 0,
      output: Output.object({ schema: z.object({ city: z.string(), forecast: z.string() }) }),
    });
    return result.output;
  },
  embeddings: async () => (await embed({ model: provider.embeddingModel(modelId), value: "hello", maxRetries: 0 })).embedding.length,
};

for (const [name, check] of Object.entries(checks)) {
  try {
    const got = await check();
    console.log(JSON.stringify({ check: name, ok: true, got }));
  } catch (error) {
    console.log(JSON.stringify({ check: name, ok: false, got: String(error?.stack ?? error).slice(0, 2000) }));
  }
}
