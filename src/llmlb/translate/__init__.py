"""Translation between API dialects: OpenAI chat, the Responses API, Anthropic's Messages API
and Gemini's generateContent.

Pure functions and small state machines over dicts, with no I/O: the router does the sending
(``router.cloud.clouds``). OpenAI's chat format is the hub every translation goes through: a
provider module turns chat requests into its own and its answers (whole or streamed) back
into chat; a dialect module turns its requests into chat and chat answers back. Adding a
provider is one module in ``providers``.
"""
