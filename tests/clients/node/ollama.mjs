// The `ollama` library for JavaScript (ollama-js), unmodified, against a real router as its
// Ollama server.
//
//     node tests/clients/node/ollama.mjs ROUTER_URL MODEL
//
// One JSON line per check, {"check", "ok", "got"}, read by
// tests/integration/test_client_frameworks.py; a check that throws is reported, not hidden.
import { Ollama } from "ollama";

const [url, model] = process.argv.slice(2);
const ollama = new Ollama({ host: url });
const FRANCE = "What is the capital of France?";
const WEATHER = "What is the weather in Paris?";
const options = { num_predict: 60, temperature: 0 };
const question = [{ role: "user", content: FRANCE }];

const checks = {
  chat: async () => (await ollama.chat({ model, messages: question, options })).message.content,
  stream: async () => {
    let text = "";
    for await (const part of await ollama.chat({ model, messages: question, options, stream: true })) {
      text += part.message.content;
    }
    return text;
  },
  generate: async () => (await ollama.generate({ model, prompt: FRANCE, options })).response,
  "structured output": async () => {
    const format = {
      type: "object",
      // Bounded strings: the small base model would otherwise fill one until num_predict.
      properties: { city: { type: "string", maxLength: 40 }, forecast: { type: "string", maxLength: 40 } },
      required: ["city", "forecast"],
    };
    // Room to finish: the small base model pads the JSON with whitespace the grammar allows.
    const answer = await ollama.chat({
      model, messages: [{ role: "user", content: WEATHER }], format, options: { ...options, num_predict: 200 },
    });
    return JSON.parse(answer.message.content);
  },
  embeddings: async () => (await ollama.embed({ model, input: "hello" })).embeddings[0].length,
  "models listed": async () => (await ollama.list()).models.map((row) => row.model),
  "model shown": async () => (await ollama.show({ model })).capabilities,
  "models running": async () => (await ollama.ps()).models.map((row) => row.model),
  pull: async () => {
    const statuses = [];
    for await (const part of await ollama.pull({ model, stream: true })) statuses.push(part.status);
    return statuses;
  },
};

for (const [name, check] of Object.entries(checks)) {
  try {
    const got = await check();
    console.log(JSON.stringify({ check: name, ok: true, got }));
  } catch (error) {
    console.log(JSON.stringify({ check: name, ok: false, got: String(error?.stack ?? error).slice(0, 2000) }));
  }
}
