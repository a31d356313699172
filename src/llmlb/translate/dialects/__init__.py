"""Client dialects served on top of chat: OpenAI's Responses API, Anthropic's Messages API."""
